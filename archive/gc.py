"""Garbage collection: what crashes leave behind in the tiers, and nothing else.

A crash can leave three kinds of bytes no catalog row names (archive.blobstore):

* staged writes never promoted (``.staging/`` files, S3 staging objects and
  multipart uploads);
* objects promoted but never recorded: a pack (or a loose blob) stored just before
  the crash, or a manifest written by a commit that did not commit;
* nothing else: every other object is named by a replica or version row.

``permafrost gc`` removes them, but only those last touched before a grace period
(default 24 hours), so the bytes of an ingest still in flight, promoted a moment
before their rows commit, are never taken for garbage. A loose blob with no copy
row on its tier but named by the catalog (a blob row or a version's entry) is not
garbage: it is reported as unrecorded and kept.

As a guard against running with the wrong catalog (lost, or another archive's),
gc refuses to delete anything from a tier whose manifests the catalog does not know:
with no version rows at all, every object would look like garbage.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlmodel import Session, col, select

from archive.catalog import models
from archive.catalog.models import EventOutcome, EventType, utcnow
from archive.errors import ConfigError
from archive.node import ArchiveNode
from archive.packs import blob_key, pack_index_key, pack_key
from tiers import ObjectInfo, Tier

AGENT = "permafrost/gc"
DEFAULT_GRACE = dt.timedelta(hours=24)
BATCH = 900


@dataclass
class GcReport:
    grace_hours: float
    dry_run: bool
    staging: dict[str, int] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)
    """``tier:key`` of every unrecorded object removed (or, on a dry run, to be removed)."""
    removed_bytes: int = 0
    kept_unrecorded: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def collect_garbage(
    node: ArchiveNode, *, grace: dt.timedelta = DEFAULT_GRACE, dry_run: bool = False
) -> GcReport:
    """Remove abandoned staging and unrecorded objects older than ``grace`` from every tier.

    Raises:
        ConfigError: a tier holds manifests and the catalog knows none of them.
    """
    cutoff = utcnow() - grace
    report = GcReport(grace.total_seconds() / 3600, dry_run)
    with node.session() as session:
        tier_ids = node.tier_ids(session=session)
        for tier in node.tiers.values():
            _check_catalog_knows(tier, session)
        for name, tier in node.tiers.items():
            if not dry_run:
                report.staging[name] = tier.sweep_staging(cutoff)
            _sweep_unrecorded(name, tier, tier_ids[name], cutoff, session, report)
        if not dry_run and (report.removed or any(report.staging.values())):
            session.add(
                models.Event(
                    type=EventType.DELETION,
                    object_type="tier",
                    object_id="gc",
                    outcome=EventOutcome.SUCCESS,
                    detail={
                        "staging": report.staging,
                        "removed": len(report.removed),
                        "removed_bytes": report.removed_bytes,
                        "sample": report.removed[:20],
                        "grace_hours": report.grace_hours,
                    },
                    agent=AGENT,
                )
            )
    return report


def _check_catalog_knows(tier: Tier, session: Session) -> None:
    manifests = [info.key for _, info in zip(range(BATCH), tier.list("manifests/"), strict=False)]
    if not manifests:
        return
    known = session.exec(
        select(models.Version.manifest_key).where(col(models.Version.manifest_key).in_(manifests))
    ).all()
    if not known:
        raise ConfigError(
            f"tier {tier.name} holds manifests the catalog does not know (first: "
            f"{manifests[0]}): is this the right catalog? If it was lost, run "
            "`permafrost catalog rebuild` first; gc deleted nothing"
        )


def _sweep_unrecorded(
    name: str,
    tier: Tier,
    tier_id: int,
    cutoff: dt.datetime,
    session: Session,
    report: GcReport,
) -> None:
    old = [i for i in tier.list("") if i.modified is not None and i.modified < cutoff]
    packs = [i for i in old if i.key.startswith("packs/")]
    blobs = [i for i in old if i.key.startswith("blobs/")]
    manifests = [i for i in old if i.key.startswith("manifests/")]

    recorded_packs = _present(
        session,
        models.Replica.pack_id,
        {_pack_id(i.key) for i in packs} - {""},
        models.Replica.tier_id == tier_id,
    )
    for info in packs:
        pack_id = _pack_id(info.key)
        if (
            pack_id
            and pack_id not in recorded_packs
            and info.key
            in (
                pack_key(pack_id),
                pack_index_key(pack_id),
            )
        ):
            _remove(name, tier, info, report)

    by_b3 = {i.key.rsplit("/", 1)[-1]: i for i in blobs if i.key == blob_key(i.key[-64:])}
    recorded = _present(
        session, models.Replica.blob_b3, set(by_b3), models.Replica.tier_id == tier_id
    )
    unrecorded = set(by_b3) - recorded
    named = _present(session, models.Blob.b3, unrecorded) | _present(
        session, models.Entry.blob_b3, unrecorded
    )
    for b3 in sorted(unrecorded):
        if b3 in named:
            report.kept_unrecorded.append(f"{name}:{by_b3[b3].key}")
        else:
            _remove(name, tier, by_b3[b3], report)

    versions = _present(session, models.Version.manifest_key, {i.key for i in manifests})
    for info in manifests:
        if info.key not in versions:
            _remove(name, tier, info, report)


def _pack_id(key: str) -> str:
    stem = key.removeprefix("packs/").rsplit(".", 1)[0]
    return stem if len(stem) == 64 else ""


def _present(session: Session, column: Any, values: Iterable[str], *where: Any) -> set[str]:
    """Which of ``values`` appear in ``column`` (queried in batches)."""
    wanted: Sequence[str] = sorted(values)
    found: set[str] = set()
    for i in range(0, len(wanted), BATCH):
        rows = session.exec(
            select(column).where(col(column).in_(wanted[i : i + BATCH]), *where)
        ).all()
        found.update(str(r) for r in rows if r is not None)
    return found


def _remove(name: str, tier: Tier, info: ObjectInfo, report: GcReport) -> None:
    report.removed.append(f"{name}:{info.key}")
    report.removed_bytes += info.size
    if not report.dry_run:
        tier.delete(info.key)
