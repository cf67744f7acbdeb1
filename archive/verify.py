"""Re-reading every stored copy of a version now, and saying what was found.

Each copy is read in full, decoded and proven against the catalog (stored BLAKE3,
BLAKE3 of the content, SHA-256, sizes). Each check is recorded as a PREMIS
``fixity check`` event; this is the on-demand form of what the fixity auditors
(fixity/, issue 4) do on a schedule.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sqlmodel import Session, col, select

from archive.catalog import models
from archive.catalog.models import EventOutcome, EventType, utcnow
from archive.errors import BlobDigestMismatch
from archive.retrieval import blobs_of_version, iter_verified, locate
from tiers import NeedsRestore, Tier, TierError


@dataclass(frozen=True)
class CopyCheck:
    b3: str
    tier: str
    key: str
    ok: bool
    detail: str = ""
    skipped: bool = False
    """A cold copy that cannot be read without a restore: neither good nor bad."""


@dataclass
class VerifyReport:
    blobs: int = 0
    copies: int = 0
    bytes: int = 0
    checks: list[CopyCheck] = field(default_factory=list)

    @property
    def failures(self) -> list[CopyCheck]:
        return [c for c in self.checks if not c.ok and not c.skipped]

    @property
    def skipped(self) -> list[CopyCheck]:
        return [c for c in self.checks if c.skipped]

    @property
    def blobs_without_good_copy(self) -> list[str]:
        """Blobs none of whose checked copies passed (cold, unrestored copies aside)."""
        good = {c.b3 for c in self.checks if c.ok or c.skipped}
        return sorted({c.b3 for c in self.checks} - good)


def verify_version(
    version: models.Version,
    *,
    session: Session,
    tiers: dict[str, Tier],
    agent: str = "permafrost/verify",
    on_blob: Callable[[int], None] | None = None,
) -> VerifyReport:
    assert version.id is not None
    report = VerifyReport()
    now = utcnow()
    verified_loose: list[tuple[str, str]] = []
    for blob in blobs_of_version(version.id, session=session):
        report.blobs += 1
        locations = locate(blob.b3, session=session)
        if not locations:
            report.checks.append(CopyCheck(blob.b3, "-", "-", False, "no present copy recorded"))
        for loc in locations:
            tier = tiers.get(loc.tier)
            label = f"{loc.key}@{loc.offset}+{loc.length}" if loc.pack_id else loc.key
            if tier is None:
                check = CopyCheck(blob.b3, loc.tier, label, False, "tier not configured here")
            else:
                try:
                    for _ in iter_verified(tier, loc, blob):
                        pass
                    check = CopyCheck(blob.b3, loc.tier, label, True)
                    report.bytes += blob.stored_size
                    if loc.pack_id is None:
                        verified_loose.append((blob.b3, loc.tier))
                except NeedsRestore:
                    check = CopyCheck(
                        blob.b3, loc.tier, label, False, "cold: needs a restore", skipped=True
                    )
                except (BlobDigestMismatch, TierError) as exc:
                    check = CopyCheck(blob.b3, loc.tier, label, False, str(exc))
            report.copies += 1
            report.checks.append(check)
            if check.skipped:
                continue
            session.add(
                models.Event(
                    type=EventType.FIXITY_CHECK,
                    object_type="blob",
                    object_id=blob.b3,
                    tier=check.tier,
                    outcome=EventOutcome.SUCCESS if check.ok else EventOutcome.FAILURE,
                    detail={"key": check.key, "level": "deep", "error": check.detail},
                    agent=agent,
                    created_at=now,
                )
            )
        if on_blob is not None:
            on_blob(blob.size)
    tier_ids = {
        name: tid for name, tid in session.exec(select(models.Tier.name, models.Tier.id)).all()
    }
    for b3, tier_name in verified_loose:
        for replica in session.exec(
            select(models.Replica).where(
                models.Replica.blob_b3 == b3, col(models.Replica.tier_id) == tier_ids[tier_name]
            )
        ):
            replica.last_verified_at = now
            session.add(replica)
    return report
