"""A tier in a local folder: one file per object, written once, promoted atomically.

Layout (design section 3): the object under key ``blobs/b3/ab/cd/<hex>`` is the file
``<path>/blobs/b3/ab/cd/<hex>``; bytes being written live in ``<path>/.staging/``,
which :meth:`LocalTier.list` never shows. The folder is self-describing: ``b3sum``
can check every blob by its name, and a plain ``cp -a`` or ``rsync`` copies the tier.

Durability follows the usual POSIX recipe (as in SQLite and restic's local backend):
write the staging file, ``fsync`` it, give it its final name, ``fsync`` the folder
that holds the new name (and the parents of folders created on the way), so a power
cut after :meth:`LocalUpload.promote` returned cannot lose the object or leave a
truncated one behind its key.
"""

from __future__ import annotations

import builtins
import datetime as dt
import errno
import io
import os
import stat as stat_mode
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Self

import blake3

from tiers.base import (
    STAGING_SEGMENT,
    ObjectInfo,
    TierCapabilities,
    check_key,
    check_prefix,
    copy_stream,
    exists_by_stat,
)
from tiers.errors import (
    DigestMismatch,
    ObjectExists,
    ObjectNotFound,
    TierConfigError,
    TierError,
)
from tiers.mapped import MappingFailed, hash_mapped
from tiers.reading import read_ahead

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = ["LocalTier", "LocalUpload"]

#: Single-threaded BLAKE3 (~2 GiB/s per core) outruns the disk. Measured on a 2-core
#: machine: a 256 MiB put ran at ~300 MiB/s with or without ``blake3.AUTO`` (noise
#: larger than any difference), and AUTO made 64 KiB updates slower in isolation.
_HASH_THREADS = 1

#: Files from this size are hashed through a memory map by :meth:`LocalTier.hash_object`
#: (a helper process costs a round trip; below, reading is as fast).
MAPPED_FROM = 8 * 1024 * 1024


class LocalTier:
    """Objects as files under ``path`` (see the module docstring for the layout).

    Args:
        name: the tier's name, carried by every error it raises.
        path: the root folder; created if missing.
        fsync: flush files and folders to stable storage before a promote or a
            delete returns. Only turn it off for tests and throwaway data.

    Raises:
        TierConfigError: the folder cannot be created or written.
    """

    capabilities = TierCapabilities(atomic_promote=True, native_digests=False)

    def __init__(self, name: str, path: str | os.PathLike[str], fsync: bool = True) -> None:
        self.name = name
        self.root = Path(path)
        self.fsync = fsync
        self.staging = self.root / STAGING_SEGMENT
        try:
            self.staging.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TierConfigError(
                f"tier {name!r}: cannot use folder {self.root}: {exc.strerror}", tier=name
            ) from exc

    def __repr__(self) -> str:
        return f"LocalTier({self.name!r}, {str(self.root)!r}, fsync={self.fsync})"

    def begin_put(self) -> LocalUpload:
        """Start a staged write into a fresh file under ``.staging/``."""
        staged = self.staging / f"upload-{uuid.uuid4().hex}"
        with self._os_errors(None):
            file = open(staged, "xb")  # noqa: SIM115 - owned and closed by the upload
        return LocalUpload(self, staged, file)

    def put(self, key: str, source: BinaryIO, *, expect_b3: str | None = None) -> ObjectInfo:
        """Stream ``source`` into ``key``; see :meth:`LocalUpload.promote`.

        A present key is refused before any byte is read, so re-adding a known blob
        costs one ``stat``; the promote still decides atomically.
        """
        check_key(key)
        if self.exists(key):
            raise ObjectExists(f"{key}: already stored", tier=self.name, key=key)
        with self.begin_put() as upload:
            copy_stream(source, upload)
            return upload.promote(key, expect_b3=expect_b3)

    def open(self, key: str, *, offset: int = 0, length: int | None = None) -> io.BufferedReader:
        """Open ``key`` for reading ``length`` bytes from ``offset`` (to the end if None).

        A range past the end is cut at the end, as an HTTP ``Range`` is. The returned
        stream is its own context manager.
        """
        check_key(key)
        _check_range(offset, length)
        with self._os_errors(key):
            file = open(self._path(key), "rb", buffering=0)  # noqa: SIM115 - returned open
            try:
                if not stat_mode.S_ISREG(os.fstat(file.fileno()).st_mode):
                    raise ObjectNotFound(f"{key}: not an object", tier=self.name, key=key)
                file.seek(offset)
            except BaseException:
                file.close()
                raise
        return io.BufferedReader(_RangeReader(self, key, file, length))

    def hash_object(self, key: str, *, keyed: bytes | None = None) -> tuple[str, int]:
        """BLAKE3 (keyed when ``keyed`` is given) and size of ``key``'s file.

        From :data:`MAPPED_FROM` bytes the file is hashed in place, mapped in a helper
        process (:mod:`tiers.mapped`: a truncated or unreadable file kills the helper,
        not this process), and read instead when that fails; smaller files are read.
        The file is opened through :meth:`open`, so what it refuses is refused here.
        """
        with self.open(key) as stream:
            size = os.fstat(stream.fileno()).st_size
            if size >= MAPPED_FROM:
                try:
                    return hash_mapped(stream.fileno(), size, key=keyed), size
                except MappingFailed:
                    pass  # read it: the same damage is then an ordinary error
            hasher = blake3.blake3(key=keyed) if keyed else blake3.blake3()
            read = 0
            for chunk in read_ahead(stream):
                hasher.update(chunk)
                read += len(chunk)
            return hasher.hexdigest(), read

    def stat(self, key: str) -> ObjectInfo:
        """Size and modification time of ``key``, from one ``stat`` call."""
        check_key(key)
        with self._os_errors(key):
            st = os.stat(self._path(key))
        if not stat_mode.S_ISREG(st.st_mode):
            raise ObjectNotFound(f"{key}: not an object", tier=self.name, key=key)
        return _info(key, st)

    def exists(self, key: str) -> bool:
        return exists_by_stat(self, key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects whose key starts with ``prefix``, in key (code point) order.

        Walks only the folder that holds the prefix's last segment, and sorts each
        folder's entries with a ``/`` appended to folder names, so the depth-first
        walk yields keys in the same order as a flat sort (and as S3 lists them).
        """
        check_prefix(prefix)
        folder, _, name_start = prefix.rpartition("/")
        yield from self._walk(self.root / folder, folder, name_start)

    def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is fine. Emptied folders are kept on purpose:
        removing them would race with a concurrent promote creating a file in them."""
        check_key(key)
        path = self._path(key)
        with self._os_errors(key):
            try:
                path.unlink()
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                return
            if self.fsync:
                _fsync_folder(path.parent)

    def _object_changed(self, key: str) -> None:
        """Hook: the object under ``key`` was replaced or deleted (a cold tier drops its
        restore state: a new object starts unrestored, as on S3)."""

    def sweep_staging(self, older_than: dt.datetime) -> int:
        """Unlink files under ``.staging/`` last modified before ``older_than``."""
        cutoff = older_than.timestamp()
        removed = 0
        with self._os_errors(None):
            try:
                entries = list(os.scandir(self.staging))
            except FileNotFoundError:
                return 0
            for entry in entries:
                try:
                    if (
                        entry.is_file(follow_symlinks=False)
                        and entry.stat(follow_symlinks=False).st_mtime < cutoff
                    ):
                        os.unlink(entry.path)
                        removed += 1
                except FileNotFoundError:
                    continue  # promoted or aborted meanwhile
        return removed

    def close(self) -> None:
        """Nothing to release: files are opened per call."""

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*key.split("/"))

    def _walk(self, folder: Path, folder_key: str, name_start: str) -> Iterator[ObjectInfo]:
        with self._os_errors(folder_key or None):
            try:
                entries = list(os.scandir(folder))
            except (FileNotFoundError, NotADirectoryError):
                return
        entries.sort(key=lambda e: e.name + "/" if e.is_dir(follow_symlinks=False) else e.name)
        for entry in entries:
            if not entry.name.startswith(name_start):
                continue
            if not folder_key and entry.name == STAGING_SEGMENT:
                continue
            key = f"{folder_key}/{entry.name}" if folder_key else entry.name
            if entry.is_dir(follow_symlinks=False):
                yield from self._walk(Path(entry.path), key, "")
            elif entry.is_file(follow_symlinks=False):
                with self._os_errors(key):
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue  # deleted while we walked
                yield _info(key, st)

    def _make_folders(self, folder: Path, key: str) -> builtins.list[Path]:
        """Create ``folder`` and its missing ancestors below the root; return the new ones."""
        missing: builtins.list[Path] = []
        current = folder
        while current != self.root and not current.is_dir():
            missing.append(current)
            current = current.parent
        for path in reversed(missing):
            try:
                path.mkdir()
            except FileExistsError as exc:
                if not path.is_dir():
                    part = path.relative_to(self.root).as_posix()
                    raise TierError(
                        f"{key}: {part!r} is an object; a folder cannot also hold keys below it",
                        tier=self.name,
                        key=key,
                    ) from exc
        return missing

    @contextmanager
    def _os_errors(self, key: str | None) -> Iterator[None]:
        """Translate ``OSError`` into the tier error tree (the boundary of this backend)."""
        try:
            yield
        except OSError as exc:
            raise _translate(exc, tier=self.name, key=key) from exc


class LocalUpload:
    """Bytes on their way into a :class:`LocalTier`: a staging file, hashed as written."""

    def __init__(self, tier: LocalTier, staged: Path, file: BinaryIO) -> None:
        self._tier = tier
        self._staged = staged
        self._file = file
        self._hasher = blake3.blake3(max_threads=_HASH_THREADS)
        self._size = 0
        self._closed = False

    @property
    def size(self) -> int:
        return self._size

    @property
    def b3(self) -> str:
        return self._hasher.hexdigest()

    def write(self, data: bytes | memoryview) -> None:
        if self._closed:
            raise ValueError("write to an upload that was promoted or aborted")
        self._hasher.update(data)
        with self._tier._os_errors(None):
            self._file.write(data)
        self._size += len(data)

    def promote(
        self, key: str, *, expect_b3: str | None = None, replace: bool = False
    ) -> ObjectInfo:
        """Check the digest, then give the staged file its key, never replacing one
        (unless ``replace``: then ``os.replace`` swaps it in, in one step).

        ``os.link(staged, final)`` is the no-clobber form of ``os.replace``: it makes
        the complete file appear under its final name in one step, and fails with
        ``EEXIST`` instead of replacing a present object, so of two concurrent
        writers of one key exactly one wins. The staging name is unlinked afterwards.
        (``renameat2(RENAME_NOREPLACE)`` would do both at once, but Python does not
        expose it.) Promote is final: whatever happens, the staged bytes are gone
        after it returns or raises.

        Raises:
            DigestMismatch: the bytes do not hash to ``expect_b3``.
            ObjectExists: ``key`` is already stored; it is left untouched.
            TierConfigError: the folder's file system cannot make hard links.
        """
        if self._closed:
            raise ValueError("promote of an upload that was promoted or aborted")
        tier = self._tier
        try:
            check_key(key)
            found = self.b3
            if expect_b3 is not None and expect_b3.lower() != found:
                raise DigestMismatch(key, "blake3", expect_b3, found, tier=tier.name)
            final = tier._path(key)
            with tier._os_errors(key):
                self._file.flush()
                if tier.fsync:
                    os.fsync(self._file.fileno())
                self._file.close()
                created = tier._make_folders(final.parent, key)
                if replace:
                    os.replace(self._staged, final)
                    tier._object_changed(key)
                else:
                    self._link(final, key)
                if tier.fsync:
                    for folder in {final.parent, *(path.parent for path in created)}:
                        _fsync_folder(folder)
                st = os.stat(final)
        finally:
            self.abort()
        return _info(key, st, b3=found)

    def _link(self, final: Path, key: str) -> None:
        try:
            os.link(self._staged, final)
        except FileExistsError as exc:
            raise ObjectExists(f"{key}: already stored", tier=self._tier.name, key=key) from exc
        except OSError as exc:
            if exc.errno in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise TierConfigError(
                    f"tier {self._tier.name!r}: cannot hard-link into {final.parent} "
                    f"({exc.strerror}); write-once promotion needs a file system with hard "
                    "links and a writable, non-immutable folder",
                    tier=self._tier.name,
                    key=key,
                ) from exc
            raise

    def abort(self) -> None:
        """Drop the staged bytes. Idempotent; a no-op after :meth:`promote`."""
        if self._closed:
            return
        self._closed = True
        self._file.close()
        self._staged.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()


class _RangeReader(io.RawIOBase):
    """At most ``limit`` bytes of an open file, with OS errors translated."""

    def __init__(self, tier: LocalTier, key: str, file: io.FileIO, limit: int | None) -> None:
        self._tier = tier
        self._key = key
        self._file = file
        self._remaining = limit

    def readable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._file.fileno()

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        if self._remaining is not None:
            view = view[: self._remaining]
        if not view:
            return 0
        with self._tier._os_errors(self._key):
            count = self._file.readinto(view) or 0
        if self._remaining is not None:
            self._remaining -= count
        return count

    def close(self) -> None:
        self._file.close()
        super().close()


def _check_range(offset: int, length: int | None) -> None:
    if offset < 0 or (length is not None and length < 0):
        raise ValueError(f"negative range: offset={offset}, length={length}")


def _info(key: str, st: os.stat_result, b3: str | None = None) -> ObjectInfo:
    modified = dt.datetime.fromtimestamp(st.st_mtime, tz=dt.UTC)
    return ObjectInfo(key=key, size=st.st_size, modified=modified, b3=b3)


def _fsync_folder(folder: Path) -> None:
    """Make a folder's entries (new or removed names) durable: POSIX needs a folder fsync."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _translate(exc: OSError, *, tier: str, key: str | None) -> TierError:
    where = f"{key}: " if key else f"tier {tier!r}: "
    if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EISDIR):
        return ObjectNotFound(f"{where}no such object", tier=tier, key=key)
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        reason = "permission denied or read-only file system"
    elif exc.errno in (errno.ENOSPC, errno.EDQUOT):
        reason = "no space left (disk full or quota reached)"
    elif exc.errno == errno.EIO:
        reason = "I/O error, the disk may be failing"
    else:
        reason = "operating system error"
    return TierError(f"{where}{reason}: {exc.strerror} ({exc.filename})", tier=tier, key=key)
