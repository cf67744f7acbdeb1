"""Unpacking a zip or tar someone sent us, trusting nothing it says about itself.

Archives are the classic way in for path traversal ("zip slip": ``../`` segments,
absolute names, ``\\`` separators, drive letters), link tricks (a symbolic link
member, then a file written "through" it; a hard link to a file outside), special
files (devices, FIFOs) and bombs (a few KiB that expand to terabytes, or a million
empty files). So:

1. Every member header is read and checked **before a byte is written**: its name
   must stay inside the target after normalisation, its type must be a regular
   file or a folder, no name may appear twice, and the declared sizes and the
   member count must fit :class:`ExtractLimits`. Every problem is reported at once.
2. Then members are written into a fresh private folder, each file created with
   ``O_EXCL | O_NOFOLLOW`` and mode 0600 (no owner, mode or time from the archive
   is applied), counting the bytes actually written, so a header that lies about a
   size cannot write past the limits.

Formats are recognised by their first bytes, never by the file name: zip
(``PK``), and tar, plain or compressed with gzip, bzip2 or xz (``tarfile``'s
stream mode, so memory stays flat whatever the member count).
"""

from __future__ import annotations

import os
import re
import stat
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO

from archive.errors import InvalidInput, InvalidTree

TiB = 1024**4
CHUNK = 1024 * 1024
_DRIVE = re.compile(r"^[A-Za-z]:")
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_SPECIAL_MODES = {
    stat.S_IFLNK: "a symbolic link",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFSOCK: "a socket",
}


@dataclass(frozen=True)
class ExtractLimits:
    """What one archive may expand to: bytes of all files, and members (files and folders)."""

    max_bytes: int = 1 * TiB
    max_files: int = 1_000_000


class UnsafeArchive(InvalidTree):
    """An archive refused before or while unpacking; ``reasons`` lists every problem."""

    def __init__(self, reasons: list[str]) -> None:
        super().__init__([InvalidInput(r) for r in reasons])
        self.reasons = reasons


@dataclass
class ExtractReport:
    files: int = 0
    folders: int = 0
    bytes: int = 0


@dataclass(frozen=True)
class _Member:
    name: str
    """Normalised relative path ('' for the archive's root folder)."""
    is_dir: bool
    size: int


@dataclass
class _Plan:
    limits: ExtractLimits
    reasons: list[str] = field(default_factory=list)
    files: set[str] = field(default_factory=set)
    folders: set[str] = field(default_factory=set)
    members: int = 0
    declared_bytes: int = 0

    def refuse(self, raw: str, why: str) -> None:
        if len(self.reasons) < 1000:
            self.reasons.append(f"member {raw!r}: {why}")

    def add(self, raw: str, member: _Member | None) -> None:
        self.members += 1
        if member is None or not member.name:
            return
        if member.is_dir:
            self.folders.add(member.name)
            return
        if member.name in self.files:
            self.refuse(raw, "appears twice in the archive")
        self.files.add(member.name)
        self.declared_bytes += member.size

    def over_limits(self) -> bool:
        """Past a limit already: reading further headers (and inflating) would be wasted."""
        return self.members > self.limits.max_files or self.declared_bytes > self.limits.max_bytes

    def check(self, raw: str, member: _Member | None, why: str) -> None:
        if member is None:
            self.refuse(raw, why)
        else:
            self.add(raw, member)

    def finish(self) -> None:
        limits = self.limits
        if self.members > limits.max_files:
            self.reasons.append(
                f"{self.members} members, more than the limit of {limits.max_files}"
            )
        if self.declared_bytes > limits.max_bytes:
            self.reasons.append(
                f"files would expand to {self.declared_bytes} bytes, more than the limit "
                f"of {limits.max_bytes}"
            )
        for name in sorted(self.files):
            parts = name.split("/")
            for i in range(1, len(parts)):
                if "/".join(parts[:i]) in self.files:
                    self.reasons.append(f"{name!r} lies below {'/'.join(parts[:i])!r}, a file")
                    break
            if name in self.folders:
                self.reasons.append(f"{name!r} is both a file and a folder")
        if self.reasons:
            raise UnsafeArchive(self.reasons)


def member_path(raw: str) -> str:
    """The relative path a member name may be written to, or raise ``ValueError``.

    Leading ``./`` and empty or ``.`` segments are dropped (tar writes them);
    ``..``, absolute names, backslashes, drive letters and NUL are refused.
    """
    if "\x00" in raw:
        raise ValueError("name contains NUL")
    if "\\" in raw:
        raise ValueError("name contains a backslash (a Windows separator could climb out)")
    if raw.startswith("/"):
        raise ValueError("absolute path")
    if _DRIVE.match(raw):
        raise ValueError("Windows drive path")
    segments = [s for s in raw.split("/") if s not in ("", ".")]
    if ".." in segments:
        raise ValueError("a '..' segment would leave the target folder")
    return "/".join(segments)


def _zip_members(
    archive: zipfile.ZipFile,
) -> Iterator[tuple[zipfile.ZipInfo, _Member | None, str]]:
    """(entry, member or None, why refused) for each entry of the central directory."""
    for info in archive.infolist():
        try:
            name = member_path(info.filename)
        except ValueError as exc:
            yield info, None, str(exc)
            continue
        kind = stat.S_IFMT(info.external_attr >> 16)
        if kind in _SPECIAL_MODES:
            yield info, None, f"{_SPECIAL_MODES[kind]}, not a regular file"
        elif info.flag_bits & 0x1:
            yield info, None, "encrypted"
        else:
            yield info, _Member(name, info.is_dir(), info.file_size), ""


def _tar_kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return "a symbolic link"
    if member.islnk():
        return "a hard link"
    if member.ischr():
        return "a character device"
    if member.isblk():
        return "a block device"
    if member.isfifo():
        return "a FIFO (named pipe)"
    if not (member.isreg() or member.isdir()):
        return f"of unsupported type {member.type!r}"
    return ""


def _tar_members(archive: tarfile.TarFile) -> Iterator[tuple[tarfile.TarInfo, _Member | None, str]]:
    while (info := archive.next()) is not None:
        archive.members.clear()  # type: ignore[attr-defined]  # else every header is kept
        kind = _tar_kind(info)
        try:
            name = member_path(info.name)
        except ValueError as exc:
            yield info, None, str(exc)
            continue
        if kind:
            yield info, None, f"{kind}, not a regular file"
        else:
            yield info, _Member(name, info.isdir(), info.size), ""


def archive_format(path: Path) -> str:
    """``zip`` or ``tar`` (plain or compressed), from the first bytes.

    Raises:
        UnsafeArchive: neither.
    """
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head in _ZIP_MAGIC:
        return "zip"
    try:
        with tarfile.open(path, "r|*") as archive:
            archive.next()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise UnsafeArchive([f"not a zip or tar archive ({exc})"]) from exc
    return "tar"


def safe_extract(path: Path, dest: Path, limits: ExtractLimits | None = None) -> ExtractReport:
    """Unpack the zip or tar at ``path`` into the empty folder ``dest``.

    On any error ``dest`` may hold part of the archive: the caller made it and
    removes it (a temporary folder).

    Raises:
        UnsafeArchive: every reason the archive is refused (nothing outside
            ``dest`` was touched).
    """
    limits = limits or ExtractLimits()
    plan = _Plan(limits)
    report = ExtractReport()
    writer = _Writer(dest, limits, report)
    try:
        if archive_format(path) == "zip":
            with zipfile.ZipFile(path) as archive:
                for zinfo, member, why in _zip_members(archive):
                    plan.check(zinfo.filename, member, why)
                plan.finish()
                for zinfo, member, _ in _zip_members(archive):
                    assert member is not None
                    writer.write(zinfo.filename, member, partial(archive.open, zinfo))
        else:
            with tarfile.open(path, "r|*") as tar:
                for info, member, why in _tar_members(tar):
                    plan.check(info.name, member, why)
                    if plan.over_limits():
                        break
            plan.finish()
            with tarfile.open(path, "r|*") as tar:
                for info, member, _ in _tar_members(tar):
                    assert member is not None
                    writer.write(info.name, member, partial(_tar_open, tar, info))
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, NotImplementedError) as exc:
        raise UnsafeArchive([f"corrupt or unsupported archive: {exc}"]) from exc
    except OSError as exc:
        raise UnsafeArchive([f"cannot unpack: {exc.strerror or exc}"]) from exc
    return report


def _tar_open(archive: tarfile.TarFile, info: tarfile.TarInfo) -> IO[bytes]:
    handle = archive.extractfile(info)
    if handle is None:  # only for non-regular members, which were refused above
        raise UnsafeArchive([f"member {info.name!r}: no content"])
    return handle


class _Writer:
    def __init__(self, dest: Path, limits: ExtractLimits, report: ExtractReport) -> None:
        self.dest = dest
        self.limits = limits
        self.report = report

    def write(
        self,
        raw: str,
        member: _Member,
        open_member: Callable[[], AbstractContextManager[IO[bytes]]],
    ) -> None:
        if not member.name:
            return
        target = self.dest / member.name
        if member.is_dir:
            target.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.report.folders += 1
            return
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(target, flags, 0o600)
        written = 0
        with os.fdopen(fd, "wb") as out, open_member() as source:
            while chunk := source.read(CHUNK):
                written += len(chunk)
                self.report.bytes += len(chunk)
                if written > member.size:
                    raise UnsafeArchive([f"member {raw!r}: more bytes than its header declares"])
                if self.report.bytes > self.limits.max_bytes:
                    raise UnsafeArchive(
                        [f"files expand past the limit of {self.limits.max_bytes} bytes"]
                    )
                out.write(chunk)
        if written != member.size:
            raise UnsafeArchive(
                [f"member {raw!r}: {written} bytes, but its header declares {member.size}"]
            )
        self.report.files += 1
