"""The preservation history of a dataset: every PREMIS event about its objects.

A dataset's objects are its versions (ingest events name them ``<pid>@vN``), their
manifests, the blobs its entries point at, and the packs holding those blobs. Events
are queried with subqueries, so a dataset of a million files costs one query.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col

from archive.catalog import models


def dataset_events(
    dataset: models.Dataset, *, session: Session, limit: int | None = None
) -> list[models.Event]:
    """Events about the dataset's objects, oldest first."""
    E, V, En, PM = models.Event, models.Version, models.Entry, models.PackMember
    versions = sa.select(col(V.id)).where(col(V.dataset_id) == dataset.id)
    blobs = sa.select(col(En.blob_b3)).where(col(En.version_id).in_(versions))
    packs = sa.select(col(PM.pack_id)).where(col(PM.blob_b3).in_(blobs))
    prefix = f"{dataset.pid}@v"
    stmt = (
        sa.select(E)
        .where(
            sa.or_(
                sa.and_(col(E.object_type) == "blob", col(E.object_id).in_(blobs)),
                sa.and_(col(E.object_type) == "pack", col(E.object_id).in_(packs)),
                sa.and_(
                    col(E.object_type).in_(["version", "manifest"]),
                    col(E.object_id).startswith(prefix, autoescape=True),
                ),
                sa.and_(col(E.object_type) == "dataset", col(E.object_id) == dataset.pid),
            )
        )
        .order_by(col(E.created_at), col(E.id))
    )
    if limit is not None:
        stmt = stmt.limit(limit)
    return list(session.execute(stmt).scalars())


def event_dict(event: models.Event) -> dict[str, Any]:
    return {
        "id": event.id,
        "type": event.type,
        "object_type": event.object_type,
        "object_id": event.object_id,
        "tier": event.tier,
        "outcome": event.outcome,
        "detail": event.detail,
        "agent": event.agent,
        "time": event.created_at.isoformat(),
    }
