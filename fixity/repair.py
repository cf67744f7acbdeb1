"""Repair: make a damaged or missing copy whole again from a copy proven good now.

A repair never trusts the catalog's word that a source is good: the source is
audited afresh (deep where it can be read), the bytes are streamed to the damaged
copy's tier and promoted only if their BLAKE3 is the blob's ``stored_b3`` (the
tier checks it while writing), and the result is audited again. Each step writes
a PREMIS event (``fixity check`` of the source, ``replication`` of the bytes,
``fixity check`` of the result, then ``repair``). A source that fails its fresh
audit is itself marked damaged, so bad data is never copied.

A pack is rebuilt byte for byte: packs are deterministic, so good copies of its
members (from other tiers, or the members of the damaged pack that still prove
good) laid out in the same order make the same bytes, proven by the pack's id.
When some member has no good copy anywhere, the members that do are salvaged as
loose copies on the tier, and the rest are *lost*.

When no good copy of a blob exists, the copy stays damaged or missing, a ``repair``
event with outcome failure and ``lost: true`` records it, and ``permafrost status``
names the blob and every version holding it. A copy whose only sources are
unreachable or need a restore is retried later: that is not loss.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import sqlalchemy as sa
from sqlmodel import col

from archive.catalog import models
from archive.catalog.models import EventOutcome, EventType, ReplicaState, utcnow
from archive.node import ArchiveNode
from archive.packs import pack_key
from archive.retrieval import Location, locate, read_stored
from fixity.checks import AGENT as AUDIT_AGENT
from fixity.checks import CheckResult, Finding, Level, Member, Target, check, member_problem
from fixity.errors import NoGoodSource
from fixity.manifest_copies import repair_manifest_copies
from fixity.manifests import repair_manifests
from fixity.rebuild import repair_pack
from fixity.report import RepairOutcome
from fixity.schedule import RepairClaim
from tiers import ColdTier, Tier, TierError

AGENT = "permafrost/repair"
LOST_RETRY = dt.timedelta(days=1)
"""How soon a copy with no good source is tried again (a copy may come back)."""


def retry_delay(node: ArchiveNode, failures: int) -> float:
    """The configured exponential backoff (without the worker's jitter)."""
    s = node.settings
    return float(min(s.retry_max_seconds, s.retry_base_seconds * 2 ** min(failures, 20)))


class Repairer:
    def __init__(
        self,
        node: ArchiveNode,
        *,
        owner: str,
        usable: Callable[[str], bool] | None = None,
        back_off: Callable[[str, int], float] | None = None,
    ) -> None:
        self.node = node
        self.owner = owner
        self.usable = usable or (lambda _tier: True)
        self.back_off = back_off or (lambda _tier, failures: retry_delay(node, failures))
        self.lease = dt.timedelta(seconds=node.settings.lease_seconds)

    # -- claiming ----------------------------------------------------------------------
    def _claim(self, limit: int) -> list[RepairClaim]:
        R = models.Replica
        now = utcnow()
        with self.node.session() as session:
            names = {tid: n for n, tid in self.node.tier_ids(session=session).items()}
            usable = [tid for tid, n in names.items() if n in self.node.tiers and self.usable(n)]
            if not usable:
                return []
            free = sa.or_(col(R.lease_expires_at).is_(None), col(R.lease_expires_at) <= now)
            stmt = (
                sa.select(
                    col(R.id),
                    col(R.tier_id),
                    col(R.blob_b3),
                    col(R.pack_id),
                    col(R.key),
                    col(R.state),
                    col(R.failures),
                )
                .where(
                    col(R.state).in_(
                        [ReplicaState.DAMAGED, ReplicaState.MISSING, ReplicaState.REPAIRING]
                    ),
                    col(R.tier_id).in_(usable),
                    free,
                )
                .order_by(col(R.id))
                .limit(limit)
            )
            if session.get_bind().dialect.name == "postgresql":
                stmt = stmt.with_for_update(skip_locked=True, of=R)
            claims = [RepairClaim(*row) for row in session.execute(stmt).all()]
            if claims:
                session.execute(
                    sa.update(R)
                    .where(col(R.id).in_([c.replica_id for c in claims]))
                    .values(
                        state=ReplicaState.REPAIRING,
                        lease_owner=self.owner,
                        lease_expires_at=now + self.lease,
                        updated_at=now,
                    )
                )
        return claims

    def repair_pass(self, limit: int | None = None) -> list[RepairOutcome]:
        outcomes: list[RepairOutcome] = []
        claims = self._claim(limit or self.node.settings.audit_batch)
        with self.node.session() as session:
            names = {tid: n for n, tid in self.node.tier_ids(session=session).items()}
        for claim in claims:
            tier = names[claim.tier_id]
            # A copy left "repairing" by a dead worker returns to what the audit found.
            state = claim.state if claim.state != ReplicaState.REPAIRING else ReplicaState.DAMAGED
            if claim.blob_b3 is not None:
                outcome = self._repair_loose(tier, claim, state)
            else:
                outcome = repair_pack(self, tier, claim, state)
            outcomes.append(outcome)
        outcomes += repair_manifests(self, limit or self.node.settings.audit_batch)
        outcomes += repair_manifest_copies(self, limit or self.node.settings.audit_batch)
        return outcomes

    # -- loose blobs -------------------------------------------------------------------
    def _repair_loose(self, tier_name: str, claim: RepairClaim, state: str) -> RepairOutcome:
        assert claim.blob_b3 is not None
        target_tier = self.node.tiers[tier_name]
        with self.node.session() as session:
            blob = session.get(models.Blob, claim.blob_b3)
            assert blob is not None
            sources = [loc for loc in locate(blob.b3, session=session) if loc.tier != tier_name]
        target = Target("blob", blob.b3, claim.key, blob.stored_size, blob.stored_b3, blob=blob)
        try:
            source = self.good_source(blob, sources)
        except NoGoodSource as exc:
            return self.unrepaired(tier_name, claim, state, "blob", blob.b3, exc)
        try:
            src_tier = self.node.tiers[source.tier]
            with target_tier.begin_put() as upload:
                for chunk in read_stored(src_tier, source):
                    upload.write(chunk)
                # A partner tier names the copy by its own digest: record where it went.
                promoted = upload.promote(claim.key, expect_b3=blob.stored_b3, replace=True)
                target = replace(target, key=promoted.key)
        except (TierError, OSError) as exc:
            return self.unrepaired(
                tier_name, claim, state, "blob", blob.b3, NoGoodSource(True, f"copy failed: {exc}")
            )
        self.event(
            EventType.REPLICATION,
            "blob",
            blob.b3,
            tier_name,
            True,
            {"from": source.tier, "key": target.key, "purpose": "repair"},
        )
        result = self.verify_result(target_tier, target)
        return self.finish(tier_name, claim, state, target, result, source.tier)

    def good_source(self, blob: models.Blob, sources: list[Location]) -> Location:
        """The first source that passes a fresh audit now.

        Raises:
            NoGoodSource: none did; ``waiting`` when some could not be read now
                (unreachable, or cold and being restored), so the blob is not lost.
        """
        waiting: list[str] = []
        for loc in sources:
            tier = self.node.tiers.get(loc.tier)
            if tier is None or not self.usable(loc.tier):
                waiting.append(f"{loc.tier}: not usable now")
                continue
            if loc.pack_id is None:
                target = Target(
                    "blob", blob.b3, loc.key, blob.stored_size, blob.stored_b3, blob=blob
                )
                result = check(tier, target, Level.DEEP)
                if result.is_damage:
                    result = check(tier, target, Level.DEEP)  # a fresh read before blaming it
                self._source_checked(blob.b3, loc, result)
                if result.ok:
                    return loc
                if result.finding == Finding.NEEDS_RESTORE and self._ask_restore(tier, loc.key):
                    result = check(tier, target, Level.DEEP)  # restored at once (local cold)
                    self._source_checked(blob.b3, loc, result)
                    if result.ok:
                        return loc
                if result.is_damage:
                    self._mark_source(loc, result)
                else:
                    waiting.append(f"{loc.tier}: {result.finding}")
            else:
                try:
                    stored = b"".join(read_stored(tier, loc))
                except TierError as exc:
                    if not self._ask_restore(tier, pack_key(loc.pack_id)):
                        waiting.append(f"{loc.tier}: {exc}")
                        continue
                    try:
                        stored = b"".join(read_stored(tier, loc))
                    except TierError as again:
                        waiting.append(f"{loc.tier}: {again}")
                        continue
                member = Member(blob, loc.offset, loc.length or 0)
                problem = member_problem(stored, member, deep=True)
                self.event(
                    EventType.FIXITY_CHECK,
                    "blob",
                    blob.b3,
                    loc.tier,
                    problem is None,
                    {
                        "key": loc.key,
                        "pack": loc.pack_id,
                        "level": "deep",
                        "purpose": "repair source",
                        **({"error": problem} if problem else {}),
                    },
                )
                if problem is None:
                    return loc
                self._mark_source(loc, CheckResult(Finding.DAMAGED, Level.DEEP, detail=problem))
        if waiting:
            raise NoGoodSource(True, "; ".join(waiting))
        raise NoGoodSource(False, "no other copy passes an audit")

    def _source_checked(self, b3: str, loc: Location, result: CheckResult) -> None:
        """The event of one deep check of a would-be repair source."""
        self.event(
            EventType.FIXITY_CHECK,
            "blob",
            b3,
            loc.tier,
            result.ok,
            {
                "key": loc.key,
                "level": "deep",
                "purpose": "repair source",
                **({"error": result.detail} if result.detail else {}),
            },
        )

    def _ask_restore(self, tier: Tier, key: str) -> bool:
        """Ask a cold tier to restore ``key``; whether it is readable right away."""
        if not isinstance(tier, ColdTier):
            return False
        try:
            return tier.restore(key, days=tier.restore_days).readable
        except TierError:
            return False

    def _mark_source(self, loc: Location, result: CheckResult) -> None:
        """A would-be source failed its fresh audit: it is damaged too (and repaired in
        its turn), never copied from."""
        R = models.Replica
        with self.node.session() as session:
            tier_id = self.node.tier_ids(session=session)[loc.tier]
            which = col(R.pack_id) == loc.pack_id if loc.pack_id else col(R.key) == loc.key
            session.execute(
                sa.update(R)
                .where(which, col(R.tier_id) == tier_id, col(R.state) == ReplicaState.PRESENT)
                .values(
                    state=ReplicaState.MISSING
                    if result.finding == Finding.MISSING
                    else ReplicaState.DAMAGED,
                    next_audit_at=None,
                    updated_at=utcnow(),
                )
            )

    def verify_result(self, tier: Tier, target: Target) -> CheckResult:
        level = Level.LIGHT if tier.capabilities.needs_restore else Level.DEEP
        result = check(tier, target, level)
        self.event(
            EventType.FIXITY_CHECK,
            target.kind,
            target.object_id,
            tier.name,
            result.ok,
            {
                "key": target.key,
                "level": level,
                "purpose": "repair result",
                **({"error": result.detail} if result.detail else {}),
            },
        )
        return result

    def finish(
        self,
        tier: str,
        claim: RepairClaim,
        state: str,
        target: Target,
        result: CheckResult,
        source: str,
    ) -> RepairOutcome:
        now = utcnow()
        R = models.Replica
        mine = sa.and_(col(R.id) == claim.replica_id, col(R.lease_owner) == self.owner)
        if not result.ok:
            return self.unrepaired(
                tier,
                claim,
                state,
                target.kind,
                target.object_id,
                NoGoodSource(True, f"the repaired copy failed its audit: {result.detail}"),
            )
        with self.node.session() as session:
            session.execute(
                sa.update(R)
                .where(mine)
                .values(
                    state=ReplicaState.PRESENT,
                    last_verified_at=now,
                    last_read_at=now if result.level != Level.LIGHT else None,
                    last_audit_level=result.level,
                    provider_checksum=result.provider_checksum,
                    next_audit_at=None,  # scheduled afresh by the next audit pass
                    failures=0,
                    key=target.key,
                    lease_owner=None,
                    lease_expires_at=None,
                    updated_at=now,
                )
            )
            session.add(
                self.event_row(
                    EventType.REPAIR,
                    target.kind,
                    target.object_id,
                    tier,
                    True,
                    {"key": target.key, "from": source, "was": state, "verified": result.level},
                )
            )
        return RepairOutcome(tier, target.kind, target.object_id, "repaired", f"from {source}")

    def unrepaired(
        self,
        tier: str,
        claim: RepairClaim,
        state: str,
        object_type: str,
        object_id: str,
        why: NoGoodSource,
        lost_blobs: list[str] | None = None,
    ) -> RepairOutcome:
        now = utcnow()
        R = models.Replica
        retry = (
            dt.timedelta(seconds=self.back_off(tier, claim.failures + 1))
            if why.waiting
            else LOST_RETRY
        )
        lost = lost_blobs if lost_blobs is not None else ([] if why.waiting else [object_id])
        with self.node.session() as session:
            session.execute(
                sa.update(R)
                .where(col(R.id) == claim.replica_id, col(R.lease_owner) == self.owner)
                .values(
                    state=state,
                    failures=col(R.failures) + 1,
                    lease_owner=None,
                    lease_expires_at=now + retry,
                    updated_at=now,
                )
            )
            detail: dict[str, Any] = {"key": claim.key, "reason": str(why), "state": state}
            if lost:
                detail |= {"lost": True, "lost_blobs": lost}
            session.add(
                self.event_row(
                    EventType.REPAIR,
                    object_type,
                    object_id,
                    tier,
                    False,
                    detail,
                    outcome=EventOutcome.WARNING if why.waiting and not lost else None,
                )
            )
            for b3 in lost:
                if b3 == object_id and object_type == "blob":
                    continue
                session.add(
                    self.event_row(
                        EventType.REPAIR,
                        "blob",
                        b3,
                        tier,
                        False,
                        {"lost": True, "reason": str(why), "pack": object_id},
                    )
                )
        result = "waiting" if why.waiting and not lost else "lost"
        return RepairOutcome(tier, object_type, object_id, result, str(why), lost)

    # -- events ------------------------------------------------------------------------
    def event_row(
        self,
        event_type: EventType,
        object_type: str,
        object_id: str,
        tier: str,
        ok: bool,
        detail: dict[str, Any],
        *,
        outcome: EventOutcome | None = None,
    ) -> models.Event:
        return models.Event(
            type=event_type,
            object_type=object_type,
            object_id=object_id,
            tier=tier,
            outcome=outcome or (EventOutcome.SUCCESS if ok else EventOutcome.FAILURE),
            detail=detail,
            agent=AGENT if event_type != EventType.FIXITY_CHECK else AUDIT_AGENT,
            created_at=utcnow(),
        )

    def event(
        self,
        event_type: EventType,
        object_type: str,
        object_id: str,
        tier: str,
        ok: bool,
        detail: dict[str, Any],
    ) -> None:
        with self.node.session() as session:
            session.add(self.event_row(event_type, object_type, object_id, tier, ok, detail))
