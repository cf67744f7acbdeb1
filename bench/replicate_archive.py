"""The archive side of ``bench/replicate.py``: archives, workers run dry, writes counted.

A benchmark may look behind the archive's back where a test may not: the counting
proxy below wraps one tier's ``begin_put`` in this process only, so every promote
(one object written: a PUT on S3, a file on a local tier) is counted without a line
of the archive changing. Queue depth and failures are read from the catalog.
"""

from __future__ import annotations

import os
import resource
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlmodel import col

from archive.catalog import models
from archive.catalog.models import EventOutcome, EventType, ReplicaState
from archive.config import Settings, TierConfig
from archive.node import ArchiveNode
from archive.worker import Worker
from tiers import ObjectInfo, Tier

DRAIN_TIMEOUT = 3600.0
"""A replication that has not emptied its queue after this long is reported as stuck."""


def open_archive(data_dir: Path, tiers: dict[str, TierConfig], **settings: Any) -> ArchiveNode:
    """An archive on ``data_dir`` (SQLite catalog there) with exactly these tiers."""
    return ArchiveNode.open(Settings(data_dir=data_dir, tiers=tiers, hot_tier="hot", **settings))


def queue_depth(node: ArchiveNode, tier: str) -> int:
    """Replica rows of ``tier`` not yet present (pending or being copied)."""
    with node.session() as session:
        tier_id = node.tier_ids(session=session)[tier]
        R = models.Replica
        return int(
            session.execute(
                sa.select(sa.func.count())
                .select_from(R)
                .where(col(R.tier_id) == tier_id, col(R.state) != ReplicaState.PRESENT)
            ).scalar_one()
        )


def failures(node: ArchiveNode, tier: str) -> list[str]:
    """The errors of failed replication attempts to ``tier`` (retried by the worker)."""
    E = models.Event
    with node.session() as session:
        rows = session.execute(
            sa.select(col(E.detail)).where(
                col(E.type) == EventType.REPLICATION,
                col(E.outcome) == EventOutcome.FAILURE,
                col(E.tier) == tier,
            )
        ).all()
    return [str(row[0].get("error", row[0])) for row in rows]


def cpu_seconds(who: int = resource.RUSAGE_SELF) -> float:
    """User + system CPU time of this process (all its threads), or with
    ``RUSAGE_CHILDREN`` of its children that were waited for."""
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Drained:
    """One replication run to ``tier``: from the first pass until its queue was empty."""

    tier: str
    seconds: float
    cpu_seconds: float
    passes: int
    copied: int
    failures: list[str] = field(default_factory=list)


def drain(node: ArchiveNode, tier: str, *, workers: int = 1) -> Drained:
    """Run ``Worker(node).run_once()`` passes (in ``workers`` threads) until the queue of
    ``tier`` is empty; the clock covers exactly that.

    Raises:
        RuntimeError: the queue did not empty within ``DRAIN_TIMEOUT`` (a tier failing
            for good; the errors are in the message).
    """
    deadline = time.monotonic() + DRAIN_TIMEOUT
    totals: Counter[str] = Counter()
    passes = 0
    lock = threading.Lock()

    def work() -> None:
        nonlocal passes
        worker = Worker(node)
        while True:
            counts = worker.run_once()
            with lock:
                totals.update(counts)
                passes += 1
            if counts.get("replicate", 0):
                continue
            if queue_depth(node, tier) == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"replication to {tier} stuck: {failures(node, tier)[-3:]}")
            time.sleep(0.05)  # another thread holds the last rows, or the tier backs off

    cpu0, started = cpu_seconds(), time.perf_counter()
    if workers == 1:
        work()
    else:
        errors: list[BaseException] = []

        def guarded() -> None:
            try:
                work()
            except BaseException as exc:  # re-raised in the main thread
                errors.append(exc)

        threads = [threading.Thread(target=guarded) for _ in range(workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
    seconds = time.perf_counter() - started
    return Drained(
        tier,
        seconds,
        cpu_seconds() - cpu0,
        passes,
        totals["replicate"],
        failures(node, tier),
    )


class PutCounter:
    """Counts the writes of one tier: ``begin_put`` calls, promotes and bytes promoted.

    Installed on the tier instance (``tier.begin_put = counter.begin_put``), so the
    tier's own ``put`` (which calls ``self.begin_put``) is counted as well.
    """

    def __init__(self, tier: Tier) -> None:
        self._begin = tier.begin_put
        self.begun = 0
        self.promotes = 0
        self.promoted_bytes = 0
        self.keys: Counter[str] = Counter()
        self._lock = threading.Lock()
        tier.begin_put = self.begin_put  # type: ignore[method-assign]

    def begin_put(self) -> _CountedUpload:
        with self._lock:
            self.begun += 1
        return _CountedUpload(self._begin(), self)

    def _promoted(self, key: str, size: int) -> None:
        with self._lock:
            self.promotes += 1
            self.promoted_bytes += size
            self.keys[key.split("/", 1)[0]] += 1


class _CountedUpload:
    def __init__(self, upload: Any, counter: PutCounter) -> None:
        self._upload = upload
        self._counter = counter

    def write(self, data: bytes | memoryview) -> None:
        self._upload.write(data)

    def promote(self, key: str, *, expect_b3: str | None = None) -> ObjectInfo:
        size = self._upload.size
        self._counter._promoted(key, size)  # counted when asked: a refused write is a write too
        info: ObjectInfo = self._upload.promote(key, expect_b3=expect_b3)
        return info

    def abort(self) -> None:
        self._upload.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._upload, name)

    def __enter__(self) -> _CountedUpload:
        return self

    def __exit__(self, *exc: object) -> None:
        self._upload.abort()


def list_objects(tier: Tier) -> Counter[str]:
    """Objects on the tier by first key segment (``blobs``, ``packs``), by listing it."""
    found: Counter[str] = Counter()
    for info in tier.list(""):
        found[info.key.split("/", 1)[0]] += 1
    return found


def stored_files(tier_root: Path, prefix: str = "blobs") -> list[tuple[Path, str]]:
    """(file, key) of every object under ``prefix`` in a local tier folder, key order."""
    out: list[tuple[Path, str]] = []
    for folder, dirs, names in os.walk(tier_root / prefix):
        dirs.sort()
        for name in sorted(names):
            path = Path(folder) / name
            out.append((path, path.relative_to(tier_root).as_posix()))
    return out


class S3Calls:
    """Requests a boto3 client sends, by operation: count and time until the response
    headers (botocore's ``before-call``/``after-call`` events; a body read later, as a
    GetObject's, is not in the time)."""

    def __init__(self, client: Any) -> None:
        self.count: Counter[str] = Counter()
        self.seconds: dict[str, float] = defaultdict(float)
        self._started = threading.local()
        client.meta.events.register("before-call.s3.*", self._before)
        client.meta.events.register("after-call.s3.*", self._after)

    def _before(self, model: Any, **_: Any) -> None:
        self._started.at = time.perf_counter()

    def _after(self, model: Any, **_: Any) -> None:
        self.count[model.name] += 1
        self.seconds[model.name] += time.perf_counter() - getattr(self._started, "at", 0.0)

    def snapshot(self) -> dict[str, dict[str, float]]:
        return {
            op: {"requests": self.count[op], "seconds": round(self.seconds[op], 3)}
            for op in sorted(self.count)
        }

    def reset(self) -> None:
        self.count.clear()
        self.seconds.clear()


def child_cpu_seconds(names: Sequence[str] = ("weed",)) -> float:
    """CPU time (user + system) of this process's children with one of these names:
    the object store's own share of the work."""
    ticks = os.sysconf("SC_CLK_TCK")
    me = os.getpid()
    total = 0.0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        if comm in names and int(fields[1]) == me:
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks
