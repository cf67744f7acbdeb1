"""Serving one blob's bytes to a network client: whole and proven, or one byte range.

:func:`archive.checkout.stream_blob` proves every digest, but only once its last
byte has been read, and a byte already sent cannot be taken back. A whole download
therefore holds back its last chunk until the stream has finished verifying: a
damaged copy ends the transfer short of its announced length, so the client sees a
truncated body, never a complete wrong one.

A byte range (RFC 9110 section 14) cannot be proven without reading the whole blob,
which is what ranges exist to avoid. Its bytes are served as stored for the raw
codec (one ranged tier read, at the copy's offset in its pack when packed) or
decoded from the start of the zstd frame and cut. The client proves the assembled
whole against the ETag (the BLAKE3) or ``Repr-Digest`` (the SHA-256).

Every catalog lookup and the first tier read happen before the iterator is handed
back, so the caller may close its session before streaming, and a blob with no
readable copy is reported as an error before any response has begun.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator

import zstandard
from sqlmodel import Session

from archive.catalog import models
from archive.catalog.models import Codec
from archive.checkout import stream_blob
from archive.errors import BlobDigestMismatch, Unavailable
from archive.packs import pack_key
from archive.retrieval import Location, get_blob, locate, read_stored
from tiers import CHUNK_SIZE, Tier, TierError


def open_blob_stream(
    b3: str,
    *,
    session: Session,
    tiers: dict[str, Tier],
    start: int = 0,
    stop: int | None = None,
) -> Iterator[bytes]:
    """Bytes ``start`` to ``stop`` (exclusive; ``None``: the end) of a blob's content.

    The whole blob is verified as it streams (see the module docstring); a range
    is not. The returned iterator needs no session.

    Raises:
        NotFound: no such blob.
        Unavailable: no copy could be read.
        BlobDigestMismatch: a copy of a blob small enough to fit in one chunk is damaged.
    """
    blob = get_blob(b3, session=session)
    end = blob.size if stop is None else min(stop, blob.size)
    if start <= 0 and end >= blob.size:
        chunks = _release_when_verified(stream_blob(b3, session=session, tiers=tiers))
    elif start >= end:
        chunks = iter(())
    else:
        chunks = _ranged(blob, locate(b3, session=session), tiers, start, end)
    first = next(chunks, None)
    return chunks if first is None else itertools.chain((first,), chunks)


def _release_when_verified(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Pass chunks on one step late: the last leaves only if the source ended cleanly."""
    held: bytes | None = None
    for chunk in chunks:
        if held is not None:
            yield held
        held = chunk
    if held is not None:
        yield held


def _ranged(
    blob: models.Blob, locations: list[Location], tiers: dict[str, Tier], start: int, stop: int
) -> Iterator[bytes]:
    """Bytes of the first copy that can be read, trying the next while none was sent."""
    errors: list[str] = []
    for loc in locations:
        tier = tiers.get(loc.tier)
        if tier is None:
            continue
        if blob.codec == Codec.RAW:
            pieces = _raw_range(tier, loc, blob, start, stop)
        else:
            pieces = _decoded_range(tier, loc, blob, start, stop)
        try:
            first = next(pieces, None)
        except (TierError, BlobDigestMismatch, zstandard.ZstdError) as exc:
            errors.append(f"{loc.tier}: {exc}")
            continue
        if first is not None:
            yield first
        yield from pieces
        return
    raise Unavailable(
        f"no readable copy of blob {blob.b3}: " + ("; ".join(errors) or "none present")
    )


def _raw_range(
    tier: Tier, loc: Location, blob: models.Blob, start: int, stop: int
) -> Iterator[bytes]:
    """Stored bytes are the content: read just the range from the tier."""
    window = dataclasses.replace(loc, offset=loc.offset + start, length=stop - start)
    sent = 0
    for chunk in read_stored(tier, window):
        sent += len(chunk)
        yield chunk
    if sent != stop - start:
        raise BlobDigestMismatch(blob.b3, "stored size", str(stop - start), str(sent))


def _decoded_range(
    tier: Tier, loc: Location, blob: models.Blob, start: int, stop: int
) -> Iterator[bytes]:
    """Decode the frame from its start, skip to ``start``, stop after ``stop``.

    ``stream_reader`` bounds each decoded piece by the read size, so a blob that
    compressed a thousandfold still streams in flat memory.
    """
    key = pack_key(loc.pack_id) if loc.pack_id else loc.key
    with (
        tier.open(key, offset=loc.offset, length=loc.length) as stored,
        zstandard.ZstdDecompressor().stream_reader(stored, read_size=CHUNK_SIZE) as decoded,
    ):
        position = 0
        while position < stop:
            boundary = start if position < start else stop
            piece = decoded.read(min(CHUNK_SIZE, boundary - position))
            if not piece:
                raise BlobDigestMismatch(blob.b3, "size", str(blob.size), f"< {stop}")
            if position >= start:
                yield piece
            position += len(piece)
