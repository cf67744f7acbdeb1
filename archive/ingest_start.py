"""The part of an ingest that needs no catalog: scan the tree and start encoding.

Kept apart from :mod:`archive.ingest`, and free of the catalog's imports, so the CLI
can begin here and then load and open the catalog (about 0.5 s of imports, on one
core) while the worker processes encode the first small files on the others.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from archive.config import Settings
from archive.encode_pool import EncodeAhead, EncoderPool
from archive.scan import ScanResult, SourceFile, scan_tree

GROUP_FILES = 64
#: From this many small files they are encoded in worker processes (archive.encode_pool):
#: starting them costs about 30 ms, and 20,000 files took 0.9 - 1.0 s there against
#: 1.4 - 1.8 s on threads.
PROCESSES_FROM = 1000
#: Encoded small files the workers may hold ready before the ingest takes them.
AHEAD_BYTES = 48 * 1024 * 1024


def encode_threads(settings: Settings) -> int:
    return settings.ingest_threads or max(2, os.cpu_count() or 2)


@dataclass
class StartedIngest:
    """A scanned tree whose small files are being encoded.

    Used as a context manager: leaving it stops the workers.
    """

    scan: ScanResult
    groups: list[list[SourceFile]]
    """The files below ``pack_below``, in groups of ``GROUP_FILES``."""
    large: list[SourceFile]
    """The other files, in the order of the scan."""
    ahead: EncodeAhead[list[SourceFile]] | None
    """The groups being encoded in worker processes; None with too few files, or
    when no process can start here (threads do the work then)."""
    began: float
    """When the scan started (``time.perf_counter``)."""

    def close(self) -> None:
        if self.ahead is not None:
            self.ahead.close()

    def __enter__(self) -> StartedIngest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def begin_ingest(root: Path, settings: Settings) -> StartedIngest:
    """Scan and validate the tree under ``root``, then start encoding its small files.

    Raises:
        InvalidTree: the tree holds paths or files that may not enter the archive.
    """
    began = time.perf_counter()
    scan = scan_tree(root)
    small = [f for f in scan.files if f.size < settings.pack_below]
    large = [f for f in scan.files if f.size >= settings.pack_below]
    # Groups: one task per tiny file spends more time handing work around than
    # reading, hashing and compressing the file.
    groups = [small[i : i + GROUP_FILES] for i in range(0, len(small), GROUP_FILES)]
    ahead = None
    if len(small) >= PROCESSES_FROM:
        try:
            pool = EncoderPool(encode_threads(settings), settings.zstd_level)
        except OSError:
            pool = None  # no process can start here: the threads do the work
        if pool is not None:
            work = ((group, [(f.abspath, f.size) for f in group]) for group in groups)
            try:
                ahead = EncodeAhead(pool, work, max_bytes=AHEAD_BYTES)
            except BaseException:
                pool.close()
                raise
    return StartedIngest(scan, groups, large, ahead, began)
