"""One report per audit pass: what was checked, what failed, what was repaired.

People are told about the pass, never one alert per file: the report is printed
by ``permafrost audit run``, stored as one summary event, and counted in metrics.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

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

    def _tally(self, tier: str) -> TierTally:
        return self.tiers.setdefault(tier, TierTally())

    def copy_checked(self, tier: str, target: Target, result: CheckResult) -> None:
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
        t = self._tally(tier)
        t.unreachable += 1
        if not t.skipped:
            t.skipped = f"unreachable: {detail}"[:300]

    def sample_waiting(self, tier: str) -> None:
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
