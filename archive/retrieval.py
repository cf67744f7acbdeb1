"""Reading blobs back: find a readable copy, stream it, decode it, prove it.

Every byte handed out is checked while it streams: BLAKE3 of the stored bytes
against ``stored_b3``, then BLAKE3 and SHA-256 of the decoded bytes against the
address and ``sha256``, and the size. A mismatch raises at the end of the stream,
so a caller that writes to a temporary file and renames only on success never
publishes damaged data.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO, cast

import blake3
import sqlalchemy as sa
import zstandard
from sqlmodel import Session, select

from archive.catalog import models
from archive.catalog.models import Codec, ReplicaState
from archive.encoding import BlobDigest
from archive.errors import BlobDigestMismatch, NotFound
from archive.packs import pack_key
from tiers import CHUNK_SIZE, Tier

ROLE_ORDER = {"hot": 0, "cold": 1, "partner": 2}


@dataclass(frozen=True)
class Location:
    """Where one copy of a blob's stored bytes lies in one tier."""

    tier: str
    role: str
    key: str
    offset: int = 0
    length: int | None = None
    pack_id: str | None = None


def get_blob(b3: str, *, session: Session) -> models.Blob:
    blob = session.get(models.Blob, b3)
    if blob is None:
        raise NotFound(f"no blob {b3}")
    return blob


def locate(b3: str, *, session: Session) -> list[Location]:
    """Every present copy of a blob, loose or in a pack, cheapest tier role first."""
    loose = session.exec(
        select(models.Replica.key, models.Tier.name, models.Tier.role)
        .join(models.Tier, models.Tier.id == models.Replica.tier_id)  # type: ignore[arg-type]
        .where(models.Replica.blob_b3 == b3, models.Replica.state == ReplicaState.PRESENT)
    ).all()
    packed = session.execute(
        sa.select(  # type: ignore[call-overload]
            models.Replica.key,
            models.Tier.name,
            models.Tier.role,
            models.PackMember.offset,
            models.PackMember.length,
            models.PackMember.pack_id,
        )
        .join(models.Tier, models.Tier.id == models.Replica.tier_id)
        .join(models.PackMember, models.PackMember.pack_id == models.Replica.pack_id)
        .where(models.PackMember.blob_b3 == b3, models.Replica.state == ReplicaState.PRESENT)
    ).all()
    found = [Location(tier, role, key) for key, tier, role in loose]
    found += [
        Location(tier, role, key, offset, length, pack_id)
        for key, tier, role, offset, length, pack_id in packed
    ]
    return sorted(found, key=lambda loc: (ROLE_ORDER.get(loc.role, 9), loc.pack_id is not None))


def read_stored(tier: Tier, loc: Location) -> Iterator[bytes]:
    """Stream the stored bytes of one copy in bounded chunks."""
    key = pack_key(loc.pack_id) if loc.pack_id else loc.key
    with tier.open(key, offset=loc.offset, length=loc.length) as stream:
        while chunk := stream.read(CHUNK_SIZE):
            yield chunk


class _HashingReader:
    """Reads stored bytes from a tier stream, hashing and counting them on the way."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._hasher = blake3.blake3()
        self.size = 0

    def read(self, size: int = -1, /) -> bytes:
        data = self._raw.read(size)
        self._hasher.update(data)
        self.size += len(data)
        return data

    def drain(self) -> None:
        while self.read(CHUNK_SIZE):
            pass

    def hexdigest(self) -> str:
        return self._hasher.hexdigest()


def decoded_chunks(stored: _HashingReader, codec: str, *, limit: int) -> Iterator[bytes]:
    """Decode stored bytes in bounded chunks; never more than ``limit`` bytes out.

    A damaged or hostile zstd frame can claim to expand to any size (a
    decompression bomb); output is cut off one byte past ``limit`` so the size
    check fails without the memory or disk ever filling.
    """
    produced = 0
    if codec == Codec.ZSTD:
        reader = zstandard.ZstdDecompressor().stream_reader(
            cast(BinaryIO, stored), read_size=CHUNK_SIZE, read_across_frames=False, closefd=False
        )
        read: Callable[[int], bytes] = reader.read
    else:
        read = stored.read
    while produced <= limit:
        try:
            chunk = read(min(CHUNK_SIZE, limit + 1 - produced))
        except zstandard.ZstdError as exc:
            raise _Undecodable(str(exc)) from exc
        if not chunk:
            return
        produced += len(chunk)
        yield chunk


class _Undecodable(Exception):
    pass


@dataclass
class _Measure:
    """Digests of the decoded bytes, fed as they stream."""

    b3: Any = field(default_factory=blake3.blake3)
    sha256: Any = field(default_factory=hashlib.sha256)
    size: int = 0

    def feed(self, chunk: bytes) -> None:
        self.b3.update(chunk)
        self.sha256.update(chunk)
        self.size += len(chunk)


def iter_verified(tier: Tier, loc: Location, blob: models.Blob) -> Iterator[bytes]:
    """Decoded bytes of one copy, in bounded chunks, every digest proven.

    Raises (after the last chunk, or as soon as the size is exceeded):
        BlobDigestMismatch: a size or digest differs, or the frame does not decode.
    """
    measure = _Measure()
    key = pack_key(loc.pack_id) if loc.pack_id else loc.key
    with tier.open(key, offset=loc.offset, length=loc.length) as raw:
        stored = _HashingReader(raw)
        try:
            for chunk in decoded_chunks(stored, blob.codec, limit=blob.size):
                measure.feed(chunk)
                if measure.size > blob.size:
                    break
                yield chunk
        except _Undecodable as exc:
            raise BlobDigestMismatch(blob.b3, "zstd", "a valid frame", str(exc)) from exc
        stored.drain()
    checks = [
        ("size", str(blob.size), str(measure.size)),
        ("stored size", str(blob.stored_size), str(stored.size)),
        ("stored blake3", blob.stored_b3, stored.hexdigest()),
        ("blake3", blob.b3, measure.b3.hexdigest()),
        ("sha256", blob.sha256, measure.sha256.hexdigest()),
    ]
    for algorithm, expected, found in checks:
        if expected != found:
            raise BlobDigestMismatch(blob.b3, algorithm, expected, found)


def measure_stored(tier: Tier, key: str, codec: str, *, limit: int) -> BlobDigest:
    """What an unrecorded object decodes to (to adopt bytes a crash left unrecorded).

    Raises:
        BlobDigestMismatch: the object does not decode with ``codec``.
    """
    measure = _Measure()
    with tier.open(key) as raw:
        stored = _HashingReader(raw)
        try:
            for chunk in decoded_chunks(stored, codec, limit=limit):
                measure.feed(chunk)
        except _Undecodable as exc:
            raise BlobDigestMismatch("?", "zstd", "a valid frame", str(exc)) from exc
        stored.drain()
    return BlobDigest(
        b3=measure.b3.hexdigest(),
        sha256=measure.sha256.hexdigest(),
        size=measure.size,
        stored_size=stored.size,
        stored_b3=stored.hexdigest(),
        codec=codec,
    )


def blobs_of_version(version_id: int, *, session: Session) -> list[models.Blob]:
    rows = session.exec(
        select(models.Blob)
        .join(models.Entry, models.Entry.blob_b3 == models.Blob.b3)  # type: ignore[arg-type]
        .where(models.Entry.version_id == version_id)
        .distinct()
    ).all()
    return list(rows)
