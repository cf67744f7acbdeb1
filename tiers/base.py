"""The tier interface: five verbs over immutable, write-once objects.

Modelled on restic's backend interface (Save/Load/Stat/List/Remove): a tier stores
opaque objects under string keys and knows nothing of the catalog. Writes go through
an :class:`Upload` so a caller can stream bytes whose final name (a content digest)
is only known once the last byte was written: the upload stages the bytes, hashes
them with BLAKE3 as they pass, and :meth:`Upload.promote` makes them visible under
their key atomically, only if the digest matches. Hence the invariant of the design
(section 2): a key never holds bytes that do not hash to what its writer promised,
and an existing key is never overwritten.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import BinaryIO, Literal, Protocol, runtime_checkable

from tiers.errors import InvalidKey, ObjectNotFound

#: Read and write granularity for streaming copies. Large enough that the per-call
#: overhead of Python, hashing and syscalls vanishes, small enough to keep memory flat.
CHUNK_SIZE = 4 * 1024 * 1024

#: First key segment reserved for staged (not yet promoted) bytes; never a valid key,
#: never listed.
STAGING_SEGMENT = ".staging"

#: First key segment reserved for a cold tier's restore bookkeeping (the local-cold
#: tier keeps one small state file per restored object there); never a valid key.
RESTORE_SEGMENT = ".restore"

RESERVED_SEGMENTS = frozenset({STAGING_SEGMENT, RESTORE_SEGMENT})

RestoreStatus = Literal["not-needed", "not-started", "in-progress", "ready"]
"""Where one object stands on the way to being readable (see :class:`RestoreState`)."""


@dataclass(frozen=True)
class ObjectInfo:
    """What a tier knows about one stored object."""

    key: str
    size: int
    modified: dt.datetime | None = None
    etag: str | None = None
    checksum_sha256: str | None = None
    storage_class: str | None = None
    b3: str | None = None
    """BLAKE3 of the bytes, when the tier computed it (always after a put)."""


@dataclass(frozen=True)
class TierCapabilities:
    """What a backend can do, so callers pick the right strategy."""

    atomic_promote: bool = True
    native_digests: bool = False
    """The provider keeps its own checksum (S3 ``ChecksumSHA256``/ETag)."""
    needs_restore: bool = False
    """Deferred retrieval: reads need a restore first (Glacier-like)."""
    ranged_reads: bool = True


@dataclass(frozen=True)
class RestoreState:
    """Whether one object can be read now, and if not, when.

    ``not-needed``: the object is readable as it is (a hot tier, or an object of a
    cold tier's bucket in an instant storage class). ``not-started``: cold and not
    restored, or its restored copy expired. ``in-progress``: a restore was accepted;
    ``ready_at`` estimates its completion when the tier knows (S3's ``x-amz-restore``
    header does not say). ``ready``: readable until ``expires_at``.
    """

    status: RestoreStatus
    ready_at: dt.datetime | None = None
    """When the restore completed (``ready``) or is expected to (``in-progress``), if known."""
    expires_at: dt.datetime | None = None
    """When the restored copy goes away again (known once ``ready``)."""

    @property
    def readable(self) -> bool:
        """``open`` would succeed now (for an existing object)."""
        return self.status in ("not-needed", "ready")


@dataclass(frozen=True)
class RetrievalOption:
    """One restore speed a cold tier offers, with its usual delay and price.

    Shown to the user before a restore, so the cost and the wait are known up front.
    The figures come from the tier's settings (typical values, not a quote).
    """

    speed: str
    """What to pass as ``speed`` to :meth:`ColdTier.restore` (``"standard"``, ...)."""
    typical_delay: dt.timedelta
    price_per_gib: float
    """Retrieval price per GiB restored, in the currency of the tier's settings."""

    def cost(self, size: int) -> float:
        """Estimated retrieval price of restoring ``size`` bytes."""
        return self.price_per_gib * size / 2**30


@runtime_checkable
class Upload(Protocol):
    """A staged write. Bytes are written, then promoted under a key or aborted.

    Used as a context manager: leaving the block without :meth:`promote` aborts
    and removes the staged bytes.
    """

    @property
    def size(self) -> int: ...

    @property
    def b3(self) -> str:
        """BLAKE3 hex digest of the bytes written so far."""
        ...

    def write(self, data: bytes | memoryview) -> None: ...

    def promote(
        self, key: str, *, expect_b3: str | None = None, replace: bool = False
    ) -> ObjectInfo:
        """Make the staged bytes visible under ``key``, atomically and durably.

        ``replace=True`` is for repair only: it swaps a damaged object for proven
        bytes in one step (readers see the old object or the new one, never none),
        so no crash can leave the key empty between a delete and a put.

        Raises:
            DigestMismatch: ``expect_b3`` is given and differs from :attr:`b3`;
                nothing is promoted and the staged bytes are removed.
            ObjectExists: ``key`` already holds an object and ``replace`` is false;
                the staged bytes are removed.
        """
        ...

    def abort(self) -> None: ...

    def __enter__(self) -> Upload: ...

    def __exit__(self, *exc: object) -> None: ...


@runtime_checkable
class Tier(Protocol):
    """One place bytes live: a local folder, an S3 bucket, a cold store, a partner."""

    name: str
    capabilities: TierCapabilities

    def begin_put(self) -> Upload:
        """Start a staged write (see :class:`Upload`)."""
        ...

    def put(self, key: str, source: BinaryIO, *, expect_b3: str | None = None) -> ObjectInfo:
        """Stream ``source`` into ``key`` (staging, digest check, atomic promote)."""
        ...

    def open(
        self, key: str, *, offset: int = 0, length: int | None = None
    ) -> AbstractContextManager[BinaryIO]:
        """Open an object (or the byte range ``offset``..``offset+length``) for streaming reads.

        Raises:
            ObjectNotFound: no such key.
            NeedsRestore: a cold object that was not restored.
        """
        ...

    def stat(self, key: str) -> ObjectInfo:
        """Size and provider metadata of one object, reading no content."""
        ...

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, in key order, staging excluded."""
        ...

    def delete(self, key: str) -> None:
        """Remove one object. Deleting a missing key is not an error (idempotent)."""
        ...

    def sweep_staging(self, older_than: dt.datetime) -> int:
        """Remove staged writes last touched before ``older_than`` that were never
        promoted (a crash left them); returns how many. Promoted objects are never
        touched, and a write in progress is younger than any sensible grace period."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class ColdTier(Tier, Protocol):
    """A tier with deferred retrieval (Glacier-like): writes are immediate, reads are not.

    ``stat``, ``exists``, ``list``, ``delete`` and writes work on any object, as
    on S3 Glacier; ``open`` of an object that is not readable now raises
    :class:`~tiers.errors.NeedsRestore`. A restore is asked for with :meth:`restore`
    (S3 ``RestoreObject``), completes after a delay and lasts some days, after which
    the object needs a restore again. ``capabilities.needs_restore`` is true when
    what the tier writes needs restores; an S3 tier of an instant storage class
    still answers these methods, per object (a lifecycle rule may have moved some
    objects to Glacier), with ``not-needed`` for the others.
    """

    restore_days: int
    """How many days a restore lasts when the caller has no reason to choose."""

    def restore(self, key: str, *, days: int, speed: str = "standard") -> RestoreState:
        """Ask for ``key`` to become readable for ``days`` days, at ``speed``.

        Idempotent: asking again while a restore is in progress changes nothing
        harmful (S3 answers ``RestoreAlreadyInProgress``); asking again once ready
        moves the expiry to ``days`` from now (S3 counts from the new request; the
        local-cold tier only ever extends it).

        Raises:
            ObjectNotFound: no such key.
            ValueError: ``speed`` is not one of :meth:`retrieval_options`, or
                ``days`` is less than 1.
        """
        ...

    def restore_status(self, key: str) -> RestoreState:
        """Where ``key`` stands now (S3: ``HeadObject``'s ``x-amz-restore`` header).

        Raises:
            ObjectNotFound: no such key.
        """
        ...

    def retrieval_options(self) -> list[RetrievalOption]:
        """Every speed this tier offers, fastest first, with delay and price."""
        ...


@runtime_checkable
class HashingTier(Tier, Protocol):
    """A tier that hashes a stored object where its bytes are, faster than reading
    them out through :meth:`Tier.open` (a local folder hashes a file in place)."""

    def hash_object(self, key: str, *, keyed: bytes | None = None) -> tuple[str, int]:
        """BLAKE3 of the object's bytes (keyed BLAKE3, ``blake3(key=keyed)``, when
        ``keyed`` is given) and their count.

        Raises:
            ObjectNotFound: no such key.
            NeedsRestore: a cold object that is not restored.
            TierError: the bytes could not be read.
        """
        ...


@runtime_checkable
class ProvingTier(Tier, Protocol):
    """A tier whose holder proves possession without sending the bytes back (a partner
    node, issue 5): it answers the keyed BLAKE3 of what it stores under a fresh key we
    chose, which it cannot compute without reading every stored byte.

    Such a tier may name what it stores by the digest of the bytes it holds (a
    partner's content addresses, or the BLAKE3 of a sealed copy): :meth:`Upload.promote`
    then returns the key to record, which may differ from the one asked for, and that
    key is what ``open``, ``stat``, ``delete`` and ``prove`` take afterwards.
    """

    put_check: str
    """How a promoted copy was proven (``proof of possession``, or the holder's own
    check of the digest): a promote that returns has proven it that way."""

    def prove(self, keys: Sequence[str], challenge: bytes) -> dict[str, str | None]:
        """The holder's keyed BLAKE3 (``blake3(key=challenge)``) of each key's stored
        bytes; None for a key it does not hold.

        Raises:
            TierUnavailable: the holder did not answer (nothing is known of the bytes).
        """
        ...

    def reported_damage(self) -> list[str]:
        """Keys of the copies the holder's own audits found damaged or missing, which it
        reports so that we prove them now rather than at their next scheduled audit (a
        report is a hint, never a verdict: only our proof marks a copy bad).

        Raises:
            TierUnavailable: the holder did not answer.
        """
        ...

    def expected_proof(self, stored: Iterable[bytes], *, stored_b3: str, challenge: bytes) -> str:
        """What :meth:`prove` must answer for a copy of ``stored`` (the bytes we hold,
        whose BLAKE3 is ``stored_b3``), as this tier sends them (sealed or not)."""
        ...


def restore_status_of(tier: Tier, key: str) -> RestoreState:
    """:meth:`ColdTier.restore_status` for a cold tier; ``not-needed`` for any other.

    Raises:
        ObjectNotFound: no such key (checked with ``stat`` on a hot tier).
    """
    if isinstance(tier, ColdTier):
        return tier.restore_status(key)
    tier.stat(key)
    return RestoreState("not-needed")


def copy_stream(source: BinaryIO, upload: Upload, chunk_size: int = CHUNK_SIZE) -> None:
    """Copy a binary stream into an upload in bounded chunks (flat memory)."""
    while chunk := source.read(chunk_size):
        upload.write(chunk)


def check_key(key: str) -> str:
    """Return ``key`` unchanged if it is a valid object key, else raise :class:`InvalidKey`.

    Keys are relative ``/``-separated paths (``blobs/b3/ab/cd/<hex>``) that every
    backend maps onto something path-like: a folder tree, an S3 key under a prefix.
    One grammar for all tiers refuses whatever could escape a tier's root or make two
    spellings name one object: a leading ``/``, empty, ``.`` or ``..`` segments, a
    backslash (a separator on Windows), NUL and other control characters, and the
    reserved :data:`STAGING_SEGMENT` and :data:`RESTORE_SEGMENT` as first segment.
    """
    _check_characters(key, "key")
    if not key:
        raise InvalidKey("empty key", key=key)
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise InvalidKey(f"key {key!r} has an empty, '.' or '..' segment", key=key)
    first = key.split("/", 1)[0]
    if first in RESERVED_SEGMENTS:
        raise InvalidKey(f"key {key!r} is inside the reserved {first}/ area", key=key)
    return key


def check_prefix(prefix: str) -> str:
    """Return ``prefix`` if it may start valid keys (see :func:`check_key`), else raise.

    A prefix is a plain string prefix, not a folder: ``"a"`` matches ``a/b`` and
    ``ab``. Every complete segment must be valid; the last may be partial or empty.
    """
    _check_characters(prefix, "prefix")
    for segment in prefix.split("/")[:-1]:
        if segment in ("", ".", ".."):
            raise InvalidKey(f"prefix {prefix!r} has an empty, '.' or '..' segment", key=prefix)
    return prefix


def _check_characters(text: str, what: str) -> None:
    if not isinstance(text, str):
        raise InvalidKey(f"{what} must be a str, not {type(text).__name__}")
    if text.startswith("/"):
        raise InvalidKey(f"{what} {text!r} is absolute", key=text)
    if "\\" in text or any(ord(char) < 0x20 or ord(char) == 0x7F for char in text):
        raise InvalidKey(f"{what} {text!r} holds a backslash or a control character", key=text)


def exists_by_stat(tier: Tier, key: str) -> bool:
    """:meth:`Tier.exists` for a backend whose ``stat`` is its cheapest question."""
    try:
        tier.stat(key)
    except ObjectNotFound:
        return False
    return True
