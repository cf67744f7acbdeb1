"""Where the copies of a version's blobs are, per tier, for display and status."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, select

from archive.catalog import models


def replicas_of_version(version_id: int, *, session: Session) -> dict[str, list[dict[str, Any]]]:
    """For each blob of the version: every copy (loose or in a pack) with tier and state."""
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    loose = session.exec(
        select(
            models.Entry.blob_b3,
            models.Tier.name,
            models.Replica.state,
            models.Replica.last_verified_at,
        )
        .join(models.Replica, models.Replica.blob_b3 == models.Entry.blob_b3)  # type: ignore[arg-type]
        .join(models.Tier, models.Tier.id == models.Replica.tier_id)  # type: ignore[arg-type]
        .where(models.Entry.version_id == version_id)
        .distinct()
    ).all()
    packed = session.execute(
        sa.select(  # type: ignore[call-overload]
            models.Entry.blob_b3,
            models.Tier.name,
            models.Replica.state,
            models.Replica.last_verified_at,
            models.PackMember.pack_id,
        )
        .join(models.PackMember, models.PackMember.blob_b3 == models.Entry.blob_b3)
        .join(models.Replica, models.Replica.pack_id == models.PackMember.pack_id)
        .join(models.Tier, models.Tier.id == models.Replica.tier_id)
        .where(models.Entry.version_id == version_id)
        .distinct()
    ).all()
    for b3, tier, state, verified in loose:
        out[b3].append({"tier": tier, "state": state, "last_verified_at": verified, "pack": None})
    for b3, tier, state, verified, pack_id in packed:
        out[b3].append(
            {"tier": tier, "state": state, "last_verified_at": verified, "pack": pack_id}
        )
    return dict(out)
