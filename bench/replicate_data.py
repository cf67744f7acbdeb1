"""The data sets of ``bench/replicate.py``, generated once and cached by their parameters.

LARGE: files of 64 MiB (or ``blob_mib``), most of them random bytes (stored raw, as
incompressible scientific data is) and one in four CSV-like text (zstd stores it at
about a third), so the copy path sees both codecs. SMALL: many files of 100 B to 4 KiB in folders of
1,000, two thirds text and one third random, every one distinct (no deduplication
hides a copy). Beside each folder ``<name>.params.json`` records how it was made; a
folder whose stamp matches the requested parameters is reused as it is, so only the
first run pays for writing 100,000 files.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable
from pathlib import Path

from bench.datagen import DataSet, _build, _measure, _stamp_matches

MiB = 1024 * 1024
FORMAT = "permafrost-bench-replicate/1"
LARGE_FILE_MIB = 64
TEXT_EVERY = 4
"""One large file in this many is text; the others are random."""
SMALL_MIN, SMALL_MAX = 100, 4096
SMALL_PER_FOLDER = 1000
SMALL_TEXT_SHARE = 2 / 3

_WORDS = (
    b"alpha beta gamma delta sensor station probe sample batch flush index retry "
    b"commit queue cache warn error info temperature humidity pressure voltage"
).split()


class _Text:
    """CSV-like lines with fresh numbers: compresses about 3x, never a long repeat."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)
        self._row = 0

    def take(self, size: int) -> bytes:
        rng, parts, have = self._rng, [], 0
        while have < size:
            self._row += 1
            line = b"%d,station_%03d,%s,%.3f,%.2f,%08x\n" % (
                self._row,
                rng.randrange(400),
                rng.choice(_WORDS),
                rng.uniform(-40, 60),
                rng.uniform(0, 100),
                rng.getrandbits(32),
            )
            parts.append(line)
            have += len(line)
        return b"".join(parts)[:size]


def _cached(root: Path, params: dict[str, object], fill: Callable[[Path], None]) -> DataSet:
    """The set at ``root`` if its stamp matches ``params``; else build it (atomically)."""
    return _measure(root) if _stamp_matches(root, params) else _build(root, params, fill)


def large_set(root: Path, size_mib: int, blob_mib: int = LARGE_FILE_MIB, seed: int = 11) -> DataSet:
    """``size_mib`` (rounded up to whole files) of ``blob_mib`` files; one in four is text."""
    each = blob_mib * MiB
    count = max(1, math.ceil(size_mib / blob_mib))
    params = {"format": FORMAT, "kind": "large", "files": count, "each": each, "seed": seed}

    def fill(folder: Path) -> None:
        text = _Text(seed)
        for i in range(count):
            is_text = i % TEXT_EVERY == TEXT_EVERY - 1
            path = folder / (f"records-{i:02d}.csv" if is_text else f"random-{i:02d}.bin")
            with open(path, "wb") as fh:
                left = each
                while left:
                    n = min(16 * MiB, left)
                    fh.write(text.take(n) if is_text else os.urandom(n))
                    left -= n

    return _cached(root, params, fill)


def small_set(root: Path, count: int, seed: int = 12) -> DataSet:
    """``count`` distinct files of 100 B - 4 KiB (log-uniform sizes), 1,000 per folder."""
    params = {
        "format": FORMAT,
        "kind": "small",
        "files": count,
        "min": SMALL_MIN,
        "max": SMALL_MAX,
        "seed": seed,
    }

    def fill(folder: Path) -> None:
        rng = random.Random(seed)
        text = _Text(seed + 1)
        lo, hi = math.log(SMALL_MIN), math.log(SMALL_MAX)
        for i in range(count):
            size = int(math.exp(rng.uniform(lo, hi)))
            sub = folder / f"d{i // SMALL_PER_FOLDER:04d}"
            if i % SMALL_PER_FOLDER == 0:
                sub.mkdir()
            if rng.random() < SMALL_TEXT_SHARE:
                head = b"file %d\n" % i  # distinct even where the text is short
                (sub / f"f{i:07d}.csv").write_bytes(head + text.take(max(0, size - len(head))))
            else:
                (sub / f"f{i:07d}.bin").write_bytes(rng.randbytes(size))

    return _cached(root, params, fill)


def warm(root: Path) -> int:
    """Read every file under ``root`` once, so the page cache holds them for every run."""
    block = bytearray(8 * MiB)
    view = memoryview(block)
    total = 0
    for folder, _, names in os.walk(root):
        for name in names:
            with open(os.path.join(folder, name), "rb", buffering=0) as fh:
                while n := fh.readinto(view):
                    total += n
    return total
