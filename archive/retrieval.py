"""Reading blobs back: find a readable copy, stream it, decode it, prove it.

Every byte handed out is checked while it streams: BLAKE3 of the stored bytes
against ``stored_b3``, then BLAKE3 and SHA-256 of the decoded bytes against the
address and ``sha256``, and the size. A mismatch raises at the end of the stream,
so a caller that writes to a temporary file and renames only on success never
publishes damaged data.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import blake3
import sqlalchemy as sa
import zstandard
from sqlmodel import Session, select

from archive.catalog import models
from archive.catalog.models import Codec, ReplicaState
from archive.encoding import BlobDigest
from archive.errors import BlobDigestMismatch, NotFound, Unavailable
from archive.packs import pack_key
from tiers import CHUNK_SIZE, Tier, TierError

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


class Verifier:
    """Decodes stored bytes and checks every digest the catalog holds for the blob."""

    def __init__(self, blob: models.Blob) -> None:
        self.blob = blob
        self._stored_b3 = blake3.blake3()
        self._b3 = blake3.blake3()
        self._sha256 = hashlib.sha256()
        self._size = 0
        self._stored_size = 0
        self._decoder = (
            zstandard.ZstdDecompressor().decompressobj() if blob.codec == Codec.ZSTD else None
        )

    def feed(self, stored: bytes) -> bytes:
        self._stored_b3.update(stored)
        self._stored_size += len(stored)
        if self._decoder is None:
            out = stored
        else:
            try:
                out = self._decoder.decompress(stored)
            except zstandard.ZstdError as exc:
                raise BlobDigestMismatch(self.blob.b3, "zstd", "a valid frame", str(exc)) from exc
        self._b3.update(out)
        self._sha256.update(out)
        self._size += len(out)
        return out

    def digests(self) -> BlobDigest:
        """What the bytes fed so far hash to (for adopting unrecorded objects)."""
        return BlobDigest(
            b3=self._b3.hexdigest(),
            sha256=self._sha256.hexdigest(),
            size=self._size,
            stored_size=self._stored_size,
            stored_b3=self._stored_b3.hexdigest(),
            codec=self.blob.codec,
        )

    def finish(self) -> None:
        """Raise :class:`BlobDigestMismatch` unless every digest and size matched."""
        blob = self.blob
        checks = [
            ("stored size", str(blob.stored_size), str(self._stored_size)),
            ("stored blake3", blob.stored_b3, self._stored_b3.hexdigest()),
            ("size", str(blob.size), str(self._size)),
            ("blake3", blob.b3, self._b3.hexdigest()),
            ("sha256", blob.sha256, self._sha256.hexdigest()),
        ]
        for algorithm, expected, found in checks:
            if expected != found:
                raise BlobDigestMismatch(blob.b3, algorithm, expected, found)


def iter_verified(tier: Tier, loc: Location, blob: models.Blob) -> Iterator[bytes]:
    """Decoded bytes of one copy; raises BlobDigestMismatch after the last chunk if bad."""
    verifier = Verifier(blob)
    for stored in read_stored(tier, loc):
        out = verifier.feed(stored)
        if out:
            yield out
    verifier.finish()


def open_blob(
    b3: str, *, session: Session, tiers: dict[str, Tier]
) -> tuple[models.Blob, Location, Iterator[bytes]]:
    """Pick the cheapest readable copy of a blob and return its verified byte stream.

    Raises:
        NotFound: no such blob.
        Unavailable: no copy can be read now (tiers down, or none present).
    """
    blob = get_blob(b3, session=session)
    errors: list[str] = []
    for loc in locate(b3, session=session):
        tier = tiers.get(loc.tier)
        if tier is None:
            errors.append(f"{loc.tier}: not configured here")
            continue
        try:
            key = pack_key(loc.pack_id) if loc.pack_id else loc.key
            tier.stat(key)
        except TierError as exc:
            errors.append(f"{loc.tier}: {exc}")
            continue
        return blob, loc, iter_verified(tier, loc, blob)
    raise Unavailable(
        f"no readable copy of blob {b3}" + (f" ({'; '.join(errors)})" if errors else "")
    )


def blobs_of_version(version_id: int, *, session: Session) -> list[models.Blob]:
    rows = session.exec(
        select(models.Blob)
        .join(models.Entry, models.Entry.blob_b3 == models.Blob.b3)  # type: ignore[arg-type]
        .where(models.Entry.version_id == version_id)
        .distinct()
    ).all()
    return list(rows)


def count_present(b3s: list[str], *, session: Session) -> int:
    return session.exec(
        select(sa.func.count()).select_from(models.Blob).where(models.Blob.b3.in_(b3s))  # type: ignore[attr-defined]
    ).one()
