"""Workers: the same loops on a laptop and on a hundred machines (DESIGN section 5).

A worker claims rows of the catalog with a lease (``SELECT ... FOR UPDATE SKIP
LOCKED`` on PostgreSQL; on SQLite every write transaction begins ``IMMEDIATE``, so
claims are serialised and no row is ever claimed twice), does the work with no
transaction open, then records the outcome only if it still holds the lease. A
worker that dies loses nothing: its rows become claimable again when the lease
expires, and every step is idempotent. A tier that fails is retried with
exponential backoff and jitter, and only that tier waits: the others go on.

Each loop is ``run_once()``-shaped: claim a bounded batch, do it, commit, return a
count; ``run()`` repeats until SIGTERM, finishing the item in hand first.

Loops of higher layers (the fixity auditors of ``fixity/``) are registered by name
through the ``permafrost.worker_loops`` entry point group: each names a callable
taking the :class:`Worker` and returning a count. This module never imports them,
so dependencies keep pointing down (``fixity`` -> ``archive``).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from importlib.metadata import entry_points
from typing import Any

import sqlalchemy as sa
from sqlmodel import col, select

from archive.catalog import models
from archive.catalog.models import EventOutcome, EventType, ReplicaState, RestoreState, utcnow
from archive.errors import PermafrostError
from archive.node import ArchiveNode
from archive.reachability import mark_reachable, mark_unreachable
from archive.replication import (
    AGENT,
    Claimed,
    copy_loose,
    copy_packed,
    plan,
    record_pack_copy,
    sources_of,
)
from archive.retrieval import Location
from tiers import TierError, TierUnavailable

log = logging.getLogger("permafrost.worker")

LOOPS = ("plan", "replicate", "restore")
PACK_CLAIM_LIMIT = 20_000
LOOP_ENTRY_POINTS = "permafrost.worker_loops"

LoopStep = Callable[["Worker"], int]
"""One pass of a registered loop: claim a bounded batch, do it, return a count."""


@cache
def registered_loops() -> dict[str, LoopStep]:
    """Loops that installed packages register under :data:`LOOP_ENTRY_POINTS`."""
    found: dict[str, LoopStep] = {}
    for point in entry_points(group=LOOP_ENTRY_POINTS):
        if point.name not in LOOPS:
            found[point.name] = point.load()
    return found


def known_loops() -> tuple[str, ...]:
    """The built-in loops, then the registered ones: what a worker runs by default."""
    return LOOPS + tuple(sorted(registered_loops()))


class Worker:
    def __init__(
        self, node: ArchiveNode, *, loops: Sequence[str] | None = None, owner: str = ""
    ) -> None:
        known = known_loops()
        loops = known if loops is None else loops
        unknown = set(loops) - set(known)
        if unknown:
            raise PermafrostError(f"unknown loops: {', '.join(sorted(unknown))} (known: {known})")
        self.node = node
        self.loops = tuple(loops)
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.stop = threading.Event()
        self._tier_wait: dict[str, float] = {}
        self._planned_since: dt.datetime | None = None
        self._last_full_plan = 0.0
        settings = node.settings
        self.lease = dt.timedelta(seconds=settings.lease_seconds)

    # -- scheduling ----------------------------------------------------------------
    def run(self, *, once: bool = False) -> dict[str, int]:
        """Run the loops until stopped (or one pass with ``once``); returns total counts."""
        totals: dict[str, int] = defaultdict(int)
        while not self.stop.is_set():
            counts = self.run_once()
            for loop, n in counts.items():
                totals[loop] += n
            if once:
                break
            if not any(counts.values()):
                self.stop.wait(self.node.settings.worker_poll_seconds)
        return dict(totals)

    def run_once(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for loop in self.loops:
            if self.stop.is_set():
                break
            if loop in LOOPS:
                counts[loop] = getattr(self, f"{loop}_once")()
            else:
                counts[loop] = registered_loops()[loop](self)
        return counts

    def _delay(self, failures: int) -> float:
        s = self.node.settings
        step: float = min(s.retry_max_seconds, s.retry_base_seconds * 2 ** min(failures, 20))
        return step * (
            0.5 + random.random()  # full jitter around the exponential step
        )

    def tier_usable(self, tier: str) -> bool:
        """False while ``tier`` is backing off after a failure."""
        return self._tier_wait.get(tier, 0.0) <= time.monotonic()

    def back_off(self, tier: str, failures: int) -> float:
        """Leave ``tier`` alone for a jittered exponential delay; returns the delay."""
        delay = self._delay(failures)
        self._tier_wait[tier] = time.monotonic() + delay
        return delay

    def _usable_tiers(self) -> list[str]:
        now = time.monotonic()
        return [name for name in self.node.tiers if self._tier_wait.get(name, 0.0) <= now]

    # -- plan ----------------------------------------------------------------------
    def plan_once(self) -> int:
        """Queue copies for what was committed since the last pass; everything at start
        and every ``plan_full_every_seconds`` (see that setting)."""
        settings = self.node.settings
        clock, started = time.monotonic(), utcnow()
        full = self._planned_since is None or (
            clock - self._last_full_plan >= settings.plan_full_every_seconds
        )
        with self.node.session() as session:
            added = plan(self.node, session=session, since=None if full else self._planned_since)
        self._planned_since = started - dt.timedelta(seconds=settings.lease_seconds)
        if full:
            self._last_full_plan = clock
        return added

    # -- replicate -------------------------------------------------------------------
    def _claim(self, *, small: bool, limit: int) -> list[tuple[int, str, int, int]]:
        """Lease up to ``limit`` claimable replica rows: (id, blob, tier_id, failures)."""
        node = self.node
        with node.session() as session:
            ids = node.tier_ids(session=session)
            threshold = node.settings.cold_pack_below
            packing = {
                ids[name]
                for name in self._usable_tiers()
                if node.settings.tiers[name].role == "cold" and threshold > 0
            }
            others = {ids[name] for name in self._usable_tiers()} - packing
            if not packing and (small or not others):
                return []
            now = utcnow()
            R, B = models.Replica, models.Blob
            claimable = sa.or_(
                sa.and_(
                    col(R.state) == ReplicaState.PENDING,
                    sa.or_(col(R.lease_expires_at).is_(None), col(R.lease_expires_at) <= now),
                ),
                sa.and_(col(R.state) == ReplicaState.COPYING, col(R.lease_expires_at) <= now),
            )
            if small:  # small blobs bound for cold tiers: they travel in packs
                which = sa.and_(col(R.tier_id).in_(packing), col(B.stored_size) < threshold)
            else:
                which = sa.or_(
                    col(R.tier_id).in_(others),
                    sa.and_(col(R.tier_id).in_(packing), col(B.stored_size) >= threshold),
                )
            stmt = (
                sa.select(col(R.id), col(R.blob_b3), col(R.tier_id), col(R.failures))
                .join(B, col(B.b3) == col(R.blob_b3))
                .where(claimable, which)
                .order_by(col(R.id))
                .limit(limit)
            )
            if session.get_bind().dialect.name == "postgresql":
                stmt = stmt.with_for_update(skip_locked=True, of=R)
            rows: list[tuple[int, str, int, int]] = [
                (r[0], r[1], r[2], r[3]) for r in session.execute(stmt).all()
            ]
            if rows:
                session.execute(
                    sa.update(R)
                    .where(col(R.id).in_([r[0] for r in rows]))
                    .values(
                        state=ReplicaState.COPYING,
                        lease_owner=self.owner,
                        lease_expires_at=now + self.lease,
                        updated_at=now,
                    )
                )
        return rows

    def replicate_once(self) -> int:
        done = self._replicate_packed()
        rows = self._claim(small=False, limit=self.node.settings.worker_batch)
        names = self._tier_names()
        threads = min(self.node.settings.replicate_threads, len(rows))
        if threads <= 1:
            return done + sum(self._copy_one(row, names) for row in rows)
        # Several copies at once: one blob's read-back overlaps another's upload, and a
        # slow tier holds up one thread, not the batch. Each row is leased to us alone.
        with ThreadPoolExecutor(threads, thread_name_prefix="replicate") as pool:
            return done + sum(pool.map(lambda row: self._copy_one(row, names), rows))

    def _copy_one(self, row: tuple[int, str, int, int], names: dict[int, str]) -> int:
        """Copy one claimed loose blob; 1 when its copy is now present, else 0."""
        replica_id, b3, tier_id, failures = row
        tier = names[tier_id]
        if self.stop.is_set() or self._tier_wait.get(tier, 0.0) > time.monotonic():
            self._release([replica_id], delay=0.0)
            return 0
        with self.node.session() as session:
            blob = session.get(models.Blob, b3)
            assert blob is not None
            sources = sources_of(b3, tier, session=session)
        try:
            copied = copy_loose(self.node, Claimed(replica_id, blob, tier), sources)
        except (TierError, PermafrostError) as exc:
            self._failed([replica_id], failures, tier, b3, exc)
            return 0
        self._succeeded([replica_id], tier, [b3], verified=copied.verified, key=copied.key)
        return 1

    def _replicate_packed(self) -> int:
        rows = self._claim(small=True, limit=PACK_CLAIM_LIMIT)
        if not rows:
            return 0
        names = self._tier_names()
        by_tier: dict[int, list[tuple[int, str, int, int]]] = defaultdict(list)
        for row in rows:
            by_tier[row[2]].append(row)
        done = 0
        pack_size = self.node.settings.cold_pack_size
        for tier_id, tier_rows in by_tier.items():
            tier = names[tier_id]
            start = 0
            while start < len(tier_rows):
                with self.node.session() as session:
                    blobs: list[models.Blob] = []
                    size = 0
                    for _, b3, _, _ in tier_rows[start:]:
                        blob = session.get(models.Blob, b3)
                        assert blob is not None
                        blobs.append(blob)
                        size += blob.stored_size + 1024
                        if size >= pack_size:
                            break
                    sources: dict[str, list[Location]] = {
                        b.b3: sources_of(b.b3, tier, session=session) for b in blobs
                    }
                batch = tier_rows[start : start + len(blobs)]
                start += len(blobs)
                replica_ids = {b3: rid for rid, b3, _, _ in batch}
                if self.stop.is_set() or self._tier_wait.get(tier, 0.0) > time.monotonic():
                    self._release(list(replica_ids.values()), delay=0.0)
                    continue
                try:
                    pack = copy_packed(self.node, tier, blobs, sources)
                except (TierError, PermafrostError) as exc:
                    self._failed(list(replica_ids.values()), batch[0][3], tier, "pack", exc)
                    continue
                packed = {m.digest.b3 for m in pack.members} if pack else set()
                if pack is not None:
                    with self.node.session() as session:
                        record_pack_copy(
                            pack,
                            {b: r for b, r in replica_ids.items() if b in packed},
                            tier_id,
                            tier,
                            session=session,
                        )
                    done += len(packed)
                left = [r for b, r in replica_ids.items() if b not in packed]
                if left:
                    self._release(left, delay=self._delay(1))
        return done

    def _tier_names(self) -> dict[int, str]:
        with self.node.session() as session:
            return {tid: name for name, tid in self.node.tier_ids(session=session).items()}

    def _succeeded(
        self,
        ids: list[int],
        tier: str,
        b3s: list[str],
        *,
        verified: str | None,
        key: str | None = None,
    ) -> None:
        now = utcnow()
        R = models.Replica
        renamed = {} if key is None else {"key": key}
        with self.node.session() as session:
            result = session.execute(
                sa.update(R)
                .where(col(R.id).in_(ids), col(R.lease_owner) == self.owner)
                .values(
                    state=ReplicaState.PRESENT,
                    lease_owner=None,
                    lease_expires_at=None,
                    failures=0,
                    # Cold tiers: the digest the tier computed over the bytes it wrote
                    # is the first verification; audits (issue 4) re-check later.
                    last_verified_at=now,
                    updated_at=now,
                    **renamed,
                )
            )
            if result.rowcount == 0:  # type: ignore[attr-defined]
                return  # our lease expired and another worker took the row over
            mark_reachable(tier, session=session)
            for b3 in b3s:
                session.add(
                    models.Event(
                        type=EventType.REPLICATION,
                        object_type="blob",
                        object_id=b3,
                        tier=tier,
                        outcome=EventOutcome.SUCCESS,
                        detail={"verified": verified or "write-time digest"},
                        agent=AGENT,
                    )
                )

    def _failed(self, ids: list[int], failures: int, tier: str, what: str, exc: Exception) -> None:
        delay = self._delay(failures)
        target_down = isinstance(exc, TierError) and (exc.tier in (tier, None))
        if target_down:
            self._tier_wait[tier] = time.monotonic() + delay
        log.warning("replication of %s to %s failed (retry in %.0fs): %s", what, tier, delay, exc)
        self._release(ids, delay=delay, failed=True)
        with self.node.session() as session:
            if target_down and isinstance(exc, TierUnavailable):
                mark_unreachable(tier, utcnow(), session=session)
            session.add(
                models.Event(
                    type=EventType.REPLICATION,
                    object_type="blob",
                    object_id=what,
                    tier=tier,
                    outcome=EventOutcome.FAILURE,
                    detail={
                        "error": str(exc),
                        "retry_in_seconds": round(delay, 1),
                        "rows": len(ids),
                    },
                    agent=AGENT,
                )
            )

    def _release(self, ids: list[int], *, delay: float, failed: bool = False) -> None:
        now = utcnow()
        R = models.Replica
        values: dict[str, Any] = {
            "state": ReplicaState.PENDING,
            "lease_owner": None,
            "lease_expires_at": now + dt.timedelta(seconds=delay) if delay else None,
            "updated_at": now,
        }
        if failed:
            values["failures"] = col(R.failures) + 1
        with self.node.session() as session:
            session.execute(
                sa.update(R)
                .where(col(R.id).in_(ids), col(R.lease_owner) == self.owner)
                .values(**values)
            )

    # -- restore ---------------------------------------------------------------------
    def restore_once(self) -> int:
        """Follow restores in flight; mark them ready (or expired) as the tier reports."""
        node = self.node
        with node.session() as session:
            names = {tid: name for name, tid in node.tier_ids(session=session).items()}
            active = session.exec(
                select(models.RestoreRequest).where(
                    col(models.RestoreRequest.state).in_(
                        [RestoreState.REQUESTED, RestoreState.IN_PROGRESS, RestoreState.READY]
                    )
                )
            ).all()
            changed = 0
            for request in active:
                tier = node.tiers.get(names[request.tier_id])
                status_of = getattr(tier, "restore_status", None)
                if tier is None or status_of is None:
                    continue
                try:
                    status = status_of(request.key)
                except TierError:
                    continue
                new = {
                    "ready": RestoreState.READY,
                    "in-progress": RestoreState.IN_PROGRESS,
                    "not-started": RestoreState.EXPIRED
                    if request.state == RestoreState.READY
                    else RestoreState.REQUESTED,
                    "not-needed": RestoreState.READY,
                }.get(status.status, request.state)
                if new != request.state:
                    request.state = new
                    request.ready_at = status.ready_at or request.ready_at
                    request.expires_at = status.expires_at or request.expires_at
                    request.updated_at = utcnow()
                    session.add(request)
                    if new == RestoreState.READY:
                        session.add(
                            models.Event(
                                type=EventType.RESTORE,
                                object_type="blob",
                                object_id=request.blob_b3 or request.key,
                                tier=tier.name,
                                outcome=EventOutcome.SUCCESS,
                                detail={"key": request.key, "speed": request.speed},
                                agent="permafrost/restore",
                            )
                        )
                    changed += 1
        return changed
