"""Turning file content into a blob in one read (DESIGN section 2).

One pass over the bytes yields: BLAKE3 of the original (the address), SHA-256 of
the original (for BagIt, S3 and other archives), the stored bytes (one zstd frame
with content size and checksum, or the original when compression does not pay)
and, computed by the tier while it writes, BLAKE3 of the stored bytes.

Large files go through a small pipeline of single-thread lanes (SHA-256, BLAKE3,
compress-and-write), each fed the same chunks in order; hashlib, blake3 and
zstandard release the GIL, so the lanes run on separate cores while memory stays
bounded by the chunks in flight.
"""

from __future__ import annotations

import hashlib
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import blake3
import zstandard

from archive.catalog.models import Codec
from archive.encode_worker import (
    Encoded,
    encode_content,
    encode_file,
    pays,
    small_compressor,
)
from tiers import Upload

CHUNK = 4 * 1024 * 1024
IN_FLIGHT = 4


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


@dataclass(frozen=True)
class BlobDigest:
    """What the catalog records of one blob."""

    b3: str
    sha256: str
    size: int
    stored_size: int
    stored_b3: str
    codec: str


class Encoder:
    """Compresses and hashes content; one per thread (zstd contexts are not thread-safe)."""

    def __init__(self, level: int = 3, threads: int = 0) -> None:
        self.level = level
        self._small = small_compressor(level)
        # Jobs of 16 MiB: zstd's default for level 3 is smaller, and with two workers the
        # extra synchronisation cost 9% more CPU than single-threaded compression.
        params = zstandard.ZstdCompressionParameters.from_level(
            level,
            threads=threads,
            job_size=16 * 1024 * 1024 if threads else 0,
            write_checksum=1,
            write_content_size=1,
        )
        self._large = zstandard.ZstdCompressor(compression_params=params)

    def encode_bytes(self, data: bytes) -> tuple[BlobDigest, bytes]:
        """Encode content held in memory (small files); returns the digest and stored bytes."""
        digests, stored = encode_content(self._small, data)
        return BlobDigest(*digests), stored

    def encode_file(self, path: str, size: int) -> Encoded:
        """Read and encode a small file whole (see :func:`encode_worker.encode_file`)."""
        return encode_file(self._small, path, size)

    def looks_compressible(self, sample: bytes) -> bool:
        """Trial-compress a sample; incompressible data is stored raw without a full pass."""
        return pays(len(sample), len(self._small.compress(sample)))

    def encode_stream(
        self,
        source: Readable,
        size: int | None,
        upload: Upload,
        *,
        first: bytes = b"",
        compress: bool = True,
    ) -> BlobDigest:
        """Stream ``source`` (after the already-read ``first`` bytes) into ``upload``.

        With ``compress`` false the stored bytes are the original, so the upload's
        own BLAKE3 is the address and no second hash is computed.
        """
        sha = hashlib.sha256()
        lanes = _Lanes()
        try:
            if compress:
                b3 = blake3.blake3(max_threads=blake3.blake3.AUTO)
                cobj = self._large.compressobj(size=-1 if size is None else size)

                def compress_and_write(chunk: bytes) -> None:
                    out = cobj.compress(chunk)
                    if out:
                        upload.write(out)

                consumers: list[Callable[[bytes], object]] = [
                    sha.update,
                    b3.update,
                    compress_and_write,
                ]
            else:
                consumers = [sha.update, upload.write]
            total = 0
            chunk = first or source.read(CHUNK)
            while chunk:
                total += len(chunk)
                lanes.feed(consumers, chunk)
                chunk = source.read(CHUNK)
            lanes.drain()
            if compress:
                tail = cobj.flush()
                if tail:
                    upload.write(tail)
        finally:
            lanes.close()
        if size is not None and total != size:
            raise OSError(f"file changed while being read: expected {size} bytes, read {total}")
        if compress:
            address = b3.hexdigest()
            return BlobDigest(address, sha.hexdigest(), total, upload.size, upload.b3, Codec.ZSTD)
        return BlobDigest(upload.b3, sha.hexdigest(), total, total, upload.b3, Codec.RAW)


class _Lanes:
    """One single-thread executor per consumer: each sees every chunk, in order."""

    def __init__(self) -> None:
        self._pools: list[ThreadPoolExecutor] = []
        self._pending: deque[list[Future[object]]] = deque()
        self._lock = threading.Lock()

    def feed(self, consumers: list[Callable[[bytes], object]], chunk: bytes) -> None:
        while len(self._pools) < len(consumers):
            self._pools.append(ThreadPoolExecutor(max_workers=1, thread_name_prefix="encode"))
        futures = [pool.submit(fn, chunk) for pool, fn in zip(self._pools, consumers, strict=False)]
        self._pending.append(futures)
        while len(self._pending) > IN_FLIGHT:
            for f in self._pending.popleft():
                f.result()

    def drain(self) -> None:
        while self._pending:
            for f in self._pending.popleft():
                f.result()

    def close(self) -> None:
        for f in (f for batch in self._pending for f in batch):
            f.cancel()
        for pool in self._pools:
            pool.shutdown(wait=True)
