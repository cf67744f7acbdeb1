"""The worker loop that sends version manifests to partner nodes (``permafrost.worker_loops``).

Blobs reach a partner as ordinary replicas; a version's manifest (its metadata and
every entry, DESIGN section 3) goes too, so the partner's copy is enough to rebuild
the catalog. Manifests have no replica rows: what was sent is what the PREMIS
``replication`` events of ``manifest`` objects on that tier say. Each pass sends at
most :data:`BATCH` manifests per partner tier, of the collections whose policy
targets that tier; sending again is harmless (the partner answers 200 for the same
bytes), so a pass killed half-way loses nothing.
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
from federation.tier import FederationTier
from tiers import TierError

AGENT = "permafrost/federation"
BATCH = 100
log = logging.getLogger("permafrost.federation")


def manifest_step(worker: Worker) -> int:
    """Send manifests that partner tiers do not hold yet; returns how many were sent."""
    node = worker.node
    sent = 0
    for name, tier in node.tiers.items():
        if not isinstance(tier, FederationTier) or not worker.tier_usable(name):
            continue
        for key, b3 in _unsent(worker, name):
            try:
                with node.hot.open(key) as stream:
                    tier.put(key, io.BytesIO(stream.read()), expect_b3=b3)
            except TierError as exc:
                log.warning("manifest %s not sent to %s: %s", key, name, exc)
                worker.back_off(name, 1)
                break
            with node.session() as session:
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


def _unsent(worker: Worker, tier: str) -> list[tuple[str, str]]:
    """(manifest key, BLAKE3) of versions whose collection wants ``tier``, not yet sent."""
    E, V, D, C = models.Event, models.Version, models.Dataset, models.Collection
    with worker.node.session() as session:
        wanted = [
            c.id
            for c in session.exec(select(C)).all()
            if c.id is not None and tier in targets_of(worker.node, c)
        ]
        sent = sa.select(col(E.object_id)).where(
            col(E.type) == EventType.REPLICATION,
            col(E.object_type) == "manifest",
            col(E.tier) == tier,
            col(E.outcome) == EventOutcome.SUCCESS,
        )
        rows = session.execute(
            sa.select(col(V.manifest_key), col(V.manifest_b3))
            .join(D, col(D.id) == col(V.dataset_id))
            .where(col(D.collection_id).in_(wanted), col(V.manifest_key).not_in(sent))
            .order_by(col(V.id))
            .limit(BATCH)
        ).all()
    return [(key, b3) for key, b3 in rows]
