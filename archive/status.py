"""How far the archive is from what its policies ask: per version, per tier, and overall.

A version is *preserved* when every target tier of its collection's policy holds a
present copy of each of its blobs and every such copy passed a verification (a
read-back at copy time, or an audit).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from archive.blobstore import present_blobs
from archive.catalog import models
from archive.catalog.models import ReplicaState
from archive.node import ArchiveNode
from archive.reachability import unreachable_tiers
from archive.replication import targets_of


@dataclass
class TierProgress:
    tier: str
    role: str
    total: int
    present: int = 0
    verified: int = 0

    @property
    def complete(self) -> bool:
        return self.present == self.total

    @property
    def proven(self) -> bool:
        return self.verified == self.total


@dataclass
class VersionStatus:
    tiers: list[TierProgress] = field(default_factory=list)

    @property
    def preserved(self) -> bool:
        return all(t.complete and t.proven for t in self.tiers)

    def summary(self) -> str:
        """``hot 1/1, cold 0/1: copying`` — copies complete per role, then the state."""
        roles: dict[str, list[TierProgress]] = {}
        for t in self.tiers:
            roles.setdefault(t.role, []).append(t)
        parts = [f"{role} {sum(t.complete for t in ts)}/{len(ts)}" for role, ts in roles.items()]
        if self.preserved:
            state = "preserved"
        elif all(t.complete for t in self.tiers):
            state = "awaiting first audit"
        else:
            state = "copying"
        return ", ".join(parts) + f": {state}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "preserved": self.preserved,
            "summary": self.summary(),
            "tiers": [
                {
                    "tier": t.tier,
                    "role": t.role,
                    "blobs": t.total,
                    "present": t.present,
                    "verified": t.verified,
                }
                for t in self.tiers
            ],
        }


def _blobs_on_tier(version_id: int, tier_id: int, *, session: Session) -> dict[str, bool]:
    """Blob -> verified?, for the version's blobs with a present copy on the tier."""
    E, R, PM = models.Entry, models.Replica, models.PackMember
    loose = (
        sa.select(col(E.blob_b3), col(R.last_verified_at))
        .join(R, col(R.blob_b3) == col(E.blob_b3))
        .where(
            col(E.version_id) == version_id,
            col(R.tier_id) == tier_id,
            col(R.state) == ReplicaState.PRESENT,
        )
    )
    packed = (
        sa.select(col(E.blob_b3), col(R.last_verified_at))
        .join(PM, col(PM.blob_b3) == col(E.blob_b3))
        .join(R, col(R.pack_id) == col(PM.pack_id))
        .where(
            col(E.version_id) == version_id,
            col(R.tier_id) == tier_id,
            col(R.state) == ReplicaState.PRESENT,
        )
    )
    found: dict[str, bool] = {}
    for stmt in (loose, packed):
        for b3, verified in session.execute(stmt):
            found[b3] = found.get(b3, False) or verified is not None
    return found


def version_status(
    node: ArchiveNode, version: models.Version, *, session: Session
) -> VersionStatus:
    dataset = session.get(models.Dataset, version.dataset_id)
    assert dataset is not None and version.id is not None
    collection = session.get(models.Collection, dataset.collection_id)
    assert collection is not None
    total = session.execute(
        sa.select(sa.func.count(sa.distinct(col(models.Entry.blob_b3)))).where(
            col(models.Entry.version_id) == version.id
        )
    ).scalar_one()
    ids = node.tier_ids(session=session)
    status = VersionStatus()
    for name in targets_of(node, collection):
        on_tier = _blobs_on_tier(version.id, ids[name], session=session)
        status.tiers.append(
            TierProgress(
                tier=name,
                role=node.settings.tiers[name].role,
                total=total,
                present=len(on_tier),
                verified=sum(on_tier.values()),
            )
        )
    return status


BAD_STATES = (ReplicaState.DAMAGED, ReplicaState.MISSING, ReplicaState.REPAIRING)


def versions_holding(b3: str, *, session: Session) -> list[str]:
    """``collection/dataset@vN`` of every version with an entry for the blob."""
    rows = session.execute(
        sa.select(col(models.Collection.name), col(models.Dataset.name), col(models.Version.number))
        .select_from(models.Entry)
        .join(models.Version, col(models.Version.id) == col(models.Entry.version_id))
        .join(models.Dataset, col(models.Dataset.id) == col(models.Version.dataset_id))
        .join(models.Collection, col(models.Collection.id) == col(models.Dataset.collection_id))
        .where(col(models.Entry.blob_b3) == b3)
        .distinct()
    )
    return sorted(f"{c}/{d}@v{n}" for c, d, n in rows)


def blobs_at_risk(*, session: Session) -> list[dict[str, Any]]:
    """Blobs with a copy that failed its audit (damaged, missing, being repaired).

    ``degraded``: a present copy remains, so a repair can restore the count of copies.
    ``lost``: no present copy remains anywhere; every version holding the blob is at
    risk. Derived from the replicas' states, so it is never stale.
    """
    R, PM = models.Replica, models.PackMember
    loose = sa.select(col(R.blob_b3)).where(
        col(R.state).in_(BAD_STATES), col(R.blob_b3).is_not(None)
    )
    packed = (
        sa.select(col(PM.blob_b3))
        .join(R, col(R.pack_id) == col(PM.pack_id))
        .where(col(R.state).in_(BAD_STATES))
    )
    candidates = {b for (b,) in session.execute(loose.union(packed)) if b}
    if not candidates:
        return []
    present = present_blobs(candidates, session=session)
    return [
        {
            "b3": b3,
            "state": "degraded" if b3 in present else "lost",
            "versions": versions_holding(b3, session=session),
        }
        for b3 in sorted(candidates)
    ]


def archive_status(node: ArchiveNode, *, session: Session) -> dict[str, Any]:
    """Replicas by tier and state, the work queue, and datasets preserved or not."""
    R, T = models.Replica, models.Tier
    by_tier: dict[str, dict[str, int]] = {}
    rows = session.execute(
        sa.select(col(T.name), col(R.state), sa.func.count())
        .join(T, col(T.id) == col(R.tier_id))
        .group_by(col(T.name), col(R.state))
    )
    for tier, state, count in rows:
        by_tier.setdefault(tier, {})[state] = count
    queued = [ReplicaState.PENDING, ReplicaState.COPYING]
    depth = session.execute(
        sa.select(sa.func.count()).select_from(R).where(col(R.state).in_(queued))
    ).scalar_one()
    oldest = session.execute(
        sa.select(sa.func.min(col(R.created_at))).where(col(R.state).in_(queued))
    ).scalar_one()
    datasets: list[dict[str, Any]] = []
    preserved = 0
    for coll_name, dataset in session.execute(
        sa.select(col(models.Collection.name), models.Dataset)
        .join(models.Dataset, col(models.Dataset.collection_id) == col(models.Collection.id))
        .order_by(col(models.Collection.name), col(models.Dataset.name))
    ):
        latest = session.exec(
            select(models.Version)
            .where(models.Version.dataset_id == dataset.id)
            .order_by(col(models.Version.number).desc())
        ).first()
        if latest is None:
            continue
        status = version_status(node, latest, session=session)
        preserved += status.preserved
        datasets.append(
            {"dataset": f"{coll_name}/{dataset.name}", "version": latest.number, **status.as_dict()}
        )
    risk = blobs_at_risk(session=session)
    lost = [{"b3": r["b3"], "versions": r["versions"]} for r in risk if r["state"] == "lost"]
    bad_manifests = session.execute(
        sa.select(col(models.Version.id)).where(
            col(models.Version.manifest_state) != ReplicaState.PRESENT
        )
    ).all()
    return {
        "integrity": {
            "lost": lost,
            "versions_at_risk": sorted({v for r in lost for v in r["versions"]}),
            "degraded": sum(r["state"] == "degraded" for r in risk),
            "manifests_damaged": len(bad_manifests),
        },
        "replicas": by_tier,
        "unreachable": {
            name: since.isoformat() for name, since in unreachable_tiers(session=session).items()
        },
        "queue": {"depth": depth, "oldest_pending": oldest.isoformat() if oldest else None},
        "datasets": {"preserved": preserved, "total": len(datasets), "items": datasets},
    }
