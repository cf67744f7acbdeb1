"""The worker loop that sends version manifests to every tier a collection targets
(``permafrost.worker_loops`` entry ``manifests``).

Blobs reach cold tiers, partner buckets and partner nodes as replicas; a version's
manifest (its metadata and every entry, DESIGN section 3) must go too, so that any
one tier is enough to rebuild the catalog (``permafrost catalog rebuild --from
TIER``): losing the hot tier and the database together must not lose the archive.
Each manifest sent is recorded as a :class:`~archive.catalog.models.ManifestCopy`
row (and a PREMIS ``replication`` event), which the fixity engine audits and
repairs like any other copy (:mod:`fixity.manifest_copies`).

Each pass sends at most :data:`BATCH` manifests per tier. Sending again is harmless:
a partner node answers 200 for the same bytes, and a write-once tier that already
holds the key (a pass killed between the write and its row) gets its row now; the
copy's first audit proves what it holds, and repair replaces it if it is wrong.
"""

from __future__ import annotations

import io
import logging

import sqlalchemy as sa
from sqlmodel import col, select

from archive.catalog import models
from archive.catalog.models import EventOutcome, EventType
from archive.replication import targets_of
from archive.worker import Worker
from tiers import ObjectExists, TierError

AGENT = "permafrost/replication"
BATCH = 100
log = logging.getLogger("permafrost.replication")


def manifest_step(worker: Worker) -> int:
    """Send manifests that target tiers do not hold yet; returns how many were sent."""
    node = worker.node
    sent = 0
    for name, tier in node.tiers.items():
        if name == node.settings.hot_tier or not worker.tier_usable(name):
            continue
        for version_id, key, b3 in _unsent(worker, name):
            try:
                with node.hot.open(key) as stream:
                    data = stream.read()
                try:
                    tier.put(key, io.BytesIO(data), expect_b3=b3)
                except ObjectExists:
                    log.info(
                        "manifest %s already on %s: recorded, its audit will prove it", key, name
                    )
            except TierError as exc:
                log.warning("manifest %s not sent to %s: %s", key, name, exc)
                worker.back_off(name, 1)
                break
            with node.session() as session:
                tier_id = node.tier_ids(session=session)[name]
                session.add(models.ManifestCopy(version_id=version_id, tier_id=tier_id, key=key))
                session.add(
                    models.Event(
                        type=EventType.REPLICATION,
                        object_type="manifest",
                        object_id=key,
                        tier=name,
                        outcome=EventOutcome.SUCCESS,
                        detail={"b3": b3},
                        agent=AGENT,
                    )
                )
            sent += 1
    return sent


def _unsent(worker: Worker, tier: str) -> list[tuple[int, str, str]]:
    """(version id, manifest key, BLAKE3) of versions whose collection wants ``tier`` and
    whose manifest has no copy there yet."""
    M, V, D, C = models.ManifestCopy, models.Version, models.Dataset, models.Collection
    with worker.node.reading() as session:
        tier_id = worker.node.tier_ids(session=session)[tier]
        wanted = [
            c.id
            for c in session.exec(select(C)).all()
            if c.id is not None and tier in targets_of(worker.node, c)
        ]
        if not wanted:
            return []
        held = sa.exists().where(col(M.version_id) == col(V.id), col(M.tier_id) == tier_id)
        rows = session.execute(
            sa.select(col(V.id), col(V.manifest_key), col(V.manifest_b3))
            .join(D, col(D.id) == col(V.dataset_id))
            .where(col(D.collection_id).in_(wanted), ~held)
            .order_by(col(V.id))
            .limit(BATCH)
        ).all()
    return [(version_id, key, b3) for version_id, key, b3 in rows]
