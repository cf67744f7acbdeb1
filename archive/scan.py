"""Walking a folder offered for ingest, and refusing what may not enter the archive.

The whole tree is checked before a byte is stored, and every problem is reported
at once (as bagit-python collects its errors): paths that are not valid entry
paths, names that collide after NFC normalisation, symbolic links that leave the
tree or loop, dangling links, FIFOs, sockets and devices, unreadable files.
Symbolic links inside the tree are followed and archived as the file they name.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from archive.errors import InvalidInput, InvalidPath, InvalidTree, PathCollision, UnsupportedFile
from archive.paths import case_collisions, normalize_path

_SPECIAL = {
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}


@dataclass(frozen=True)
class SourceFile:
    path: str
    """Entry path: relative, NFC, '/'-separated."""
    abspath: str
    size: int
    mtime_ns: int
    inode: int


@dataclass
class ScanResult:
    files: list[SourceFile] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def scan_tree(root: Path) -> ScanResult:
    """List the regular files under ``root`` (or ``root`` itself, if a file).

    Raises:
        InvalidTree: every problem found; nothing has been stored.
        UnsupportedFile: ``root`` does not exist or is not a folder or file.
    """
    problems: list[InvalidInput] = []
    result = ScanResult()
    try:
        root_real = os.path.realpath(root, strict=True)
    except OSError as exc:
        raise UnsupportedFile(str(root), exc.strerror or "does not exist") from exc
    if os.path.isfile(root_real):
        try:
            _add(result, problems, normalize_path(root.name), root_real, os.stat(root_real))
        except InvalidPath as exc:
            problems.append(exc)
        if problems:
            raise InvalidTree(problems)
        return result
    if not os.path.isdir(root_real):
        raise UnsupportedFile(str(root), "not a folder or regular file")

    seen_names: dict[str, str] = {}
    stack: list[tuple[str, str, tuple[str, ...]]] = [(root_real, "", (root_real,))]
    while stack:
        folder, rel, ancestors = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            problems.append(UnsupportedFile(rel or ".", f"cannot list folder: {exc.strerror}"))
            continue
        for entry in entries:
            rel_path = f"{rel}{entry.name}"
            try:
                st = entry.stat(follow_symlinks=False)
                real = entry.path
                if stat.S_ISLNK(st.st_mode):
                    real = os.path.realpath(entry.path)
                    if not _inside(real, root_real):
                        problems.append(
                            UnsupportedFile(rel_path, f"symbolic link leaves the tree (-> {real})")
                        )
                        continue
                    try:
                        st = os.stat(real)
                    except OSError:
                        problems.append(UnsupportedFile(rel_path, "dangling symbolic link"))
                        continue
                if stat.S_ISDIR(st.st_mode):
                    if real in ancestors:
                        problems.append(UnsupportedFile(rel_path, "symbolic link loop"))
                        continue
                    stack.append((real, rel_path + "/", (*ancestors, real)))
                    continue
            except OSError as exc:
                problems.append(UnsupportedFile(rel_path, exc.strerror or str(exc)))
                continue
            try:
                entry_path = normalize_path(rel_path)
            except InvalidPath as exc:
                problems.append(exc)
                continue
            if entry_path in seen_names:
                problems.append(PathCollision([seen_names[entry_path], rel_path]))
                continue
            seen_names[entry_path] = rel_path
            _add(result, problems, entry_path, real, st)
    if problems:
        raise InvalidTree(problems)
    result.files.sort(key=lambda f: f.path)
    for group in case_collisions(f.path for f in result.files):
        result.warnings.append(
            "names differ only in case (they collide on Windows and macOS): " + ", ".join(group)
        )
    return result


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _add(
    result: ScanResult, problems: list[InvalidInput], path: str, real: str, st: os.stat_result
) -> None:
    kind = stat.S_IFMT(st.st_mode)
    if kind in _SPECIAL:
        problems.append(UnsupportedFile(path, f"{_SPECIAL[kind]}, not a regular file"))
        return
    if not stat.S_ISREG(st.st_mode):
        problems.append(UnsupportedFile(path, "not a regular file"))
        return
    if not os.access(real, os.R_OK):
        problems.append(UnsupportedFile(path, "not readable (permission denied)"))
        return
    result.files.append(SourceFile(path, real, st.st_size, st.st_mtime_ns, st.st_ino))
