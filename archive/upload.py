"""Blobs sent by a client (bulk CLI, portal) one at a time, verified before they count.

The client names the content by its BLAKE3; the server recomputes it while the
body streams into a staged upload and promotes the bytes only if they match, so a
wrong or truncated body leaves nothing behind. The decision to compress is taken
on the first MiB, since a network stream cannot be read twice.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator

import blake3
import zstandard

from archive.blobstore import BlobSink, adopt_existing, present_blobs
from archive.catalog import models
from archive.encoding import BlobDigest, Encoder
from archive.errors import InvalidInput, TooLarge
from archive.node import ArchiveNode
from archive.packs import blob_key
from tiers import ObjectExists

SAMPLE = 1024 * 1024
HEX = frozenset("0123456789abcdef")


class UploadDigestMismatch(InvalidInput):
    """The uploaded bytes do not hash to the address they were sent under."""

    def __init__(self, expected: str, found: str, algorithm: str = "blake3") -> None:
        super().__init__(
            f"uploaded bytes do not match: {algorithm} expected {expected}, found {found}"
        )
        self.expected = expected
        self.found = found
        self.algorithm = algorithm


def check_b3(b3: str) -> str:
    if len(b3) != 64 or not HEX.issuperset(b3):
        raise InvalidInput(f"not a BLAKE3 hex digest: {b3!r}")
    return b3


class _IterReader(io.RawIOBase):
    """A readable stream over an iterator of chunks (for the encoder's read loop)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) < size:
            nxt = next(self._chunks, None)
            if nxt is None:
                break
            self._buffer += nxt
        if size < 0:
            data, self._buffer = self._buffer, b""
        else:
            data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data


def store_stream(
    node: ArchiveNode,
    chunks: Iterable[bytes],
    *,
    expect_b3: str,
    expect_sha256: str | None = None,
    size: int | None = None,
) -> tuple[BlobDigest, bool]:
    """Store one blob from a stream of chunks; returns its digest and whether it was new.

    Raises:
        UploadDigestMismatch: the bytes hash to something else (nothing is kept).
        InvalidInput: the body is shorter or longer than ``size``.
    """
    check_b3(expect_b3)
    limit = node.settings.max_upload_bytes
    if size is not None and size > limit:
        raise TooLarge(limit)
    chunks = _capped(chunks, limit)
    tier = node.hot
    with node.reading() as session:
        tier_id = node.tier_ids(session=session)[tier.name]
        existing = session.get(models.Blob, expect_b3)
        if existing is not None and not present_blobs([expect_b3], session=session):
            existing = None  # every copy is damaged or missing: take these bytes
    if existing is not None:
        # Already held: the body is still proven, so a wrong body is refused the same way.
        hasher = blake3.blake3()
        for chunk in chunks:
            hasher.update(chunk)
        if hasher.hexdigest() != expect_b3:
            raise UploadDigestMismatch(expect_b3, hasher.hexdigest())
        digest = BlobDigest(
            existing.b3,
            existing.sha256,
            existing.size,
            existing.stored_size,
            existing.stored_b3,
            existing.codec,
        )
        return digest, False
    reader = _IterReader(iter(chunks))
    first = reader.read(SAMPLE)
    encoder = Encoder(node.settings.zstd_level, threads=0)
    with tier.begin_put() as upload:
        if len(first) < SAMPLE:
            # The whole body is in hand (most uploads): encode it in memory, no lanes.
            if size is not None and len(first) != size:
                raise InvalidInput(f"body of {len(first)} bytes, declared {size}")
            digest, stored = encoder.encode_bytes(first)
            _check(digest, expect_b3, expect_sha256)
            upload.write(stored)
        else:
            compress = encoder.looks_compressible(first)
            try:
                digest = encoder.encode_stream(reader, size, upload, first=first, compress=compress)
            except (OSError, zstandard.ZstdError) as exc:  # zstd refuses an unpledged size
                raise InvalidInput(f"body length differs from the declared size: {exc}") from exc
            _check(digest, expect_b3, expect_sha256)
        try:
            upload.promote(blob_key(digest.b3), expect_b3=digest.stored_b3)
        except ObjectExists:
            digest = adopt_existing(tier, digest.b3)
    BlobSink(tier, tier_id, node.engine, node.settings.pack_size).recorded_loose(digest)
    return digest, True


def _capped(chunks: Iterable[bytes], limit: int) -> Iterator[bytes]:
    """The chunks, refused as soon as they add up to more than ``limit`` bytes."""
    total = 0
    for chunk in chunks:
        total += len(chunk)
        if total > limit:
            raise TooLarge(limit)
        yield chunk


def _check(digest: BlobDigest, expect_b3: str, expect_sha256: str | None) -> None:
    if digest.b3 != expect_b3:
        raise UploadDigestMismatch(expect_b3, digest.b3)
    if expect_sha256 is not None and digest.sha256 != expect_sha256.lower():
        raise UploadDigestMismatch(expect_sha256, digest.sha256, "sha256")
