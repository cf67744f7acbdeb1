"""One report per audit pass: what was checked, what failed, what was repaired.

People are told about the pass, never one alert per file: the report is printed
by ``permafrost audit run``, stored as one summary event, and counted in metrics.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col

from archive.catalog import models
from archive.catalog.models import EventOutcome, EventType
from fixity.checks import CheckResult, Finding, Target

MAX_LISTED = 50


@dataclass
class TierTally:
    checked: int = 0
    good: int = 0
    damaged: int = 0
    missing: int = 0
    unreachable: int = 0
    bytes_read: int = 0
    levels: Counter[str] = field(default_factory=Counter)
    sampled: int = 0
    waiting_restore: int = 0
    skipped: str = ""


@dataclass
class AuditReport:
    started_at: dt.datetime
    finished_at: dt.datetime | None = None
    tiers: dict[str, TierTally] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)
    repairs: list[dict[str, Any]] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    """Copies may be audited in several threads (``audit_threads``)."""

    def _tally(self, tier: str) -> TierTally:
        return self.tiers.setdefault(tier, TierTally())

    def copy_checked(self, tier: str, target: Target, result: CheckResult) -> None:
        with self._lock:
            self._copy_checked(tier, target, result)

    def _copy_checked(self, tier: str, target: Target, result: CheckResult) -> None:
        t = self._tally(tier)
        t.checked += 1
        t.bytes_read += result.bytes_read
        t.levels[result.level] += 1
        if result.ok:
            t.good += 1
            return
        if result.finding == Finding.MISSING:
            t.missing += 1
        else:
            t.damaged += 1
        if len(self.failures) < MAX_LISTED:
            self.failures.append(
                {
                    "tier": tier,
                    "object_type": target.kind,
                    "object_id": target.object_id,
                    "key": target.key,
                    "finding": result.finding,
                    "level": result.level,
                    "detail": result.detail,
                }
            )

    def unreachable_copy(self, tier: str, detail: str, *, sampled: bool) -> None:
        with self._lock:
            t = self._tally(tier)
            t.unreachable += 1
            if not t.skipped:
                t.skipped = f"unreachable: {detail}"[:300]

    def sample_waiting(self, tier: str) -> None:
        with self._lock:
            self._tally(tier).waiting_restore += 1

    def tier_skipped(self, tier: str, why: str) -> None:
        self._tally(tier).skipped = why

    @property
    def checked(self) -> int:
        return sum(t.checked for t in self.tiers.values())

    @property
    def unreachable(self) -> int:
        return sum(t.unreachable for t in self.tiers.values())

    @property
    def damage_found(self) -> int:
        return sum(t.damaged + t.missing for t in self.tiers.values())

    @property
    def clean(self) -> bool:
        """Every audited copy was good and nothing is lost (what ``audit run`` exits 0 on)."""
        return self.damage_found == 0 and not self.lost

    def as_dict(self) -> dict[str, Any]:
        return {
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "checked": self.checked,
            "damaged_or_missing": self.damage_found,
            "unreachable": self.unreachable,
            "clean": self.clean,
            "tiers": {
                name: {
                    "checked": t.checked,
                    "good": t.good,
                    "damaged": t.damaged,
                    "missing": t.missing,
                    "unreachable": t.unreachable,
                    "bytes_read": t.bytes_read,
                    "levels": dict(t.levels),
                    "waiting_restore": t.waiting_restore,
                    **({"note": t.skipped} if t.skipped else {}),
                }
                for name, t in sorted(self.tiers.items())
            },
            "failures": self.failures,
            "repairs": self.repairs,
            "lost": self.lost,
        }

    def summary_event(self, *, agent: str, object_id: str) -> models.Event:
        data = self.as_dict()
        return models.Event(
            type=EventType.FIXITY_CHECK,
            object_type="archive",
            object_id=object_id,
            tier=None,
            outcome=EventOutcome.SUCCESS if self.clean else EventOutcome.FAILURE,
            detail={"summary": True, **data},
            agent=agent,
            created_at=self.finished_at or self.started_at,
        )


@dataclass
class RepairOutcome:
    tier: str
    object_type: str
    object_id: str
    result: str
    """``repaired``, ``lost``, ``waiting`` (sources unreachable or being restored)."""
    detail: str = ""
    lost_blobs: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "tier": self.tier,
            "object_type": self.object_type,
            "object_id": self.object_id,
            "result": self.result,
            "detail": self.detail,
            **({"lost_blobs": self.lost_blobs} if self.lost_blobs else {}),
        }


def day_object_id(day: dt.date) -> str:
    return f"day:{day.isoformat()}"


def daily_summary(session: Session, day: dt.date) -> dict[str, Any]:
    """What the audits and repairs of one UTC day did, from that day's events."""
    start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
    end = start + dt.timedelta(days=1)
    E = models.Event
    rows = session.execute(
        sa.select(col(E.type), col(E.tier), col(E.outcome), sa.func.count())
        .where(
            col(E.created_at) >= start,
            col(E.created_at) < end,
            col(E.type).in_([EventType.FIXITY_CHECK, EventType.REPAIR]),
            col(E.object_type) != "archive",
        )
        .group_by(col(E.type), col(E.tier), col(E.outcome))
    ).all()
    tiers: dict[str, dict[str, int]] = {}
    for event_type, tier, outcome, count in rows:
        key = ("checked" if event_type == EventType.FIXITY_CHECK else "repair") + f" {outcome}"
        tally = tiers.setdefault(tier or "-", {})
        tally[key] = tally.get(key, 0) + count
    lost = session.execute(
        sa.select(sa.func.count())
        .select_from(E)
        .where(
            col(E.created_at) >= start,
            col(E.created_at) < end,
            col(E.type) == EventType.REPAIR,
            col(E.outcome) == EventOutcome.FAILURE,
            col(E.object_type) == "blob",
        )
    ).scalar_one()
    return {"day": day.isoformat(), "tiers": tiers, "lost_reports": lost}


def record_daily_summary(session: Session, day: dt.date, *, agent: str) -> bool:
    """Write the day's summary event once (the first audit pass after the day ends)."""
    E = models.Event
    exists = session.execute(
        sa.select(col(E.id)).where(
            col(E.object_type) == "archive", col(E.object_id) == day_object_id(day)
        )
    ).first()
    if exists is not None:
        return False
    summary = daily_summary(session, day)
    failed = any(
        n for t in summary["tiers"].values() for k, n in t.items() if k.endswith("failure")
    )
    session.add(
        models.Event(
            type=EventType.FIXITY_CHECK,
            object_type="archive",
            object_id=day_object_id(day),
            tier=None,
            outcome=EventOutcome.FAILURE if failed else EventOutcome.SUCCESS,
            detail={"summary": "daily", **summary},
            agent=agent,
        )
    )
    return True
