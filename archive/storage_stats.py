"""Numbers for the curator dashboard: bytes per tier, audit coverage, damage over time."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa
from sqlmodel import Session, col

from archive.catalog import models
from archive.catalog.models import EventOutcome, EventType, ReplicaState, utcnow


@dataclass(frozen=True)
class TierUsage:
    tier: str
    role: str
    stored_bytes: int
    copies: int
    verified: int

    @property
    def audit_coverage(self) -> float:
        """Share of present copies verified at least once."""
        return self.verified / self.copies if self.copies else 1.0


def tier_usage(*, session: Session) -> list[TierUsage]:
    """Stored bytes and present copies per tier (loose blobs and packs)."""
    R, T, B, P = models.Replica, models.Tier, models.Blob, models.Pack
    totals: dict[str, list[int]] = {}
    roles: dict[str, str] = {}
    for stmt in (
        sa.select(
            col(T.name),
            col(T.role),
            sa.func.sum(col(B.stored_size)),
            sa.func.count(),
            sa.func.count(col(R.last_verified_at)),
        )
        .join(R, col(R.tier_id) == col(T.id))
        .join(B, col(B.b3) == col(R.blob_b3))
        .where(col(R.state) == ReplicaState.PRESENT)
        .group_by(col(T.name), col(T.role)),
        sa.select(
            col(T.name),
            col(T.role),
            sa.func.sum(col(P.size)),
            sa.func.count(),
            sa.func.count(col(R.last_verified_at)),
        )
        .join(R, col(R.tier_id) == col(T.id))
        .join(P, col(P.id) == col(R.pack_id))
        .where(col(R.state) == ReplicaState.PRESENT)
        .group_by(col(T.name), col(T.role)),
    ):
        for name, role, stored, copies, verified in session.execute(stmt):
            roles[name] = role
            acc = totals.setdefault(name, [0, 0, 0])
            acc[0] += int(stored or 0)
            acc[1] += int(copies)
            acc[2] += int(verified)
    for name, role in session.execute(sa.select(col(T.name), col(T.role))):
        roles.setdefault(name, role)
        totals.setdefault(name, [0, 0, 0])
    return [TierUsage(n, roles[n], *totals[n]) for n in sorted(totals)]


def daily_events(
    *, session: Session, days: int = 30, now: dt.datetime | None = None
) -> list[tuple[dt.date, int, int]]:
    """Per day of the last ``days``: (day, failed fixity checks, successful repairs)."""
    end = (now or utcnow()).date()
    start = end - dt.timedelta(days=days - 1)
    since = dt.datetime.combine(start, dt.time(), tzinfo=dt.UTC)
    damaged = dict.fromkeys((start + dt.timedelta(d) for d in range(days)), 0)
    repaired = dict(damaged)
    rows = session.execute(
        sa.select(
            col(models.Event.type), col(models.Event.outcome), col(models.Event.created_at)
        ).where(
            col(models.Event.created_at) >= since,
            col(models.Event.type).in_([EventType.FIXITY_CHECK, EventType.REPAIR]),
        )
    )
    for kind, outcome, when in rows:
        day = when.astimezone(dt.UTC).date()
        if day not in damaged:
            continue
        if kind == EventType.FIXITY_CHECK and outcome == EventOutcome.FAILURE:
            damaged[day] += 1
        elif kind == EventType.REPAIR and outcome == EventOutcome.SUCCESS:
            repaired[day] += 1
    return [(day, damaged[day], repaired[day]) for day in damaged]
