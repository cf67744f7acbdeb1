"""Entry paths: what a file may be called inside the archive (DESIGN section 4).

An entry path is relative, ``/``-separated, NFC-normalised UTF-8, with no empty,
``.`` or ``..`` segment and no control characters. Windows forms (``C:``, ``\\``)
are refused rather than guessed at, so a path means the same on every system that
will ever unpack it. Two names that differ only in Unicode normalisation would
collide on macOS and in BagIt tools, so they are refused too; names that differ
only in case are allowed on Linux but reported, since they collide on Windows.
"""

from __future__ import annotations

import re
import unicodedata
from collections import defaultdict
from collections.abc import Iterable

from archive.errors import InvalidPath, PathCollision

#: Unicode categories Cc (C0, DEL, C1) and Cs (surrogates), as one search: asking
#: ``unicodedata.category`` of each character cost 14 us a path, half of a scan.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")

MAX_SEGMENT_BYTES = 255
MAX_PATH_BYTES = 2048
"""Within PostgreSQL's B-tree row limit (2704 bytes) for the unique (version, path) index."""


def normalize_path(raw: str) -> str:
    """Validate one entry path and return its NFC form.

    Raises:
        InvalidPath: with the reason, for any path that may not enter the archive.
    """
    if not raw:
        raise InvalidPath(raw, "empty path")
    if "\x00" in raw:
        raise InvalidPath(raw, "contains NUL")
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidPath(raw, "not valid UTF-8 (undecodable bytes in the name)") from None
    if "\\" in raw:
        raise InvalidPath(raw, "contains a backslash (Windows separator)")
    if raw.startswith("/"):
        raise InvalidPath(raw, "absolute path")
    if len(raw) >= 2 and raw[1] == ":" and raw[0].isascii() and raw[0].isalpha():
        raise InvalidPath(raw, "Windows drive path")
    if control := _CONTROL.search(raw):
        raise InvalidPath(raw, f"contains control character U+{ord(control.group()):04X}")
    path = unicodedata.normalize("NFC", raw)
    if len(path.encode("utf-8")) > MAX_PATH_BYTES:
        raise InvalidPath(raw, f"longer than {MAX_PATH_BYTES} bytes")
    for segment in path.split("/"):
        if segment in ("", ".", ".."):
            raise InvalidPath(raw, f"has an empty, '.' or '..' segment ({segment!r})")
        if len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES:
            raise InvalidPath(raw, f"a name is longer than {MAX_SEGMENT_BYTES} bytes")
    return path


def normalize_paths(raws: Iterable[str]) -> list[str]:
    """Normalise many paths and refuse any two that collide after normalisation.

    Raises:
        InvalidPath: for the first invalid path.
        PathCollision: listing the raw names that became one.
    """
    seen: dict[str, str] = {}
    out: list[str] = []
    for raw in raws:
        path = normalize_path(raw)
        if path in seen:
            raise PathCollision([seen[path], raw])
        seen[path] = raw
        out.append(path)
    return out


def case_collisions(paths: Iterable[str]) -> list[list[str]]:
    """Groups of paths equal when case is folded (a warning, not an error)."""
    groups: dict[str, list[str]] = defaultdict(list)
    for path in paths:
        groups[path.casefold()].append(path)
    return [sorted(g) for g in groups.values() if len(g) > 1]
