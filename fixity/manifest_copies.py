"""Version manifests on tiers other than the hot one (cold tiers, partner buckets,
partner nodes): audited, and repaired by sending them again (issues 4 and 5; DESIGN
sections 3 and 7).

The ``manifests`` worker loop (:mod:`archive.manifest_replication`) sends each
version's manifest to the tiers its collection targets and records the copy as a
:class:`~archive.catalog.models.ManifestCopy` row, so the copy is queued, audited,
marked and repaired like any other. The hot tier's own copy keeps its state on the
version row (:mod:`fixity.manifests`).

How a copy is audited follows the manifest audit on the hot tier: its bytes are read
and their BLAKE3 must be the one recorded at ingest (a sealed copy is opened first,
its GCM tag checked, and the plaintext hashed). Not a proof of possession, as for
blobs: a manifest is kilobytes to a few MiB, so reading it back costs about what a
proof request does, and it needs no copy at home to compute the expected answer.
The same on every tier kind, except tiers that need a restore before a read (cold):
there a copy gets the light audit, an existence check, as cold blobs get between
their budgeted samples.

A failed read is repeated once before it counts; a tier that does not answer is
unreachable, which changes no state. A damaged or missing copy is repaired by
sending the manifest again, from the hot tier if that copy proves good, else
re-rendered from the catalog (canonical JSON: the same bytes, or nothing is sent);
the partner replaces what it holds when its own copy is bad (``federation.api``).
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import blake3
import sqlalchemy as sa
from sqlmodel import Session, col

from archive.catalog import models
from archive.catalog.models import EventType, ReplicaState, utcnow
from archive.node import ArchiveNode
from archive.reachability import mark_reachable, mark_unreachable
from fixity.checks import CheckResult, Finding, Level, Target, check
from fixity.manifests import manifest_check_event, manifest_pieces, version_object_id
from fixity.ratelimit import UNLIMITED, ByteRate
from fixity.readback import read_back_twice
from fixity.report import AuditReport, RepairOutcome
from fixity.schedule import next_after_audit, spread
from tiers import Tier, TierError

if TYPE_CHECKING:
    from fixity.audit import AuditOptions, Auditor
    from fixity.repair import Repairer

AGENT = "permafrost/fixity"


@dataclass(frozen=True)
class CopyClaim:
    copy_id: int
    version_id: int
    key: str
    manifest_b3: str
    failures: int
    lease_until: dt.datetime


def _copy_tiers(node: ArchiveNode, wanted: Iterable[str], *, session: Session) -> dict[str, int]:
    """Tiers (name -> id) other than the hot one that hold manifest copies."""
    ids = node.tier_ids(session=session)
    return {
        name: ids[name]
        for name in wanted
        if name in ids and name in node.tiers and name != node.settings.hot_tier
    }


def schedule_copies(
    node: ArchiveNode,
    tier: str,
    tier_id: int,
    *,
    session: Session,
    now: dt.datetime,
    rng: random.Random,
) -> int:
    """Give unscheduled present copies on ``tier`` an audit time spread over its interval."""
    M = models.ManifestCopy
    ids = list(
        session.execute(
            sa.select(col(M.id)).where(
                col(M.tier_id) == tier_id,
                col(M.state) == ReplicaState.PRESENT,
                col(M.next_audit_at).is_(None),
            )
        ).scalars()
    )
    if ids:
        interval = dt.timedelta(seconds=node.settings.audit_policy(tier).interval_seconds)
        times = spread(now, interval, len(ids), rng)
        session.execute(
            sa.update(M), [{"id": i, "next_audit_at": t} for i, t in zip(ids, times, strict=True)]
        )
    return len(ids)


def _lock(session: Session, stmt: Any) -> Any:
    if session.get_bind().dialect.name == "postgresql":
        return stmt.with_for_update(skip_locked=True, of=models.ManifestCopy)
    return stmt


def claim_copies(
    *,
    session: Session,
    tier_id: int,
    limit: int,
    now: dt.datetime,
    lease: dt.timedelta,
    due: bool = True,
) -> list[CopyClaim]:
    """Lease present copies on the tier whose audit is due (``due=False``: any), as
    :func:`fixity.schedule.claim_manifests` does; the lease time is the claim token."""
    M, V = models.ManifestCopy, models.Version
    stmt = (
        sa.select(col(M.id), col(M.version_id), col(M.key), col(V.manifest_b3), col(M.failures))
        .join(V, col(V.id) == col(M.version_id))
        .where(col(M.tier_id) == tier_id, col(M.state) == ReplicaState.PRESENT)
    )
    if due:
        stmt = stmt.where(col(M.next_audit_at) <= now)
    stmt = stmt.order_by(col(M.next_audit_at).asc().nulls_first(), col(M.id)).limit(limit)
    until = now + lease
    claims = [
        CopyClaim(r[0], r[1], r[2], r[3], r[4], until)
        for r in session.execute(_lock(session, stmt)).all()
    ]
    if claims:
        session.execute(
            sa.update(M)
            .where(col(M.id).in_([c.copy_id for c in claims]))
            .values(next_audit_at=until, updated_at=now)
        )
    return claims


# -- audit ------------------------------------------------------------------------------
def audit_manifest_copies(
    auditor: Auditor, opts: AuditOptions, report: AuditReport, wanted: Iterable[str]
) -> None:
    node = auditor.node
    now = utcnow()
    with node.session() as session:
        tiers = _copy_tiers(node, wanted, session=session)
        for name, tier_id in tiers.items():
            schedule_copies(node, name, tier_id, session=session, now=now, rng=auditor.rng)
    for name, tier_id in tiers.items():
        if not auditor.usable(name):
            continue
        with node.session() as session:
            claims = claim_copies(
                session=session,
                tier_id=tier_id,
                limit=node.settings.audit_batch,
                now=utcnow(),
                lease=auditor.lease,
                due=opts.due_only,
            )
        for claim in claims:
            with node.session() as session:
                object_id = _object_id(claim.version_id, session=session)
            target = Target("manifest", object_id, claim.key, None, claim.manifest_b3)
            result = _prove(node.tiers[name], target, auditor.rate(name))
            _record(auditor, name, claim, target, result, report)


def _prove(tier: Tier, target: Target, rate: ByteRate = UNLIMITED) -> CheckResult:
    """Read the copy back; on a tier that needs a restore before a read, the light check
    (the object exists) instead: a restore per manifest would spend the restore budget
    that samples blobs, and the hot copy and the partners' are read back."""
    if tier.capabilities.needs_restore:
        first = check(tier, target, Level.LIGHT)
        return check(tier, target, Level.LIGHT) if first.is_damage else first
    return read_back_twice(tier, target, rate)


def _object_id(version_id: int, *, session: Session) -> str:
    version = session.get(models.Version, version_id)
    assert version is not None
    return version_object_id(version, session=session)


def _record(
    auditor: Auditor,
    tier: str,
    claim: CopyClaim,
    target: Target,
    result: CheckResult,
    report: AuditReport,
) -> None:
    now = utcnow()
    M = models.ManifestCopy
    mine = sa.and_(col(M.id) == claim.copy_id, col(M.next_audit_at) == claim.lease_until)
    if result.finding in (Finding.UNREACHABLE, Finding.NEEDS_RESTORE):
        report.unreachable_copy(tier, result.detail, sampled=False)
        delay = auditor.back_off(tier, claim.failures + 1)
        with auditor.node.session() as session:
            if result.finding == Finding.UNREACHABLE:
                mark_unreachable(tier, now, session=session)
            session.execute(
                sa.update(M)
                .where(mine)
                .values(
                    next_audit_at=now + dt.timedelta(seconds=delay),
                    failures=col(M.failures) + 1,
                    updated_at=now,
                )
            )
        return
    interval = dt.timedelta(seconds=auditor.policy(tier).interval_seconds)
    with auditor.node.session() as session:
        values: dict[str, Any]
        if result.ok:
            values = {
                "last_verified_at": now,
                "next_audit_at": next_after_audit(now, interval, auditor.rng),
                "failures": 0,
            }
        else:
            missing = result.finding == Finding.MISSING
            values = {
                "state": ReplicaState.MISSING if missing else ReplicaState.DAMAGED,
                "next_audit_at": None,
            }
        changed = session.execute(sa.update(M).where(mine).values(updated_at=now, **values))
        if changed.rowcount == 0:  # type: ignore[attr-defined]
            return  # the lease ran out and another worker took the copy over
        mark_reachable(tier, session=session)
        session.add(manifest_check_event(target.object_id, tier, target, result, now))
    report.copy_checked(tier, target, result)


# -- repair -----------------------------------------------------------------------------
def repair_manifest_copies(repairer: Repairer, limit: int) -> list[RepairOutcome]:
    """Send damaged or missing manifest copies again; one outcome per copy tried."""
    M = models.ManifestCopy
    now = utcnow()
    node = repairer.node
    with node.session() as session:
        tiers = _copy_tiers(node, node.settings.tiers, session=session)
        usable = {tid: name for name, tid in tiers.items() if repairer.usable(name)}
        if not usable:
            return []
        stmt = (
            sa.select(col(M.id), col(M.tier_id), col(M.version_id), col(M.key), col(M.state))
            .where(
                col(M.tier_id).in_(list(usable)),
                sa.or_(
                    col(M.state).in_([ReplicaState.DAMAGED, ReplicaState.MISSING]),
                    sa.and_(col(M.state) == ReplicaState.REPAIRING, col(M.next_audit_at) <= now),
                ),
            )
            .order_by(col(M.id))
            .limit(limit)
        )
        rows = session.execute(_lock(session, stmt)).all()
        until = now + repairer.lease
        if rows:
            session.execute(
                sa.update(M)
                .where(col(M.id).in_([r[0] for r in rows]))
                .values(state=ReplicaState.REPAIRING, next_audit_at=until, updated_at=now)
            )
    return [
        _repair_copy(repairer, usable[tier_id], copy_id, version_id, key, state, until)
        for copy_id, tier_id, version_id, key, state in rows
    ]


def _good_manifest(
    repairer: Repairer, version: models.Version, *, session: Session
) -> Iterator[bytes] | None:
    """The manifest's bytes from the hot tier if they prove good, else re-rendered from
    the catalog if that gives the recorded BLAKE3 (None: neither)."""
    hot = repairer.node.tiers[repairer.node.settings.hot_tier]
    try:
        with hot.open(version.manifest_key) as stream:
            data = stream.read()
        if blake3.blake3(data).hexdigest() == version.manifest_b3:
            return iter([data])
    except TierError:
        pass
    _, pieces = manifest_pieces(version, session=session)
    hasher = blake3.blake3()
    for piece in pieces:
        hasher.update(piece)
    return iter(pieces) if hasher.hexdigest() == version.manifest_b3 else None


def _repair_copy(
    repairer: Repairer,
    tier_name: str,
    copy_id: int,
    version_id: int,
    key: str,
    state: str,
    until: dt.datetime,
) -> RepairOutcome:
    if state == ReplicaState.REPAIRING:  # left so by a dead worker: back to what was found
        state = ReplicaState.DAMAGED
    tier = repairer.node.tiers[tier_name]
    with repairer.node.session() as session:
        version = session.get(models.Version, version_id)
        assert version is not None
        object_id = version_object_id(version, session=session)
        good = _good_manifest(repairer, version, session=session)
    target = Target("manifest", object_id, key, None, version.manifest_b3)
    detail = ""
    result: CheckResult | None = None
    if good is None:
        detail = "no good copy: the hot copy fails and re-rendering gives other bytes"
    else:
        try:
            with tier.begin_put() as upload:
                for piece in good:
                    upload.write(piece)
                upload.promote(key, expect_b3=version.manifest_b3, replace=True)
        except TierError as exc:
            detail = f"sending it again failed: {exc}"
        else:
            repairer.event(
                EventType.REPLICATION,
                "manifest",
                object_id,
                tier_name,
                True,
                {"key": key, "purpose": "repair", "b3": version.manifest_b3},
            )
            result = _prove(tier, target)
            repairer.event(
                EventType.FIXITY_CHECK,
                "manifest",
                object_id,
                tier_name,
                result.ok,
                {"key": key, "level": result.level, "purpose": "repair result"}
                | ({"error": result.detail} if not result.ok else {}),
            )
            if not result.ok:
                detail = f"the copy sent again fails its audit: {result.detail}"
    repaired = result is not None and result.ok
    now = utcnow()
    M = models.ManifestCopy
    with repairer.node.session() as session:
        mine = sa.and_(col(M.id) == copy_id, col(M.next_audit_at) == until)
        values: dict[str, Any] = (
            {"state": ReplicaState.PRESENT, "last_verified_at": now, "failures": 0}
            if repaired
            else {"state": state, "failures": col(M.failures) + 1}
        )
        # Repaired: scheduled afresh by the next audit pass. Not: tried again next pass.
        session.execute(
            sa.update(M).where(mine).values(next_audit_at=None, updated_at=now, **values)
        )
        session.add(
            repairer.event_row(
                EventType.REPAIR,
                "manifest",
                object_id,
                tier_name,
                repaired,
                {"key": key, "source": "sent again", "was": state}
                | ({"reason": detail} if detail else {}),
            )
        )
    outcome = "repaired" if repaired else "lost" if good is None else "waiting"
    return RepairOutcome(tier_name, "manifest", object_id, outcome, detail)
