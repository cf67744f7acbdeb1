"""Ingest: a folder on disk becomes a new, immutable dataset version.

1. Scan and validate the whole tree (archive.scan); refuse it whole on any problem.
   This and starting the encoding of small files need no catalog
   (archive.ingest_start): the CLI does them before it opens one.
2. Encode every file in one read (archive.encoding): small files in worker processes
   (archive.encode_pool; on threads below PROCESSES_FROM files) into packs, large
   files through the streaming lanes as loose blobs. Content the catalog already
   holds is not stored again. A large file whose path and size match the previous
   version is first hashed alone (BLAKE3, cheap): if unchanged it is never compressed
   or written.
3. Stored bytes are durable and recorded before the version is committed
   (archive.blobstore), so a crash leaves no visible version and a rerun resumes.
   A pack is recorded in the background once sealed (at most PACK_MEMBERS members),
   while the next one fills.
4. Commit the version and its hash-chained manifest in one transaction
   (archive.datasets.commit_version), which checks the blobs this ingest packed per
   pack and every other blob on its own.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import blake3
import sqlalchemy as sa

from archive.blobstore import BlobSink, present_blobs
from archive.datasets import (
    DatasetRef,
    NewEntry,
    PackedHere,
    commit_version,
    get_dataset,
    get_version,
    iter_entries,
)
from archive.encode_pool import EncodeAhead, WorkerDied
from archive.encode_worker import Encoded, pays
from archive.encoding import CHUNK, BlobDigest, Encoder
from archive.errors import NotFound, UnsupportedFile
from archive.ingest_start import GROUP_FILES, StartedIngest, begin_ingest, encode_threads
from archive.node import ArchiveNode
from archive.replication import plan
from archive.scan import SourceFile

SAMPLE = 1024 * 1024
WINDOW_FILES = 64
_In = TypeVar("_In")
_Out = TypeVar("_Out")
BATCH_BYTES = 32 * 1024 * 1024
#: Small files stored per presence query: the catalog answers 900 addresses a query
#: (SQLite's parameter limit, archive.blobstore); 512 cost 40 % more per address.
BATCH_FILES = 900
#: The open pack is sealed when this many small files are left: the last pack holds
#: at most these (20,000 files: 0.44 s of recording after the last file became 0.1 s).
TAIL_FILES = 512
_Encoded = tuple[SourceFile, BlobDigest, bytes]


class IngestProgress(Protocol):
    def started(self, files: int, total_bytes: int) -> None: ...

    def advanced(self, files: int, nbytes: int) -> None: ...


@dataclass
class IngestReport:
    dataset: str
    version: int
    created: bool
    files: int = 0
    bytes: int = 0
    new_blobs: int = 0
    new_bytes: int = 0
    stored_bytes: int = 0
    deduplicated: int = 0
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class _Prior:
    b3: str
    sha256: str
    size: int
    stored_size: int
    codec: str


def _previous_entries(node: ArchiveNode, ref: DatasetRef) -> dict[str, _Prior]:
    with node.reading() as session:
        try:
            dataset = get_dataset(ref.collection, ref.dataset, session=session)
            version = get_version(dataset, None, session=session)
        except NotFound:
            return {}
        assert version.id is not None
        return {
            e.path: _Prior(e.b3, e.sha256, e.size, e.stored_size, e.codec)
            for e in iter_entries(version.id, session=session)
        }


class _Ingest:
    def __init__(self, node: ArchiveNode, progress: IngestProgress | None) -> None:
        self.node = node
        self.progress = progress
        settings = node.settings
        self.level = settings.zstd_level
        with node.reading() as session:
            tier_id = node.tier_ids(session=session)[settings.hot_tier]
        self.sink = BlobSink(node.hot, tier_id, node.engine, settings.pack_size)
        self.threads = encode_threads(settings)
        self._local = threading.local()
        self.digests: dict[str, BlobDigest] = {}
        self.deduplicated = 0

    def _encoder(self) -> Encoder:
        enc: Encoder | None = getattr(self._local, "encoder", None)
        if enc is None:
            enc = self._local.encoder = Encoder(self.level, threads=self.threads)
        return enc

    def _advance(self, files: int, nbytes: int) -> None:
        if self.progress is not None:
            self.progress.advanced(files, nbytes)

    # -- small files: whole in memory, packed ---------------------------------------
    def _read_small(self, f: SourceFile) -> _Encoded:
        return _decoded(f, self._encoder().encode_file(f.abspath, f.size))

    def _read_group(self, group: list[SourceFile]) -> list[_Encoded]:
        return [self._read_small(f) for f in group]

    def _encoded_groups(self, begun: StartedIngest) -> Iterator[list[_Encoded]]:
        groups = begun.groups
        if begun.ahead is not None:
            with begun.ahead:
                done = yield from self._in_processes(begun.ahead)
            groups = groups[done:]  # a worker that never answered: threads go on
        # Threads: one fewer than cores, since the main thread packs and records what
        # they encode and small files are mostly Python work under the GIL. On 2 cores,
        # two workers beside it took as long and burnt 0.8 s more CPU per 20,000 files.
        workers = max(1, self.threads - 1)
        window = max(2, WINDOW_FILES // GROUP_FILES) * workers
        yield from _bounded_map(self._read_group, groups, workers, window)

    def _in_processes(
        self, ahead: EncodeAhead[list[SourceFile]]
    ) -> Generator[list[_Encoded], None, int]:
        """Groups encoded by worker processes (archive.encode_pool), in order; returns
        how many, which is all of them unless no worker ever answered.

        Raises:
            WorkerDied: a worker stopped after others had answered.
        """
        done = 0
        try:
            for group, encoded in ahead:
                yield [_decoded(f, result) for f, result in zip(group, encoded, strict=True)]
                done += 1
        except WorkerDied:
            if done:
                raise
        return done

    def small(self, begun: StartedIngest) -> None:
        batch: list[tuple[SourceFile, BlobDigest, bytes]] = []
        batch_bytes = 0
        left = sum(map(len, begun.groups))
        for group in self._encoded_groups(begun):
            for item in group:
                batch.append(item)
                batch_bytes += len(item[2])
                left -= 1
                if batch_bytes >= BATCH_BYTES or len(batch) >= BATCH_FILES or left == TAIL_FILES:
                    self._store_small(batch)
                    batch, batch_bytes = [], 0
                if left == TAIL_FILES:
                    # The last pack is recorded after the last file is read, while
                    # nothing else runs: kept small, its rows cost little there.
                    self.sink.seal()
        self._store_small(batch)

    def _store_small(self, batch: list[tuple[SourceFile, BlobDigest, bytes]]) -> None:
        if not batch:
            return
        with self.node.reading() as session:
            known = present_blobs((d.b3 for _, d, _ in batch), session=session)
        for f, digest, stored in batch:
            self.digests[f.path] = digest
            if digest.b3 in known or digest.b3 in self.sink.stored:
                self.deduplicated += 1
            else:
                self.sink.add_small(digest, stored)
        self._advance(len(batch), sum(f.size for f, _, _ in batch))

    # -- large files: streamed, loose ------------------------------------------------
    def large(self, f: SourceFile, prior: _Prior | None) -> None:
        if prior is not None and prior.size == f.size:
            # Read, not mmap: mapped pages count as resident memory, a whole file's worth.
            hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
            with open(f.abspath, "rb") as fh:
                while chunk := fh.read(CHUNK):
                    hasher.update(chunk)
            if hasher.hexdigest() == prior.b3 and self._known(prior.b3):
                self.digests[f.path] = BlobDigest(
                    prior.b3, prior.sha256, prior.size, prior.stored_size, "", prior.codec
                )
                self.deduplicated += 1
                self._advance(1, f.size)
                return
        digest = self._encode_large(f)
        self.digests[f.path] = digest
        self._advance(1, f.size)

    def _known(self, b3: str) -> bool:
        if b3 in self.sink.stored:
            return True
        with self.node.reading() as session:
            return bool(present_blobs([b3], session=session))

    def _encode_large(self, f: SourceFile) -> BlobDigest:
        tier = self.node.hot
        encoder = self._encoder()
        try:
            with open(f.abspath, "rb") as fh:
                first = fh.read(CHUNK)
                compress = encoder.looks_compressible(first[:SAMPLE])
                while True:
                    upload = tier.begin_put()
                    try:
                        digest = encoder.encode_stream(
                            fh, f.size, upload, first=first, compress=compress
                        )
                    except BaseException:
                        upload.abort()
                        raise
                    if compress and not pays(digest.size, digest.stored_size):
                        # The sample misled us: store it raw (the one case read twice).
                        upload.abort()
                        fh.seek(0)
                        first, compress = fh.read(CHUNK), False
                        continue
                    break
        except OSError as exc:
            raise UnsupportedFile(f.path, exc.strerror or str(exc)) from exc
        if self._known(digest.b3):
            upload.abort()
            self.deduplicated += 1
            return digest
        # Durable, promoted and recorded in the background, while the next file encodes.
        self.sink.promote_loose(upload, digest)
        return digest


def _decoded(f: SourceFile, result: Encoded) -> _Encoded:
    digests, payload = result
    if digests is None:
        raise UnsupportedFile(f.path, str(payload))
    assert isinstance(payload, bytes)
    return f, BlobDigest(*digests), payload


def _bounded_map(
    fn: Callable[[_In], _Out], items: list[_In], threads: int, window: int
) -> Iterator[_Out]:
    """``map`` on a thread pool, in order, with at most ``window`` results in memory."""
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ingest") as pool:
        pending: deque[Future[_Out]] = deque()
        it = iter(items)
        for item in it:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                break
        while pending:
            yield pending.popleft().result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(fn, nxt))


def ingest_tree(
    node: ArchiveNode,
    root: Path,
    ref: DatasetRef,
    *,
    message: str = "",
    title: str | None = None,
    metadata: dict[str, Any] | None = None,
    progress: IngestProgress | None = None,
    agent: str = "permafrost/cli",
    begun: StartedIngest | None = None,
) -> IngestReport:
    """Ingest a folder (or one file) as the next version of ``ref``.

    ``begun`` is what :func:`archive.ingest_start.begin_ingest` started for ``root``
    (the CLI calls it before opening the catalog); this call closes it.

    Raises:
        InvalidTree: the tree holds paths or files that may not enter the archive.
        UnsupportedFile: a file could not be read, or changed while read.
    """
    with begun or begin_ingest(root, node.settings) as begun:
        scan = begun.scan
        if progress is not None:
            progress.started(len(scan.files), scan.total_bytes)
        prior = _previous_entries(node, ref)
        job = _Ingest(node, progress)
        try:
            job.small(begun)
            for f in begun.large:
                job.large(f, prior.get(f.path))
            job.sink.flush()
        except BaseException:
            job.sink.abort()
            raise
    entries = [
        NewEntry(f.path, job.digests[f.path].b3, job.digests[f.path].sha256, f.size)
        for f in scan.files
    ]
    stored = job.sink.stored
    packed = {
        b3: PackedHere(pack_id, stored[b3].sha256, stored[b3].size)
        for b3, pack_id in job.sink.packed.items()
    }
    for attempt in (1, 2):
        try:
            with node.session() as session:
                result = commit_version(
                    ref,
                    entries,
                    session=session,
                    tier=node.hot,
                    message=message,
                    title=title,
                    metadata=metadata,
                    agent=agent,
                    packed=packed,
                )
                version_number = result.version.number
                plan(node, session=session, collection=ref.collection, version_id=result.version.id)
            break
        except sa.exc.IntegrityError:
            if attempt == 2:
                raise  # a concurrent commit won twice in a row: let the caller retry
    new = job.sink.stored.values()
    return IngestReport(
        dataset=f"{ref.collection}/{ref.dataset}",
        version=version_number,
        created=result.created,
        files=len(scan.files),
        bytes=scan.total_bytes,
        new_blobs=len(job.sink.stored),
        new_bytes=sum(d.size for d in new),
        stored_bytes=sum(d.stored_size for d in new),
        deduplicated=job.deduplicated,
        seconds=time.perf_counter() - begun.began,
        warnings=scan.warnings,
    )
