"""A version's entries one page at a time, with the copies of each entry's blob.

A version may hold millions of files, so a listing is paged by key (keyset
pagination): each page starts strictly after the last path of the previous one.
Unlike ``OFFSET``, this costs the same on the last page as on the first and stays
stable while other versions are committed. The copies are looked up for the
blobs of the page only, never for the whole version.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlmodel import Session, col, select

from archive.catalog import models
from archive.datasets import EntryView


@dataclass(frozen=True)
class ReplicaView:
    tier: str
    state: str
    last_verified_at: dt.datetime | None
    pack_id: str | None = None


@dataclass(frozen=True)
class EntryPage:
    entries: list[EntryView]
    replicas: dict[str, list[ReplicaView]]
    """Copies of each blob of the page, by BLAKE3."""
    next_after: str | None
    """The cursor for the next page (the last path here), or None on the last page."""


def entry_page(
    version_id: int,
    *,
    session: Session,
    after: str | None = None,
    prefix: str = "",
    limit: int = 100,
) -> EntryPage:
    """Up to ``limit`` entries whose path sorts after ``after`` and starts with ``prefix``.

    The prefix is compared exactly (``LIKE`` would ignore case on SQLite).
    """
    stmt = (
        select(col(models.Entry.path), models.Blob)
        .join(models.Blob, col(models.Blob.b3) == col(models.Entry.blob_b3))
        .where(col(models.Entry.version_id) == version_id)
        .order_by(col(models.Entry.path))
        .limit(limit + 1)
    )
    if after is not None:
        stmt = stmt.where(col(models.Entry.path) > after)
    if prefix:
        stmt = stmt.where(
            col(models.Entry.path) >= prefix,
            sa.func.substr(models.Entry.path, 1, len(prefix)) == prefix,
        )
    rows = [
        EntryView(path, blob.b3, blob.sha256, blob.size, blob.stored_size, blob.codec)
        for path, blob in session.exec(stmt)
    ]
    more = len(rows) > limit
    entries = rows[:limit]
    return EntryPage(
        entries=entries,
        replicas=replicas_of_blobs([e.b3 for e in entries], session=session),
        next_after=entries[-1].path if more else None,
    )


def replicas_of_blobs(b3s: Sequence[str], *, session: Session) -> dict[str, list[ReplicaView]]:
    """Every copy of each blob, loose or inside a pack, in tier-name order."""
    out: dict[str, list[ReplicaView]] = defaultdict(list)
    wanted = sorted(set(b3s))
    for i in range(0, len(wanted), 900):
        batch = wanted[i : i + 900]
        loose = session.exec(
            select(models.Replica, col(models.Tier.name))
            .join(models.Tier, col(models.Tier.id) == col(models.Replica.tier_id))
            .where(col(models.Replica.blob_b3).in_(batch))
        ).all()
        packed = session.exec(
            select(col(models.PackMember.blob_b3), models.Replica, col(models.Tier.name))
            .join(models.Replica, col(models.Replica.pack_id) == col(models.PackMember.pack_id))
            .join(models.Tier, col(models.Tier.id) == col(models.Replica.tier_id))
            .where(col(models.PackMember.blob_b3).in_(batch))
        ).all()
        for replica, tier in loose:
            if replica.blob_b3 is not None:
                out[replica.blob_b3].append(
                    ReplicaView(tier, replica.state, replica.last_verified_at)
                )
        for b3, replica, tier in packed:
            out[b3].append(
                ReplicaView(tier, replica.state, replica.last_verified_at, replica.pack_id)
            )
    for copies in out.values():
        copies.sort(key=lambda r: (r.tier, r.pack_id or ""))
    return dict(out)
