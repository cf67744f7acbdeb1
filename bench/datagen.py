"""The two benchmark data sets, generated once and cached by their parameters.

LARGE: a few large files, half random bytes (incompressible) and half text-like
(CSV rows and log lines; zstd -3 gets about 3.5x on them). SMALL: many files of
100 B to 32 KiB in nested folders, two thirds text-like and one third random.

Text is made fast without being a repeat of itself: a pool of ~200,000 varied
lines is drawn from at random and every line gets a fresh timestamp prefix, so
neither zstd's window nor restic's content-defined chunks find long repeats.
Beside each data set folder ``<name>.params.json`` records how it was made; a
folder whose stamp matches the requested parameters is reused as it is.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

GiB = 1024**3
MiB = 1024**2
FORMAT = "permafrost-bench-data/1"
LARGE_FILES = 4
SMALL_MIN, SMALL_MAX = 100, 32 * 1024
SMALL_TEXT_SHARE = 2 / 3
WRITE_BLOCK = 16 * MiB

_WORDS = [
    *("alpha", "beta", "gamma", "delta", "sensor", "station", "probe", "request", "response"),
    *("worker", "queue", "cache", "timeout", "retry", "commit", "flush", "index", "sample"),
    *("batch", "upload", "download", "archive", "verify", "ok", "warn", "error", "info"),
    *("debug", "temperature", "humidity", "pressure", "wind_speed", "voltage", "current"),
    *("latitude", "longitude"),
]
_LEVELS = ("INFO", "INFO", "INFO", "DEBUG", "WARN", "ERROR")
_FLAGS = ("OK", "OK", "OK", "FLAG", "MISSING")
_STATUS = (200, 200, 200, 201, 304, 404, 500)


@dataclass(frozen=True)
class DataSet:
    name: str
    root: Path
    files: int
    bytes: int


class TextStream:
    """An endless supply of CSV and log lines, varied enough to compress ~3.5x, not more."""

    def __init__(self, seed: int, pool_lines: int = 200_000) -> None:
        self._rng = random.Random(seed)
        self._pool = [self._line() for _ in range(pool_lines)]
        self._clock = 1_700_000_000

    def _line(self) -> bytes:
        rng = self._rng
        if rng.random() < 0.5:
            return b"station_%03d,%s,%.3f,%.2f,%d,%s" % (
                rng.randrange(400),
                rng.choice(_WORDS).encode(),
                rng.uniform(-40, 60),
                rng.uniform(0, 100),
                rng.randrange(100_000),
                rng.choice(_FLAGS).encode(),
            )
        return b"%s [worker-%d] %s %s id=%08x path=/api/v1/%s/%d status=%d dur_ms=%.1f" % (
            rng.choice(_LEVELS).encode(),
            rng.randrange(16),
            rng.choice(_WORDS).encode(),
            rng.choice(_WORDS).encode(),
            rng.getrandbits(32),
            rng.choice(_WORDS).encode(),
            rng.randrange(10_000),
            rng.choice(_STATUS),
            rng.expovariate(0.05),
        )

    def block(self, lines: int = 4096) -> bytes:
        rng = self._rng
        clock = self._clock
        self._clock += lines // 7 + 1
        picked = rng.choices(self._pool, k=lines)
        return b"".join(
            b"%d.%03d,%s\n" % (clock + i // 7, rng.getrandbits(10), line)
            for i, line in enumerate(picked)
        )

    def take(self, size: int) -> bytes:
        parts, have = [], 0
        while have < size:
            part = self.block(max(16, min(4096, (size - have) // 60 + 16)))
            parts.append(part)
            have += len(part)
        return b"".join(parts)[:size]


def stamp_path(root: Path) -> Path:
    return root.with_name(root.name + ".params.json")


def _stamp_matches(root: Path, params: dict[str, object]) -> bool:
    try:
        return root.is_dir() and json.loads(stamp_path(root).read_text()) == params
    except (OSError, ValueError):
        return False


def _measure(root: Path) -> DataSet:
    files, size = 0, 0
    for folder, _, names in os.walk(root):
        for name in names:
            files += 1
            size += os.path.getsize(os.path.join(folder, name))
    return DataSet(root.name, root, files, size)


def data_files(root: Path) -> list[Path]:
    """Every file of a set, in a stable order."""
    out = []
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        for name in sorted(names):
            out.append(Path(folder) / name)
    return out


def _build(root: Path, params: dict[str, object], fill: object) -> DataSet:
    staging = root.with_name(root.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    stamp_path(root).unlink(missing_ok=True)
    fill(staging)  # type: ignore[operator]
    shutil.rmtree(root, ignore_errors=True)
    staging.rename(root)
    stamp_path(root).write_text(json.dumps(params, sort_keys=True))
    return _measure(root)


@dataclass(frozen=True)
class LargeParams:
    format: str
    kind: str
    total_bytes: int
    files: int
    seed: int


def large_set(root: Path, gib: float, seed: int = 1) -> tuple[DataSet, bool]:
    """LARGE: ``LARGE_FILES`` files, half random, half text. Returns (set, reused)."""
    each = int(gib * GiB) // LARGE_FILES
    params = asdict(LargeParams(FORMAT, "large", each * LARGE_FILES, LARGE_FILES, seed))
    if _stamp_matches(root, params):
        return _measure(root), True

    def fill(folder: Path) -> None:
        text = TextStream(seed)
        for i in range(LARGE_FILES):
            randomish = i % 2 == 0
            path = folder / (f"random-{i}.bin" if randomish else f"records-{i}.log")
            with open(path, "wb") as fh:
                left = each
                while left:
                    n = min(WRITE_BLOCK, left)
                    fh.write(os.urandom(n) if randomish else text.take(n))
                    left -= n

    return _build(root, params, fill), False


def small_sizes(count: int, seed: int) -> list[int]:
    """Log-uniform sizes in [SMALL_MIN, SMALL_MAX]: many tiny files, a tail of larger ones."""
    rng = random.Random(seed)
    lo, hi = math.log(SMALL_MIN), math.log(SMALL_MAX)
    return [int(math.exp(rng.uniform(lo, hi))) for _ in range(count)]


def small_set(root: Path, count: int, seed: int = 2) -> tuple[DataSet, bool]:
    """SMALL: ``count`` files in ``d??/s??/`` folders, names unique across the set."""
    params = {
        "format": FORMAT,
        "kind": "small",
        "files": count,
        "min": SMALL_MIN,
        "max": SMALL_MAX,
        "seed": seed,
    }
    if _stamp_matches(root, params):
        return _measure(root), True

    def fill(folder: Path) -> None:
        rng = random.Random(seed + 1)
        text = TextStream(seed)
        for i, size in enumerate(small_sizes(count, seed)):
            sub = folder / f"d{i % 20:02d}" / f"s{(i // 20) % 10:02d}"
            sub.mkdir(parents=True, exist_ok=True)
            if rng.random() < SMALL_TEXT_SHARE:
                (sub / f"f{i:06d}.csv").write_bytes(text.take(size))
            else:
                (sub / f"f{i:06d}.bin").write_bytes(os.urandom(size))

    return _build(root, params, fill), False


def warm(data: DataSet) -> int:
    """Read every file once so all tools start with the set in the page cache."""
    block = bytearray(8 * MiB)
    view = memoryview(block)
    total = 0
    for path in data_files(data.root):
        with open(path, "rb", buffering=0) as fh:
            while n := fh.readinto(view):
                total += n
    return total
