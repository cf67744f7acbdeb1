"""Encoding small files in worker processes: read, hash and compress, nothing else.

Small files are mostly Python work per file (open, read, three digests, one zstd call),
so threads take turns on the GIL while the ingest's main thread packs and records what
they return. Worker processes encode beside it on every core. This module is what a
worker imports: the standard library, ``blake3`` and ``zstandard`` only, so a worker
starts in milliseconds and never loads the catalog.

:func:`encode_content` is also how :class:`archive.encoding.Encoder` encodes content
held in memory, so both paths store the same bytes under the same digests.
"""

from __future__ import annotations

import hashlib
import os

import blake3
import zstandard

#: Compression that saves less than this fraction is not worth a decode on every read.
MAX_STORED_RATIO = 0.97

ZSTD = "zstd"
RAW = "raw"

Digests = tuple[str, str, int, int, str, str]
"""BLAKE3, SHA-256, size, stored size, stored BLAKE3, codec (``zstd`` or ``raw``)."""

Encoded = tuple[Digests | None, bytes | str]
"""One file's digests and stored bytes, or None and why it could not be encoded."""

_compressors: dict[int, zstandard.ZstdCompressor] = {}


def pays(original_size: int, stored_size: int) -> bool:
    return stored_size <= original_size * MAX_STORED_RATIO


def small_compressor(level: int) -> zstandard.ZstdCompressor:
    """A compressor for whole small contents (one frame, content size and checksum)."""
    return zstandard.ZstdCompressor(level=level, write_checksum=True, write_content_size=True)


def encode_content(compressor: zstandard.ZstdCompressor, data: bytes) -> tuple[Digests, bytes]:
    """The digests of ``data`` and its stored bytes (compressed when that pays)."""
    b3 = blake3.blake3(data).hexdigest()
    sha256 = hashlib.sha256(data).hexdigest()
    compressed = compressor.compress(data)
    if pays(len(data), len(compressed)):
        stored_b3 = blake3.blake3(compressed).hexdigest()
        return (b3, sha256, len(data), len(compressed), stored_b3, ZSTD), compressed
    return (b3, sha256, len(data), len(data), b3, RAW), data


def _read_whole(path: str, limit: int) -> bytes:
    """Up to ``limit`` bytes of the file at ``path``, by plain system calls: ``open()``
    builds a buffered file object (an fstat, an isatty check) that cost 20 us a file,
    three times the read itself (20,000 small files: 0.6 s of CPU against 0.2 s)."""
    # O_NONBLOCK: a file swapped for a FIFO since the scan fails instead of hanging.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        data = os.read(fd, limit)
        while len(data) < limit and (more := os.read(fd, limit - len(data))):
            data += more
        return data
    finally:
        os.close(fd)


def encode_file(compressor: zstandard.ZstdCompressor, path: str, size: int) -> Encoded:
    """Read and encode one file of ``size`` bytes: ``(digests, stored bytes)``, or
    ``(None, why)`` when it cannot be read or no longer has that size (the caller turns
    that into its error: an exception may not survive the trip back from a worker)."""
    try:
        data = _read_whole(path, size + 1)
    except OSError as exc:
        return None, exc.strerror or str(exc)
    if len(data) != size:
        return None, "file changed while being read"
    return encode_content(compressor, data)


def encode_files(level: int, files: list[tuple[str, int]]) -> list[Encoded]:
    """:func:`encode_file` for each ``(path, size)``, in order (a worker's one task)."""
    compressor = _compressors.get(level)
    if compressor is None:
        compressor = _compressors[level] = small_compressor(level)
    return [encode_file(compressor, path, size) for path, size in files]
