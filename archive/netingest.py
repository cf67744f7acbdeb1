"""Ingest over the network: a folder on this machine becomes a version on a server.

1. **Scan** with :func:`archive.scan.scan_tree`: the same refusals as a local ingest,
   before anything is sent.
2. **Hash** BLAKE3 and SHA-256 in one read per file, on threads (both hashers
   release the GIL). A file whose size, mtime and inode match the resume journal
   is not read at all, as rsync and restic decide.
3. **Ask** the server which contents it lacks (``POST /blobs/missing``, 10,000 at a
   time): it stays the authority, so a blob that lost its copies there is sent again.
4. **Upload** each missing content once, several at a time, with its expected
   digests (the server proves both), retried on connection errors, 5xx and 429/503.
   Contents under the server's ``pack_below`` (``GET /blobs/batch``) go many to a
   request (``POST /blobs/batch``, at most :data:`BATCH_BYTES` and
   :data:`BATCH_FILES` each, within the server's own limits), which the server
   stores as one pack: a request, an object and a catalog record per small file
   cost more than its bytes. Larger ones are streamed from disk one per ``PUT``.
   Batches and single uploads share the ``jobs`` connections.
5. **Commit** every entry. An identical commit creates nothing, so a rerun is harmless.

The resume journal (:mod:`archive.journal`) is committed as work progresses, so a run
stopped by a network failure or a sleeping laptop continues where it stopped.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import blake3

from archive.batch_format import INDEX_BYTES_PER_BLOB, TAR_END, member_span
from archive.client import (
    MAX_COMMIT_ENTRIES,
    ArchiveClient,
    BatchFile,
    DigestRefused,
    FileChangedWhileSending,
)
from archive.errors import InvalidInput, UnsupportedFile
from archive.journal import Digests, Journal
from archive.refs import DatasetRef
from archive.scan import SourceFile, scan_tree

CHUNK = 1024 * 1024
BATCH_BYTES = 8 * 1024 * 1024
"""A batch's body is at most this long: large enough that a request's fixed cost is
small beside its bytes, small enough that batches spread over the upload jobs."""
BATCH_FILES = 512
"""Files in one batch, at most (the server may allow fewer)."""
T = TypeVar("T")
R = TypeVar("R")


class TransferProgress(Protocol):
    """Told about each phase (``hash``, ``upload``) and each file done in it."""

    def phase(self, name: str, files: int, nbytes: int) -> None: ...

    def advanced(self, name: str, files: int, nbytes: int) -> None: ...


@dataclass
class NetIngestReport:
    dataset: str
    server: str
    dry_run: bool
    files: int = 0
    bytes: int = 0
    hashed: int = 0
    """Files read and hashed in this run (the journal answered for the others)."""
    hashed_bytes: int = 0
    missing_files: int = 0
    """Contents the server lacked when asked (what a dry run would upload)."""
    missing_bytes: int = 0
    uploaded_files: int = 0
    uploaded_bytes: int = 0
    skipped: int = 0
    """Files whose content the server already held (or that another file carried)."""
    retries: int = 0
    version: int | None = None
    created: bool = False
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)
    """Seconds spent in each step: scan, hash, ask, upload, commit."""
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def lap(self, phase: str, since: float) -> float:
        now = time.perf_counter()
        self.phases[phase] = round(now - since, 3)
        return now


def hash_file(f: SourceFile) -> Digests:
    """BLAKE3 and SHA-256 of a file in one read.

    Raises:
        UnsupportedFile: unreadable, or its length changed since the scan.
    """
    b3 = blake3.blake3()
    sha = hashlib.sha256()
    read = 0
    try:
        with open(f.abspath, "rb") as fh:
            while chunk := fh.read(CHUNK):
                b3.update(chunk)
                sha.update(chunk)
                read += len(chunk)
    except OSError as exc:
        raise UnsupportedFile(f.path, exc.strerror or str(exc)) from exc
    if read != f.size:
        raise UnsupportedFile(f.path, "changed while being read; run again")
    return Digests(b3.hexdigest(), sha.hexdigest())


def _windowed(
    pool: ThreadPoolExecutor, fn: Callable[[T], R], items: Iterable[T], window: int
) -> Iterator[tuple[T, R]]:
    """``(item, fn(item))`` as they complete, with at most ``window`` in flight."""
    pending: dict[Future[R], T] = {}
    it = iter(items)
    try:
        while True:
            while len(pending) < window and (item := next(it, None)) is not None:
                pending[pool.submit(fn, item)] = item
            if not pending:
                return
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield pending.pop(future), future.result()
    finally:
        for future in pending:
            future.cancel()


def network_ingest(
    client: ArchiveClient,
    root: Path,
    ref: DatasetRef,
    *,
    journal: Journal,
    jobs: int = 4,
    hash_threads: int | None = None,
    dry_run: bool = False,
    message: str = "",
    title: str | None = None,
    progress: TransferProgress | None = None,
    batch_bytes: int = BATCH_BYTES,
    batch_files: int = BATCH_FILES,
) -> NetIngestReport:
    """Send the folder ``root`` to the server as the next version of ``ref``.

    ``batch_bytes`` and ``batch_files`` bound each batch of small files (0: no batches,
    every file is its own ``PUT``).

    Raises:
        InvalidTree: the folder holds what may not be archived (nothing sent).
        ServerUnreachable: after every retry (exit 1; running again resumes).
        ServerRefused, Unauthorized: the server said no (exit 2).
        UnsupportedFile: a file changed while being read or sent (run again).
    """
    started = time.perf_counter()
    report = NetIngestReport(f"{ref.collection}/{ref.dataset}", client.server, dry_run)
    client.check()
    scan = scan_tree(root)
    mark = report.lap("scan", started)
    report.files, report.bytes, report.warnings = len(scan.files), scan.total_bytes, scan.warnings
    if len(scan.files) > MAX_COMMIT_ENTRIES:
        raise InvalidInput(
            f"{len(scan.files)} files: the server takes at most {MAX_COMMIT_ENTRIES} per version"
        )
    journal.prune({f.path for f in scan.files})
    digests = _hash_all(scan.files, journal, report, hash_threads, progress)
    mark = report.lap("hash", mark)
    first_file: dict[str, SourceFile] = {}
    for f in scan.files:
        first_file.setdefault(digests[f.path].b3, f)
    missing = client.missing(sorted(first_file))
    sending = [first_file[b3] for b3 in sorted(missing)]
    report.missing_files = len(sending)
    report.missing_bytes = sum(f.size for f in sending)
    report.skipped = len(scan.files) - len(sending)
    mark = report.lap("ask", mark)
    if not dry_run:
        batching = sending and batch_bytes > 0 and batch_files > 0
        limits = client.batch_limits() if batching else None
        batches: list[list[SourceFile]] = []
        if limits is not None:
            small = [f for f in sending if f.size < limits.member_below]
            sending = [f for f in sending if f.size >= limits.member_below]
            batches = _batches(
                small,
                max_bytes=min(batch_bytes, limits.max_bytes),
                max_files=min(batch_files, limits.max_members),
            )
        _upload_all(client, sending, batches, digests, journal, report, jobs, progress)
        mark = report.lap("upload", mark)
        version, report.created = client.commit(
            ref.collection,
            ref.dataset,
            [
                {
                    "path": f.path,
                    "blake3": digests[f.path].b3,
                    "sha256": digests[f.path].sha256,
                    "size": f.size,
                }
                for f in scan.files
            ],
            message=message,
            title=title,
        )
        report.version = int(version["number"])
        report.lap("commit", mark)
    journal.commit()
    report.retries = client.retries
    report.seconds = time.perf_counter() - started
    return report


def _hash_all(
    files: list[SourceFile],
    journal: Journal,
    report: NetIngestReport,
    threads: int | None,
    progress: TransferProgress | None,
) -> dict[str, Digests]:
    digests: dict[str, Digests] = {}
    to_hash: list[SourceFile] = []
    for f in files:
        known = journal.known(f)
        if known is None:
            to_hash.append(f)
        else:
            digests[f.path] = known
    report.hashed = len(to_hash)
    report.hashed_bytes = sum(f.size for f in to_hash)
    if progress is not None:
        progress.phase("hash", len(to_hash), report.hashed_bytes)
    workers = threads or max(2, os.cpu_count() or 2)
    with ThreadPoolExecutor(workers, thread_name_prefix="hash") as pool:
        for f, result in _windowed(pool, hash_file, to_hash, workers * 4):
            digests[f.path] = result
            journal.hashed(f, result)
            if progress is not None:
                progress.advanced("hash", 1, f.size)
    journal.commit()
    return digests


def _batches(files: list[SourceFile], *, max_bytes: int, max_files: int) -> list[list[SourceFile]]:
    """``files`` in batches whose bodies are at most ``max_bytes`` long (one file even if
    alone it is longer: the server's member limit is far below its body limit)."""
    batches: list[list[SourceFile]] = []
    batch: list[SourceFile] = []
    length = len(TAR_END)
    for f in files:
        span = member_span(f.size) + INDEX_BYTES_PER_BLOB
        if batch and (length + span > max_bytes or len(batch) >= max_files):
            batches.append(batch)
            batch, length = [], len(TAR_END)
        batch.append(f)
        length += span
    if batch:
        batches.append(batch)
    return batches


def _upload_all(
    client: ArchiveClient,
    sending: list[SourceFile],
    batches: list[list[SourceFile]],
    digests: dict[str, Digests],
    journal: Journal,
    report: NetIngestReport,
    jobs: int,
    progress: TransferProgress | None,
) -> None:
    """Large files first (one ``PUT`` each), then the batches, on ``jobs`` connections;
    every file of an accepted batch is marked uploaded in the journal."""
    if progress is not None:
        progress.phase("upload", report.missing_files, report.missing_bytes)

    def send(job: SourceFile | list[SourceFile]) -> None:
        if isinstance(job, list):
            client.put_batch(
                [
                    BatchFile(
                        digests[f.path].b3, digests[f.path].sha256, Path(f.abspath), f.size, f.path
                    )
                    for f in job
                ]
            )
        else:
            d = digests[job.path]
            client.put_blob(d.b3, d.sha256, Path(job.abspath), job.size, job.path)

    work: list[SourceFile | list[SourceFile]] = [*sending, *batches]
    everything = [f for job in work for f in (job if isinstance(job, list) else [job])]
    with ThreadPoolExecutor(max(1, jobs), thread_name_prefix="upload") as pool:
        try:
            for job, _ in _windowed(pool, send, work, max(1, jobs) * 2):
                done = job if isinstance(job, list) else [job]
                journal.uploaded(*(digests[f.path].b3 for f in done))
                report.uploaded_files += len(done)
                report.uploaded_bytes += sum(f.size for f in done)
                if progress is not None:
                    progress.advanced("upload", len(done), sum(f.size for f in done))
        except (DigestRefused, FileChangedWhileSending) as exc:
            path = getattr(exc, "path", None) or _path_of(exc, everything, digests)
            if path:
                journal.forget(path)
            raise UnsupportedFile(
                path or "?", f"changed since it was hashed ({exc}); run again"
            ) from exc
        finally:
            journal.commit()


def _path_of(
    exc: DigestRefused | FileChangedWhileSending,
    sending: list[SourceFile],
    digests: dict[str, Digests],
) -> str | None:
    """The file whose upload the server refused, from the blob or digest its answer names."""
    if not isinstance(exc, DigestRefused):
        return None
    blob, expected = exc.data.get("blob"), exc.data.get("expected")
    for f in sending:
        if blob == digests[f.path].b3:
            return f.path
    for f in sending:
        if expected in (digests[f.path].b3, digests[f.path].sha256):
            return f.path
    return None
