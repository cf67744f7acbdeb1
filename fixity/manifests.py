"""Version manifests: audited on the hot tier and re-rendered from the catalog.

A manifest is canonical JSON (``archive.manifest``), so the catalog, which holds
everything a manifest says, can render its exact bytes again: a damaged or missing
manifest is repaired by rendering it and writing it back only if its BLAKE3 is the
one recorded at ingest. If the dataset's title or metadata changed since, the
rendering differs, nothing is written, and the failure is recorded.

Manifests have no replica rows; their audit state lives on the version
(``manifest_state``, ``manifest_verified_at``, ``manifest_next_audit_at``), and the
claimed ``manifest_next_audit_at`` is the lease token (see ``fixity.schedule``).
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from archive.catalog import models
from archive.catalog.models import EventType, ReplicaState, utcnow
from archive.datasets import dataset_document
from archive.manifest import ManifestEntry, render
from fixity.checks import CheckResult, Finding, Level, Target, check_event, event_detail
from fixity.report import AuditReport, RepairOutcome
from fixity.schedule import ManifestClaim, claim_manifests, next_after_audit
from tiers import TierError

if TYPE_CHECKING:
    from fixity.audit import AuditOptions, Auditor
    from fixity.repair import Repairer


def audit_manifests(auditor: Auditor, opts: AuditOptions, report: AuditReport) -> None:
    tier = auditor.node.settings.hot_tier
    if not auditor.usable(tier):
        return
    with auditor.node.session() as session:
        claims = claim_manifests(
            session=session,
            limit=auditor.node.settings.audit_batch,
            now=utcnow(),
            lease=auditor.lease,
            due=opts.due_only,
        )
    interval = dt.timedelta(seconds=auditor.policy(tier).interval_seconds)
    for claim in claims:
        target = Target("manifest", str(claim.version_id), claim.key, None, claim.manifest_b3)
        level = Level.STORED if opts.level in (None, Level.LIGHT) else opts.level
        result = auditor.check_twice(tier, target, level)
        _record_manifest(auditor, tier, claim, target, result, report, interval)


def _record_manifest(
    auditor: Auditor,
    tier: str,
    claim: ManifestClaim,
    target: Target,
    result: CheckResult,
    report: AuditReport,
    interval: dt.timedelta,
) -> None:
    now = utcnow()
    V = models.Version
    mine = sa.and_(
        col(V.id) == claim.version_id, col(V.manifest_next_audit_at) == claim.lease_until
    )
    if result.finding in (Finding.UNREACHABLE, Finding.NEEDS_RESTORE):
        report.unreachable_copy(tier, result.detail, sampled=False)
        delay = auditor.back_off(tier, 1)
        with auditor.node.session() as session:
            session.execute(
                sa.update(V)
                .where(mine)
                .values(manifest_next_audit_at=now + dt.timedelta(seconds=delay))
            )
        return
    with auditor.node.session() as session:
        if result.ok:
            values: dict[str, object] = {
                "manifest_verified_at": now,
                "manifest_next_audit_at": next_after_audit(now, interval, auditor.rng),
            }
        else:
            state = (
                ReplicaState.MISSING if result.finding == Finding.MISSING else ReplicaState.DAMAGED
            )
            values = {"manifest_state": state, "manifest_next_audit_at": None}
        changed = session.execute(sa.update(V).where(mine).values(**values))
        if changed.rowcount == 0:  # type: ignore[attr-defined]
            return
        version = session.get(V, claim.version_id)
        assert version is not None
        object_id = version_object_id(version, session=session)
        session.add(manifest_check_event(object_id, tier, target, result, now))
    report.copy_checked(tier, target, result)


def manifest_check_event(
    object_id: str, tier: str, target: Target, result: CheckResult, now: dt.datetime
) -> models.Event:
    """The preservation event of one audit of a manifest copy, on the hot tier or another."""
    detail = event_detail(target, result, sampled=False)
    return check_event("manifest", object_id, tier, result, detail, now)


def version_object_id(version: models.Version, *, session: Session) -> str:
    """``<dataset pid>@v<N>``: how ingest events name a version."""
    dataset = session.get(models.Dataset, version.dataset_id)
    assert dataset is not None
    return f"{dataset.pid}@v{version.number}"


def repair_manifests(repairer: Repairer, limit: int) -> list[RepairOutcome]:
    V = models.Version
    now = utcnow()
    tier_name = repairer.node.settings.hot_tier
    if not repairer.usable(tier_name):
        return []
    with repairer.node.session() as session:
        stmt = (
            sa.select(col(V.id), col(V.manifest_state))
            .where(
                sa.or_(
                    col(V.manifest_state).in_([ReplicaState.DAMAGED, ReplicaState.MISSING]),
                    sa.and_(
                        col(V.manifest_state) == ReplicaState.REPAIRING,
                        col(V.manifest_next_audit_at) <= now,
                    ),
                )
            )
            .limit(limit)
        )
        if session.get_bind().dialect.name == "postgresql":
            stmt = stmt.with_for_update(skip_locked=True)
        rows = session.execute(stmt).all()
        until = now + repairer.lease
        if rows:
            session.execute(
                sa.update(V)
                .where(col(V.id).in_([r[0] for r in rows]))
                .values(manifest_state=ReplicaState.REPAIRING, manifest_next_audit_at=until)
            )
    return [_repair_manifest(repairer, tier_name, vid, st, until) for vid, st in rows]


def _repair_manifest(
    repairer: Repairer, tier_name: str, version_id: int, state: str, until: dt.datetime
) -> RepairOutcome:
    """Re-render the manifest from the catalog; it is written back only if its
    BLAKE3 is the one recorded at ingest (manifests are canonical JSON)."""
    tier = repairer.node.tiers[tier_name]
    if state == ReplicaState.REPAIRING:
        state = ReplicaState.DAMAGED
    V = models.Version
    with repairer.node.session() as session:
        version = session.get(V, version_id)
        assert version is not None
        object_id, pieces = manifest_pieces(version, session=session)
    upload = tier.begin_put()
    ok = False
    detail = ""
    try:
        with upload:
            for piece in pieces:
                upload.write(piece)
            if upload.b3 != version.manifest_b3:
                detail = (
                    f"re-rendered manifest hashes to {upload.b3}, not {version.manifest_b3} "
                    "(the dataset's metadata changed since)"
                )
            else:
                upload.promote(version.manifest_key, expect_b3=version.manifest_b3, replace=True)
                ok = True
    except TierError as exc:
        detail = f"rewrite failed: {exc}"
    target = Target("manifest", object_id, version.manifest_key, None, version.manifest_b3)
    result = repairer.verify_result(tier, target) if ok else None
    now = utcnow()
    repaired = result is not None and result.ok
    with repairer.node.session() as session:
        mine = sa.and_(col(V.id) == version_id, col(V.manifest_next_audit_at) == until)
        values: dict[str, Any] = (
            {
                "manifest_state": ReplicaState.PRESENT,
                "manifest_verified_at": now,
                "manifest_next_audit_at": None,
            }
            if repaired
            else {"manifest_state": state, "manifest_next_audit_at": None}
        )
        session.execute(sa.update(V).where(mine).values(**values))
        session.add(
            repairer.event_row(
                EventType.REPAIR,
                "manifest",
                object_id,
                tier_name,
                repaired,
                {
                    "key": version.manifest_key,
                    "source": "re-rendered from the catalog",
                    **({"reason": detail} if detail else {}),
                },
            )
        )
    return RepairOutcome(
        tier_name, "manifest", object_id, "repaired" if repaired else "lost", detail
    )


def manifest_pieces(version: models.Version, *, session: Session) -> tuple[str, list[bytes]]:
    dataset = session.get(models.Dataset, version.dataset_id)
    assert dataset is not None
    collection = session.get(models.Collection, dataset.collection_id)
    assert collection is not None
    rows = session.exec(
        select(models.Entry.path, models.Blob.b3, models.Blob.sha256, models.Blob.size)
        .join(models.Blob, col(models.Blob.b3) == col(models.Entry.blob_b3))
        .where(models.Entry.version_id == version.id)
    ).all()
    entries = sorted((ManifestEntry(p, b, s, n) for p, b, s, n in rows), key=lambda e: e.path)
    pieces = list(
        render(
            dataset=dataset_document(collection.name, dataset),
            number=version.number,
            created=version.created_at,
            message=version.message,
            previous_b3=version.previous_b3,
            entries=entries,
        )
    )
    return f"{dataset.pid}@v{version.number}", pieces
