"""Rebuilding a damaged pack byte for byte from good copies of its members.

Packs are deterministic (``archive.packs.tar_member``): the same members in the
same order make the same bytes, so the rebuilt pack is proven by its name (its
BLAKE3) before the damaged object is replaced. Each member's stored bytes come from
the damaged pack itself where they still prove good (one ranged read each), else
from another copy that passes a fresh audit. When some member has no good copy
anywhere, the pack cannot be rebuilt: the members that are good are salvaged as
loose copies on the tier, and the others are reported lost.

The rebuilt pack replaces the damaged object in one step (``promote(replace=True)``):
a crash at any point leaves either the damaged pack, whose good members the next
repair reads again, or the rebuilt one, never an empty key. (Deleting first would
lose the members whose only good copy was the damaged pack itself.)
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

from archive.catalog import models
from archive.catalog.bulk import insert_ignore
from archive.catalog.models import EventType, ReplicaState, utcnow
from archive.packs import TAR_END, blob_key, tar_member
from archive.retrieval import locate, read_stored
from fixity.audit import pack_target
from fixity.checks import Member, member_problem
from fixity.errors import NoGoodSource
from fixity.report import RepairOutcome
from fixity.schedule import RepairClaim
from tiers import ObjectExists, Tier, TierError

if TYPE_CHECKING:
    from fixity.repair import Repairer


def repair_pack(
    repairer: Repairer, tier_name: str, claim: RepairClaim, state: str
) -> RepairOutcome:
    assert claim.pack_id is not None
    tier = repairer.node.tiers[tier_name]
    with repairer.node.session() as session:
        target = pack_target(claim.pack_id, claim.key, None, session=session)
        assert target is not None
        others = {
            m.blob.b3: [
                loc
                for loc in locate(m.blob.b3, session=session)
                if not (loc.tier == tier_name and loc.pack_id == claim.pack_id)
            ]
            for m in target.members
        }
    members = sorted(target.members, key=lambda m: m.offset)
    good: dict[str, bytes] = {}
    waiting: list[str] = []
    for m in members:
        own = _member_from(repairer, tier, claim.key, m)
        if own is not None:
            good[m.blob.b3] = own
            continue
        try:
            loc = repairer.good_source(m.blob, others[m.blob.b3])
        except NoGoodSource as exc:
            if exc.waiting:
                waiting.append(f"{m.blob.b3}: {exc}")
            continue
        good[m.blob.b3] = b"".join(read_stored(repairer.node.tiers[loc.tier], loc))
    if waiting:
        return repairer.unrepaired(
            tier_name,
            claim,
            state,
            "pack",
            claim.pack_id,
            NoGoodSource(True, "; ".join(waiting[:5])),
        )
    lost = [m.blob.b3 for m in members if m.blob.b3 not in good]
    if lost:
        salvaged = _salvage(repairer, tier_name, members, good)
        why = NoGoodSource(
            False,
            f"{len(lost)} member(s) have no good copy; {salvaged} salvaged as loose copies",
        )
        return repairer.unrepaired(tier_name, claim, state, "pack", claim.pack_id, why, lost)
    try:
        with tier.begin_put() as upload:
            for m in members:
                upload.write(tar_member(m.blob.b3, good[m.blob.b3]))
            upload.write(TAR_END)
            if upload.b3 != claim.pack_id:
                raise TierError(f"rebuilt pack hashes to {upload.b3}", tier=tier_name)
            upload.promote(claim.key, expect_b3=claim.pack_id, replace=True)
    except (TierError, OSError) as exc:
        return repairer.unrepaired(
            tier_name,
            claim,
            state,
            "pack",
            claim.pack_id,
            NoGoodSource(True, f"rebuild failed: {exc}"),
        )
    repairer.event(
        EventType.REPLICATION,
        "pack",
        claim.pack_id,
        tier_name,
        True,
        {"key": claim.key, "purpose": "repair", "rebuilt_from_members": len(members)},
    )
    result = repairer.verify_result(tier, target)
    return repairer.finish(tier_name, claim, state, target, result, "member copies")


def _member_from(repairer: Repairer, tier: Tier, key: str, member: Member) -> bytes | None:
    """A member's stored bytes from the damaged pack itself, if they still prove good."""
    try:
        with tier.open(key, offset=member.offset, length=member.length) as stream:
            stored = stream.read()
    except TierError:
        return None
    return stored if member_problem(stored, member, deep=True) is None else None


def _salvage(
    repairer: Repairer, tier_name: str, members: list[Member], good: dict[str, bytes]
) -> int:
    """Write the good members of an unrebuildable pack as loose copies on its tier."""
    tier = repairer.node.tiers[tier_name]
    rows: list[dict[str, Any]] = []
    now = utcnow()
    for m in members:
        if m.blob.b3 not in good:
            continue
        key = blob_key(m.blob.b3)
        try:
            tier.put(key, io.BytesIO(good[m.blob.b3]), expect_b3=m.blob.stored_b3)
        except ObjectExists:
            pass
        except TierError:
            continue
        rows.append(
            {
                "blob_b3": m.blob.b3,
                "pack_id": None,
                "key": key,
                "state": ReplicaState.PRESENT,
                "last_verified_at": now,
                "last_read_at": now,
                "failures": 0,
                "audit_count": 0,
                "created_at": now,
                "updated_at": now,
            }
        )
    with repairer.node.session() as session:
        tier_id = repairer.node.tier_ids(session=session)[tier_name]
        insert_ignore(session, models.Replica, [{**r, "tier_id": tier_id} for r in rows])
    return len(rows)
