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
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import BinaryIO, Protocol, runtime_checkable

#: Read and write granularity for streaming copies. Large enough that the per-call
#: overhead of Python, hashing and syscalls vanishes, small enough to keep memory flat.
CHUNK_SIZE = 4 * 1024 * 1024


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

    def promote(self, key: str, *, expect_b3: str | None = None) -> ObjectInfo:
        """Make the staged bytes visible under ``key``, atomically and durably.

        Raises:
            DigestMismatch: ``expect_b3`` is given and differs from :attr:`b3`;
                nothing is promoted and the staged bytes are removed.
            ObjectExists: ``key`` already holds an object; the staged bytes are removed.
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

    def close(self) -> None: ...


def copy_stream(source: BinaryIO, upload: Upload, chunk_size: int = CHUNK_SIZE) -> None:
    """Copy a binary stream into an upload in bounded chunks (flat memory)."""
    while chunk := source.read(chunk_size):
        upload.write(chunk)
