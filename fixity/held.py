"""What we hold for partners, audited by us on our own schedule (issue 5).

A partner checks by proofs of possession that we still hold what it sent, but bit rot
on our disks is ours to find: on the holding tier's schedule, in our own ``audit run``
and ``audit status``, written down as our own PREMIS events. Held objects are not
replicas: they are not our blobs (the catalog has no :class:`~archive.catalog.models.Blob`
for them; a sealed one cannot even be decoded here), so they must never be a source
for our repairs nor count towards our policies. They get an audit pass of their own
over the :class:`~archive.catalog.models.HeldObject` rows, with the same claims,
retries and events as every other copy: each object is read whole on the holding
tier and its BLAKE3 must still be its name (a blob) or the digest recorded when it
arrived (a manifest).

We have no other copy to repair a bad one from. It is marked damaged or missing; the
partner's next proof finds the same, it sends the bytes again, and they replace ours
(``federation.api``), which makes the row present again.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlmodel import Session, col

from archive.catalog import models
from archive.catalog.models import ReplicaState, utcnow
from archive.held import held_key, holding_tier_name
from archive.node import ArchiveNode
from archive.reachability import mark_reachable, mark_unreachable
from fixity.checks import CheckResult, Finding, Level, Target, check_event, event_detail
from fixity.schedule import next_after_audit, spread

if TYPE_CHECKING:
    from fixity.audit import AuditOptions, Auditor
    from fixity.report import AuditReport


@dataclass(frozen=True)
class HeldClaim:
    partner_id: int
    partner: str
    kind: str
    name: str
    size: int
    b3: str
    lease_until: dt.datetime

    @property
    def object_type(self) -> str:
        """``held blob`` or ``held manifest``: the event's object, not one of ours."""
        return f"held {self.kind}"

    @property
    def object_id(self) -> str:
        """``<partner>/<BLAKE3 of the bytes>`` (a manifest's name is in the event's key)."""
        return f"{self.partner}/{self.b3}"


def _row(claim: HeldClaim) -> Any:
    H = models.HeldObject
    return sa.and_(
        col(H.partner_id) == claim.partner_id,
        col(H.kind) == claim.kind,
        col(H.name) == claim.name,
        col(H.next_audit_at) == claim.lease_until,
    )


def schedule_held(
    node: ArchiveNode, *, session: Session, now: dt.datetime, rng: random.Random
) -> int:
    """Give unscheduled held objects an audit time spread over the holding tier's interval."""
    H = models.HeldObject
    keys = session.execute(
        sa.select(col(H.partner_id), col(H.kind), col(H.name)).where(
            col(H.state) == ReplicaState.PRESENT, col(H.next_audit_at).is_(None)
        )
    ).all()
    if not keys:
        return 0
    policy = node.settings.audit_policy(holding_tier_name(node))
    times = spread(now, dt.timedelta(seconds=policy.interval_seconds), len(keys), rng)
    for (partner_id, kind, name), when in zip(keys, times, strict=True):
        session.execute(
            sa.update(H)
            .where(col(H.partner_id) == partner_id, col(H.kind) == kind, col(H.name) == name)
            .values(next_audit_at=when)
        )
    return len(keys)


def claim_held(
    *, session: Session, limit: int, now: dt.datetime, lease: dt.timedelta, due: bool = True
) -> list[HeldClaim]:
    """Lease held objects whose audit is due (``due=False``: any present one)."""
    H, P = models.HeldObject, models.Partner
    stmt = (
        sa.select(col(H.partner_id), col(P.name), col(H.kind), col(H.name), col(H.size), col(H.b3))
        .join(P, col(P.id) == col(H.partner_id))
        .where(col(H.state) == ReplicaState.PRESENT)
    )
    if due:
        stmt = stmt.where(col(H.next_audit_at) <= now)
    stmt = stmt.order_by(col(H.next_audit_at).asc().nulls_first()).limit(limit)
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True, of=H)
    until = now + lease
    claims = [
        HeldClaim(r[0], r[1], r[2], r[3], r[4], r[5], until) for r in session.execute(stmt).all()
    ]
    for claim in claims:
        session.execute(
            sa.update(H)
            .where(
                col(H.partner_id) == claim.partner_id,
                col(H.kind) == claim.kind,
                col(H.name) == claim.name,
            )
            .values(next_audit_at=until)
        )
    return claims


def audit_held(
    auditor: Auditor, opts: AuditOptions, report: AuditReport, wanted: Iterable[str]
) -> None:
    """Audit what we hold for partners when the pass covers the holding tier."""
    node = auditor.node
    tier = holding_tier_name(node)
    if tier not in set(wanted) or not auditor.usable(tier):
        return
    with node.session() as session:
        schedule_held(node, session=session, now=utcnow(), rng=auditor.rng)
        claims = claim_held(
            session=session,
            limit=opts.limit or node.settings.audit_batch,
            now=utcnow(),
            lease=auditor.lease,
            due=opts.due_only,
        )
    cold = node.tiers[tier].capabilities.needs_restore
    for claim in claims:
        key = held_key(claim.partner, claim.kind, claim.name)
        target = Target(claim.object_type, claim.object_id, key, claim.size, claim.b3)
        result = auditor.check_twice(tier, target, Level.LIGHT if cold else Level.STORED)
        _record(auditor, tier, claim, target, result, report)


def _record(
    auditor: Auditor,
    tier: str,
    claim: HeldClaim,
    target: Target,
    result: CheckResult,
    report: AuditReport,
) -> None:
    H = models.HeldObject
    now = utcnow()
    if result.finding in (Finding.UNREACHABLE, Finding.NEEDS_RESTORE):
        report.unreachable_copy(tier, result.detail, sampled=False)
        delay = auditor.back_off(tier, 1)
        with auditor.node.session() as session:
            if result.finding == Finding.UNREACHABLE:
                mark_unreachable(tier, now, session=session)
            session.execute(
                sa.update(H)
                .where(_row(claim))
                .values(next_audit_at=now + dt.timedelta(seconds=delay))
            )
        return
    interval = dt.timedelta(seconds=auditor.policy(tier).interval_seconds)
    values: dict[str, Any]
    if result.ok:
        values = {
            "last_verified_at": now,
            "next_audit_at": next_after_audit(now, interval, auditor.rng),
        }
    else:
        missing = result.finding == Finding.MISSING
        values = {
            "state": ReplicaState.MISSING if missing else ReplicaState.DAMAGED,
            "next_audit_at": None,
        }
    with auditor.node.session() as session:
        changed = session.execute(sa.update(H).where(_row(claim)).values(**values))
        if changed.rowcount == 0:  # type: ignore[attr-defined]
            return  # the lease ran out, or the partner sent or deleted it meanwhile
        mark_reachable(tier, session=session)
        detail = event_detail(target, result, sampled=False) | {
            "partner": claim.partner,
            "name": claim.name,
        }
        session.add(check_event(claim.object_type, claim.object_id, tier, result, detail, now))
    report.copy_checked(tier, target, result)
