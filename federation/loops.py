"""The worker loop that sends version manifests to partner nodes (``permafrost.worker_loops``).

Blobs reach a partner as ordinary replicas; a version's manifest (its metadata and
every entry, DESIGN section 3) goes too, so the partner's copy is enough to rebuild
the catalog. Each manifest sent is recorded as a
:class:`~archive.catalog.models.ManifestCopy` row (and a PREMIS ``replication``
event), which the fixity engine then audits and repairs like any other copy
(:mod:`fixity.manifest_copies`). Each pass sends at most :data:`BATCH` manifests per
partner tier, of the collections whose policy targets that tier; sending again is
harmless (the partner answers 200 for the same bytes), so a pass killed half-way
loses nothing.
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
        for version_id, key, b3 in _unsent(worker, name):
            try:
                with node.hot.open(key) as stream:
                    tier.put(key, io.BytesIO(stream.read()), expect_b3=b3)
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
    with worker.node.session() as session:
        tier_id = worker.node.tier_ids(session=session)[tier]
        wanted = [
            c.id
            for c in session.exec(select(C)).all()
            if c.id is not None and tier in targets_of(worker.node, c)
        ]
        held = sa.exists().where(col(M.version_id) == col(V.id), col(M.tier_id) == tier_id)
        rows = session.execute(
            sa.select(col(V.id), col(V.manifest_key), col(V.manifest_b3))
            .join(D, col(D.id) == col(V.dataset_id))
            .where(col(D.collection_id).in_(wanted), ~held)
            .order_by(col(V.id))
            .limit(BATCH)
        ).all()
    return [(version_id, key, b3) for version_id, key, b3 in rows]
