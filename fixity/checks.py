"""One fixity check of one stored object at one level (light, stored, deep).

The levels, cheapest first:

* ``light``: the object exists, has the recorded size, and the provider's own
  checksum (S3 ``ChecksumSHA256``, else the ETag) is the one seen when the bytes were
  last proven. No content is read: this is what a cold tier affords on schedule.
* ``stored``: the stored bytes are read; their BLAKE3 must be ``stored_b3`` (for a
  pack: the pack's id, which is the BLAKE3 of its bytes). No decompression.
* ``deep``: the stored bytes are also decoded; the BLAKE3 of the content must be the
  blob's address and its SHA-256 the recorded one (for a pack: every member).

A pack is audited as one object, in one sequential read, not member by member:
one request instead of thousands (on S3 a request costs as much as megabytes of
transfer), and the pack's id proves every byte of it, headers included. When a
pack fails, its members are checked one by one (ranges of the bytes already read)
so the event names exactly which blobs are damaged.

The outcome separates what is wrong with the *bytes* (damaged, missing) from what is
wrong with the *tier* (unreachable): only the first is ever recorded as damage.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import io
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import BinaryIO, TypeGuard, cast

import blake3
import zstandard

from archive.catalog import models
from archive.catalog.models import Codec, EventOutcome, EventType
from fixity.levels import Level as Level
from fixity.ratelimit import UNLIMITED, ByteRate
from tiers import CHUNK_SIZE, HashingTier, NeedsRestore, ObjectNotFound, Tier, TierError, read_ahead


class Finding(enum.StrEnum):
    OK = "ok"
    DAMAGED = "damaged"
    MISSING = "missing"
    UNREACHABLE = "unreachable"
    """The tier did not answer (down, refusing, 5xx): says nothing about the bytes."""
    NEEDS_RESTORE = "needs-restore"
    """A cold object that must be restored before its bytes can be read."""


@dataclass(frozen=True)
class Member:
    """A blob inside a pack: where its stored bytes lie."""

    blob: models.Blob
    offset: int
    length: int


@dataclass(frozen=True)
class Target:
    """What one replica should hold: a loose blob, a pack, or a version manifest."""

    kind: str
    """``blob``, ``pack`` or ``manifest``."""
    object_id: str
    key: str
    stored_size: int | None
    stored_b3: str
    blob: models.Blob | None = None
    members: tuple[Member, ...] = ()
    provider_checksum: str | None = None


@dataclass(frozen=True)
class CheckResult:
    finding: Finding
    level: Level
    bytes_read: int = 0
    detail: str = ""
    provider_checksum: str | None = None
    bad_members: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return self.finding == Finding.OK

    @property
    def is_damage(self) -> bool:
        return self.finding in (Finding.DAMAGED, Finding.MISSING)


def check(tier: Tier, target: Target, level: Level, *, rate: ByteRate = UNLIMITED) -> CheckResult:
    """Check ``target`` on ``tier`` at ``level``; never raises for a tier failure."""
    try:
        info = tier.stat(target.key)
    except ObjectNotFound:
        return CheckResult(Finding.MISSING, level, detail=f"{target.key}: no such object")
    except TierError as exc:
        return CheckResult(Finding.UNREACHABLE, level, detail=str(exc))
    provider = info.checksum_sha256 or info.etag
    if target.stored_size is not None and info.size != target.stored_size:
        return CheckResult(
            Finding.DAMAGED,
            level,
            detail=f"size: expected {target.stored_size}, found {info.size}",
            provider_checksum=provider,
        )
    if level == Level.LIGHT:
        if target.provider_checksum and provider and provider != target.provider_checksum:
            return CheckResult(
                Finding.DAMAGED,
                level,
                detail=f"provider checksum: expected {target.provider_checksum}, found {provider}",
                provider_checksum=provider,
            )
        return CheckResult(Finding.OK, level, provider_checksum=provider)
    try:
        if _hashes_in_place(tier, target, level, rate):
            result = _hash_in_place(tier, target, level)
        else:
            with tier.open(target.key) as raw:
                result = _read_and_prove(raw, target, level, rate)
    except ObjectNotFound:
        return CheckResult(Finding.MISSING, level, detail=f"{target.key}: no such object")
    except NeedsRestore as exc:
        return CheckResult(Finding.NEEDS_RESTORE, level, detail=str(exc))
    except TierError as exc:
        return CheckResult(Finding.UNREACHABLE, level, detail=str(exc))
    if result.ok:
        return CheckResult(Finding.OK, level, result.bytes_read, provider_checksum=provider)
    return CheckResult(
        result.finding, level, result.bytes_read, result.detail, provider, result.bad_members
    )


def _hashes_in_place(
    tier: Tier, target: Target, level: Level, rate: ByteRate
) -> TypeGuard[HashingTier]:
    """A stored-level check of one object, with no rate to pace the reads, on a tier
    that hashes where the bytes are (a local folder maps the file, as ``b3sum`` does)."""
    return (
        level == Level.STORED
        and target.kind != "pack"
        and rate.rate <= 0
        and isinstance(tier, HashingTier)
    )


def _hash_in_place(tier: HashingTier, target: Target, level: Level) -> CheckResult:
    digest, size = tier.hash_object(target.key)
    return _stored_result(digest, size, target, level)


def _read_and_prove(raw: BinaryIO, target: Target, level: Level, rate: ByteRate) -> CheckResult:
    if target.kind == "pack":
        return _prove_pack(raw, target, level, rate)
    if target.kind == "blob" and level == Level.DEEP:
        assert target.blob is not None
        blob = target.blob
        raw_codec = blob.codec == Codec.RAW
        # Raw: the one BLAKE3 may use every core; zstd: decoding needs one of them.
        reader = _RatedReader(
            raw, rate, threads=blake3.blake3.AUTO if raw_codec else 1
        )  # stored bytes are the content: one BLAKE3
        problem = prove_blob(reader, blob, content_b3=not raw_codec)
        reader.drain()
        found = reader.hexdigest()
        if problem is None and found != target.stored_b3:
            problem = f"stored blake3: expected {target.stored_b3}, found {found}"
        if problem is None and raw_codec and found != blob.b3:
            problem = f"blake3: expected {blob.b3}, found {found}"
        return _result(problem, level, reader.size)
    digest, size = hash_stream(raw, rate, expected_size=target.stored_size)
    return _stored_result(digest, size, target, level)


def _stored_result(digest: str, size: int, target: Target, level: Level) -> CheckResult:
    problem = None
    if target.stored_size is not None and size != target.stored_size:
        problem = f"stored size: expected {target.stored_size}, found {size}"
    elif digest != target.stored_b3:
        problem = f"stored blake3: expected {target.stored_b3}, found {digest}"
    return _result(problem, level, size)


def _result(problem: str | None, level: Level, size: int, bad: tuple[str, ...] = ()) -> CheckResult:
    if problem is None:
        return CheckResult(Finding.OK, level, size)
    return CheckResult(Finding.DAMAGED, level, size, problem, bad_members=bad)


def hash_stream(
    raw: BinaryIO, rate: ByteRate = UNLIMITED, *, expected_size: int | None = None
) -> tuple[str, int]:
    """BLAKE3 and length of a stream, read in bounded chunks (several threads hash
    each large chunk, as ``b3sum`` does). From :data:`PARALLEL_FROM` bytes on, the
    next chunk is read while this one is hashed (:func:`tiers.read_ahead`: the copy out
    of the page cache costs about what hashing does; overlapped, a stored audit of a
    local tier ran 1.5x faster)."""
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    size = 0
    large = expected_size is not None and expected_size >= PARALLEL_FROM
    chunks = read_ahead(raw) if large else iter(lambda: raw.read(CHUNK_SIZE), b"")
    for chunk in chunks:
        hasher.update(chunk)
        size += len(chunk)
        rate.spend(len(chunk))
    return hasher.hexdigest(), size


class _RatedReader:
    """Reads stored bytes, hashing, counting and paying the rate limit on the way."""

    def __init__(self, raw: BinaryIO, rate: ByteRate, *, threads: int = 1) -> None:
        self._raw = raw
        self._rate = rate
        self._hasher = blake3.blake3(max_threads=threads)
        self.size = 0

    def read(self, size: int = -1, /) -> bytes:
        data = self._raw.read(size)
        self._hasher.update(data)
        self.size += len(data)
        self._rate.spend(len(data))
        return data

    def drain(self) -> None:
        while self.read(CHUNK_SIZE):
            pass

    def hexdigest(self) -> str:
        return self._hasher.hexdigest()


def _decoded(stored: BinaryIO, codec: str, limit: int) -> Iterator[bytes]:
    """Decoded chunks, never more than ``limit + 1`` bytes (a damaged frame may claim
    any size: the bound keeps memory flat and makes the size check fail)."""
    chunks: Iterator[bytes]
    if codec == Codec.ZSTD:
        chunks = zstandard.ZstdDecompressor().read_to_iter(
            stored, read_size=CHUNK_SIZE, write_size=CHUNK_SIZE
        )
    else:
        chunks = iter(lambda: stored.read(CHUNK_SIZE), b"")
    produced = 0
    for chunk in chunks:
        produced += len(chunk)
        yield chunk
        if produced > limit:
            return


PARALLEL_FROM = 8 * 1024 * 1024
"""Blobs from this size on have their content digests computed in a second thread."""


class _ContentDigests:
    """BLAKE3 (optional) and SHA-256 of decoded content, fed in order; for large blobs
    in a second thread, so they run beside decompression as ``zstd -d | b3sum`` runs
    two processes (``blake3`` and ``hashlib`` release the GIL on large buffers)."""

    def __init__(self, *, b3: bool, threaded: bool) -> None:
        self.b3 = blake3.blake3() if b3 else None
        self.sha256 = hashlib.sha256()
        self._pool = ThreadPoolExecutor(max_workers=1) if threaded else None
        self._pending: deque[Future[None]] = deque()

    def _feed(self, chunk: bytes) -> None:
        if self.b3 is not None:
            self.b3.update(chunk)
        self.sha256.update(chunk)

    def update(self, chunk: bytes) -> None:
        if self._pool is None:
            self._feed(chunk)
            return
        while len(self._pending) >= 2:  # bounded: at most two chunks in flight
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(self._feed, chunk))

    def close(self) -> None:
        while self._pending:
            self._pending.popleft().result()
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


def prove_blob(
    stored: BinaryIO | _RatedReader, blob: models.Blob, *, content_b3: bool = True
) -> str | None:
    """Decode one blob's stored bytes; ``None`` when size, BLAKE3 and SHA-256 hold,
    else what differs. The caller checks the stored digest of what it read (and, with
    ``content_b3=False`` for a raw blob, that it equals the address: same bytes)."""
    digests = _ContentDigests(b3=content_b3, threaded=blob.size >= PARALLEL_FROM)
    size = 0
    try:
        for chunk in _decoded(cast(BinaryIO, stored), blob.codec, blob.size):
            digests.update(chunk)
            size += len(chunk)
    except zstandard.ZstdError as exc:
        return f"zstd: frame does not decode ({exc})"
    finally:
        digests.close()
    if size != blob.size:
        return f"size: expected {blob.size}, found {size}"
    if digests.b3 is not None and digests.b3.hexdigest() != blob.b3:
        return f"blake3: expected {blob.b3}, found {digests.b3.hexdigest()}"
    if digests.sha256.hexdigest() != blob.sha256:
        return f"sha256: expected {blob.sha256}, found {digests.sha256.hexdigest()}"
    return None


def member_problem(stored: bytes, member: Member, *, deep: bool) -> str | None:
    """What is wrong with one pack member's stored bytes (``None``: nothing)."""
    blob = member.blob
    if len(stored) != blob.stored_size:
        return f"stored size: expected {blob.stored_size}, found {len(stored)}"
    found = blake3.blake3(stored).hexdigest()
    if found != blob.stored_b3:
        return f"stored blake3: expected {blob.stored_b3}, found {found}"
    return prove_blob(io.BytesIO(stored), blob) if deep else None


def _prove_pack(raw: BinaryIO, target: Target, level: Level, rate: ByteRate) -> CheckResult:
    """One sequential read of the pack: its BLAKE3 against its id and, when deep, each
    member's stored bytes (cut from the same read) decoded and proven."""
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    members = sorted(target.members, key=lambda m: m.offset) if level == Level.DEEP else []
    bad: list[str] = []
    position = 0
    pending = bytearray()  # bytes from ``position - len(pending)`` that a member may need
    index = 0
    while chunk := raw.read(CHUNK_SIZE):
        hasher.update(chunk)
        rate.spend(len(chunk))
        position += len(chunk)
        if not members:
            continue
        pending += chunk
        base = position - len(pending)
        while index < len(members) and members[index].offset + members[index].length <= position:
            m = members[index]
            stored = bytes(pending[m.offset - base : m.offset - base + m.length])
            if member_problem(stored, m, deep=True) is not None:
                bad.append(m.blob.b3)
            index += 1
        keep_from = members[index].offset if index < len(members) else position
        del pending[: max(0, keep_from - base)]
    bad += [m.blob.b3 for m in members[index:]]  # the pack ends before these members do
    digest = hasher.hexdigest()
    problem = None
    if target.stored_size is not None and position != target.stored_size:
        problem = f"stored size: expected {target.stored_size}, found {position}"
    elif digest != target.stored_b3:
        problem = f"pack blake3: expected {target.stored_b3}, found {digest}"
    elif bad:
        problem = f"{len(bad)} member(s) fail their digests"
    if problem is not None and bad:
        problem += f"; damaged members: {', '.join(sorted(bad)[:10])}"
    return _result(problem, level, position, tuple(sorted(bad)))


AGENT = "permafrost/fixity"


def check_event(
    object_type: str,
    object_id: str,
    tier: str,
    result: CheckResult,
    detail: dict[str, object],
    now: dt.datetime,
) -> models.Event:
    """The preservation event of one audit of one copy (a blob, a pack, a manifest,
    an object held for a partner)."""
    return models.Event(
        type=EventType.FIXITY_CHECK,
        object_type=object_type,
        object_id=object_id,
        tier=tier,
        outcome=EventOutcome.SUCCESS if result.ok else EventOutcome.FAILURE,
        detail=detail,
        agent=AGENT,
        created_at=now,
    )


def event_detail(target: Target, result: CheckResult, *, sampled: bool) -> dict[str, object]:
    detail: dict[str, object] = {
        "key": target.key,
        "level": result.level,
        "finding": result.finding,
        "bytes_read": result.bytes_read,
    }
    if result.detail:
        detail["error" if not result.ok else "note"] = result.detail
    if result.bad_members:
        detail["damaged_members"] = list(result.bad_members)
    if sampled:
        detail["sampled"] = True
    if target.kind == "blob":
        detail["stored_b3"] = target.stored_b3
    return detail
