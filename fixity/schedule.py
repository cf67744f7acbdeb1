"""When each copy is audited next, and which worker audits it (DESIGN section 5).

Every present replica (and every version's manifest) carries ``next_audit_at``. A
copy without one gets a time spread evenly over its tier's interval, in random
order with jitter, so a million copies ingested in one afternoon come due at a
steady rate over the next 90 days instead of all at once (no thundering herd).
After an audit the next one is due within 90-100% of the interval, so the spread
persists and no copy ever goes longer than its interval unverified.

Claiming is the catalog-as-queue pattern of the replication loops: due rows are
selected with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL (SQLite serialises write
transactions, so one claimer at a time), and ``next_audit_at`` is pushed one lease
ahead in the same transaction. That push *is* the lease: a worker that dies
mid-audit (SIGKILL) simply lets the row come due again when the lease runs out,
and the audit resumes on another worker. Outcomes are only recorded while the
claimer still owns the row (``lease_owner``).
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col

from archive.catalog import models
from archive.catalog.models import ReplicaState
from archive.node import ArchiveNode

SCHEDULE_BATCH = 50_000


def spread(
    now: dt.datetime, interval: dt.timedelta, count: int, rng: random.Random
) -> list[dt.datetime]:
    """``count`` times spread evenly over ``(now, now + interval]``, jittered, shuffled."""
    times = [now + interval * ((i + rng.random()) / count) for i in range(count)]
    rng.shuffle(times)
    return times


def next_after_audit(now: dt.datetime, interval: dt.timedelta, rng: random.Random) -> dt.datetime:
    """The next audit: within the interval (90-100% of it), jittered to keep the spread."""
    return now + interval * (0.9 + 0.1 * rng.random())


def schedule_new(
    node: ArchiveNode, *, session: Session, now: dt.datetime, rng: random.Random
) -> int:
    """Give unscheduled present copies and manifests an audit time; returns how many."""
    R = models.Replica
    scheduled = 0
    for tier, tier_id in node.tier_ids(session=session).items():
        if tier not in node.settings.tiers:
            continue
        interval = dt.timedelta(seconds=node.settings.audit_policy(tier).interval_seconds)
        ids = list(
            session.execute(
                sa.select(col(R.id))
                .where(
                    col(R.tier_id) == tier_id,
                    col(R.state) == ReplicaState.PRESENT,
                    col(R.next_audit_at).is_(None),
                )
                .limit(SCHEDULE_BATCH)
            ).scalars()
        )
        if ids:
            times = spread(now, interval, len(ids), rng)
            session.execute(
                sa.update(R),
                [{"id": i, "next_audit_at": t} for i, t in zip(ids, times, strict=True)],
            )
            scheduled += len(ids)
    V = models.Version
    interval = dt.timedelta(
        seconds=node.settings.audit_policy(node.settings.hot_tier).interval_seconds
    )
    versions = list(
        session.execute(
            sa.select(col(V.id))
            .where(col(V.manifest_next_audit_at).is_(None))
            .limit(SCHEDULE_BATCH)
        ).scalars()
    )
    if versions:
        times = spread(now, interval, len(versions), rng)
        session.execute(
            sa.update(V),
            [{"id": i, "manifest_next_audit_at": t} for i, t in zip(versions, times, strict=True)],
        )
        scheduled += len(versions)
    return scheduled


@dataclass(frozen=True)
class AuditClaim:
    replica_id: int
    tier_id: int
    blob_b3: str | None
    pack_id: str | None
    key: str
    audit_count: int
    failures: int
    provider_checksum: str | None
    last_read_at: dt.datetime | None


_CLAIM_COLUMNS: tuple[Any, ...] = tuple(
    col(c)
    for c in (
        models.Replica.id,
        models.Replica.tier_id,
        models.Replica.blob_b3,
        models.Replica.pack_id,
        models.Replica.key,
        models.Replica.audit_count,
        models.Replica.failures,
        models.Replica.provider_checksum,
        models.Replica.last_read_at,
    )
)


def _lock(session: Session, stmt: sa.Select[tuple[object, ...]]) -> sa.Select[tuple[object, ...]]:
    if session.get_bind().dialect.name == "postgresql":
        return stmt.with_for_update(skip_locked=True, of=models.Replica)
    return stmt


def _take(
    session: Session,
    stmt: sa.Select[tuple[object, ...]],
    *,
    owner: str,
    lease_until: dt.datetime,
    now: dt.datetime,
) -> list[AuditClaim]:
    rows = [AuditClaim(*row) for row in session.execute(_lock(session, stmt)).all()]
    if rows:
        R = models.Replica
        session.execute(
            sa.update(R)
            .where(col(R.id).in_([r.replica_id for r in rows]))
            .values(
                next_audit_at=lease_until,
                lease_owner=owner,
                lease_expires_at=lease_until,
                updated_at=now,
            )
        )
    return rows


def claim_due(
    *,
    session: Session,
    owner: str,
    tier_ids: Sequence[int],
    limit: int,
    now: dt.datetime,
    lease: dt.timedelta,
    due: bool = True,
) -> list[AuditClaim]:
    """Lease up to ``limit`` present copies on these tiers whose audit is due, oldest
    due first (``due=False``: any present copy, for ``audit run`` on demand)."""
    if not tier_ids or limit <= 0:
        return []
    R = models.Replica
    stmt = sa.select(*_CLAIM_COLUMNS).where(
        col(R.state) == ReplicaState.PRESENT, col(R.tier_id).in_(list(tier_ids))
    )
    if due:
        stmt = stmt.where(col(R.next_audit_at) <= now)
    else:  # on demand: not while another worker holds it
        stmt = stmt.where(sa.or_(col(R.lease_expires_at).is_(None), col(R.lease_expires_at) <= now))
    stmt = stmt.order_by(col(R.next_audit_at).asc().nulls_first(), col(R.id)).limit(limit)
    return _take(session, stmt, owner=owner, lease_until=now + lease, now=now)


def auditors_of(session: Session, tier_id: int, now: dt.datetime, lease: dt.timedelta) -> int:
    """How many workers hold audit leases on this tier now (at least 1).

    A lease taken by :func:`claim_due` pushes ``next_audit_at`` to its end, so the
    leased rows are the present ones due in ``(now, now + lease]``: a range of the
    ``(state, next_audit_at)`` index, not a scan of the tier. Rows merely due in
    that window carry no unexpired lease and do not count.
    """
    R = models.Replica
    found = session.execute(
        sa.select(sa.func.count(sa.distinct(col(R.lease_owner)))).where(
            col(R.state) == ReplicaState.PRESENT,
            col(R.next_audit_at) > now,
            col(R.next_audit_at) <= now + lease,
            col(R.tier_id) == tier_id,
            col(R.lease_expires_at) > now,
        )
    ).scalar_one()
    return max(1, int(found))


def claim_sample(
    *,
    session: Session,
    owner: str,
    tier_id: int,
    budget_bytes: int,
    period: dt.timedelta,
    now: dt.datetime,
    lease: dt.timedelta,
    limit: int,
) -> list[AuditClaim]:
    """Cold tiers: lease a random sample of copies whose bytes to read (restore) now.

    The copies read least recently come first (never-read ones first, in random
    order), so repeated periods cover every copy; the sample stops where the bytes
    read on this tier in the last ``period`` would exceed ``budget_bytes``.
    """
    R, B, P = models.Replica, models.Blob, models.Pack
    size = sa.func.coalesce(col(B.stored_size), col(P.size), 0)
    spent = session.execute(
        sa.select(sa.func.coalesce(sa.func.sum(size), 0))
        .select_from(R)
        .outerjoin(B, col(B.b3) == col(R.blob_b3))
        .outerjoin(P, col(P.id) == col(R.pack_id))
        .where(col(R.tier_id) == tier_id, col(R.last_read_at) > now - period)
    ).scalar_one()
    left = budget_bytes - int(spent)
    if left <= 0:
        return []
    stmt = (
        sa.select(*_CLAIM_COLUMNS, size)
        .select_from(R)
        .outerjoin(B, col(B.b3) == col(R.blob_b3))
        .outerjoin(P, col(P.id) == col(R.pack_id))
        .where(
            col(R.tier_id) == tier_id,
            col(R.state) == ReplicaState.PRESENT,
            sa.or_(col(R.last_read_at).is_(None), col(R.last_read_at) <= now - period),
            sa.or_(col(R.lease_expires_at).is_(None), col(R.lease_expires_at) <= now),
        )
        .order_by(col(R.last_read_at).asc().nulls_first(), sa.func.random())
        .limit(limit)
    )
    chosen: list[int] = []
    for row in session.execute(_lock(session, stmt)).all():
        if row[-1] > left:
            continue
        left -= row[-1]
        chosen.append(row[0])
    if not chosen:
        return []
    stmt = sa.select(*_CLAIM_COLUMNS).where(col(R.id).in_(chosen))
    claims = [AuditClaim(*row) for row in session.execute(stmt).all()]
    session.execute(
        sa.update(R)
        .where(col(R.id).in_(chosen))
        .values(lease_owner=owner, lease_expires_at=now + lease, updated_at=now)
    )
    return claims


@dataclass(frozen=True)
class ManifestClaim:
    version_id: int
    key: str
    manifest_b3: str
    lease_until: dt.datetime


def claim_manifests(
    *, session: Session, limit: int, now: dt.datetime, lease: dt.timedelta, due: bool = True
) -> list[ManifestClaim]:
    """Lease version manifests whose audit is due; the lease time is the claim token."""
    V = models.Version
    stmt = sa.select(col(V.id), col(V.manifest_key), col(V.manifest_b3)).where(
        col(V.manifest_state) == ReplicaState.PRESENT
    )
    if due:
        stmt = stmt.where(col(V.manifest_next_audit_at) <= now)
    stmt = stmt.order_by(col(V.manifest_next_audit_at).asc().nulls_first(), col(V.id)).limit(limit)
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    until = now + lease
    rows = [ManifestClaim(r[0], r[1], r[2], until) for r in session.execute(stmt).all()]
    if rows:
        session.execute(
            sa.update(V)
            .where(col(V.id).in_([r.version_id for r in rows]))
            .values(manifest_next_audit_at=until)
        )
    return rows


@dataclass(frozen=True)
class RepairClaim:
    replica_id: int
    tier_id: int
    blob_b3: str | None
    pack_id: str | None
    key: str
    state: str
    failures: int
