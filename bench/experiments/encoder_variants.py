"""Alternative designs of the large-file encoder, timed against ``zstd -3 -T0`` itself.

Each variant reads one file (warm in the page cache), produces BLAKE3 + SHA-256 of
the original and the zstd -3 frame, and writes the frame to a scratch file through
an upload stand-in that hashes what it writes (as ``tiers.local.LocalUpload`` does)
without fsync. Variants run interleaved, ``--repeat`` rounds; reported are median
wall seconds and median process CPU seconds (all threads), so a noisy neighbour
shows as a wall/CPU gap rather than as a false win.

    .venv/bin/python bench/experiments/encoder_variants.py FILE [--repeat 3] [--only a,b]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from queue import Queue
from typing import BinaryIO

import blake3
import zstandard

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
if os.environ.get("BENCH_CODE"):  # a snapshot (bench/ingest.py --code) instead of the tree
    sys.path.insert(0, os.environ["BENCH_CODE"])

from archive.encoding import Encoder  # noqa: E402

MiB = 1024 * 1024
OUT = ROOT / ".bench" / "encoder-variant.out"


class FileUpload:
    """What LocalUpload.write does per call: BLAKE3 (one thread) of the stored bytes, then write."""

    def __init__(self, path: Path, hash_threads: int = 1) -> None:
        self._file = open(path, "wb")  # noqa: SIM115
        self._hasher = blake3.blake3(max_threads=hash_threads)
        self.size = 0

    def write(self, data: bytes | memoryview) -> None:
        self._hasher.update(data)
        self._file.write(data)
        self.size += len(data)

    @property
    def b3(self) -> str:
        return self._hasher.hexdigest()

    def close(self) -> None:
        self._file.close()


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def v_cli(path: Path) -> None:
    subprocess.run(["zstd", "-3", "-T0", "-q", "-f", str(path), "-o", str(OUT)], check=True)


def v_current(path: Path, threads: int = 2, chunk: int = 4 * MiB, b3_auto: bool = True) -> None:
    """archive.encoding.Encoder.encode_stream as it is (lanes: sha | b3 AUTO | zstd MT + write)."""
    import archive.encoding as enc

    old, old_b3 = enc.CHUNK, enc.blake3
    enc.CHUNK = chunk
    if not b3_auto:

        class _OneThread:
            class blake3:
                AUTO = 1

                def __new__(cls, *a: object, max_threads: int = 1) -> blake3.blake3:  # type: ignore[misc]
                    return blake3.blake3(max_threads=1)

        enc.blake3 = _OneThread  # type: ignore[assignment]
    try:
        up = FileUpload(OUT)
        with open(path, "rb") as fh:
            Encoder(3, threads=threads).encode_stream(fh, path.stat().st_size, up)  # type: ignore[arg-type]
        up.close()
    finally:
        enc.CHUNK, enc.blake3 = old, old_b3


def v_zstd_only(path: Path, threads: int = 2, chunk: int = 4 * MiB) -> None:
    """Only compression, no hashing: the in-process limit of python-zstandard."""
    cobj = zstandard.ZstdCompressor(level=3, threads=threads, write_checksum=True).compressobj(
        size=path.stat().st_size
    )
    with open(path, "rb") as fh, open(OUT, "wb") as out:
        while chunk_bytes := fh.read(chunk):
            out.write(cobj.compress(chunk_bytes))
        out.write(cobj.flush())


def v_zstd_params(path: Path, threads: int, job_mib: int = 0, overlap_log: int = -1) -> None:
    """Compression only, with explicit zstd MT job size / overlap (0 / -1: zstd's defaults)."""
    params = zstandard.ZstdCompressionParameters.from_level(
        3,
        threads=threads,
        job_size=job_mib * MiB,
        overlap_log=overlap_log if overlap_log >= 0 else 0,
        write_checksum=True,
        write_content_size=True,
    )
    cobj = zstandard.ZstdCompressor(compression_params=params).compressobj(size=path.stat().st_size)
    with open(path, "rb") as fh, open(OUT, "wb") as out:
        while chunk_bytes := fh.read(4 * MiB):
            out.write(cobj.compress(chunk_bytes))
        out.write(cobj.flush())


def v_level(path: Path, level: int) -> None:
    """Compression only at another level (threads=2)."""
    cobj = zstandard.ZstdCompressor(level=level, threads=2, write_checksum=True).compressobj(
        size=path.stat().st_size
    )
    with open(path, "rb") as fh, open(OUT, "wb") as out:
        while chunk_bytes := fh.read(4 * MiB):
            out.write(cobj.compress(chunk_bytes))
        out.write(cobj.flush())
    print(f"      level {level}: {path.stat().st_size / OUT.stat().st_size:.2f}x")


def v_serial(path: Path, threads: int = 2, chunk: int = 4 * MiB, b3_threads: int = 1) -> None:
    """One thread calls sha, b3, compress in turn; zstd's own workers give the parallelism."""
    sha = hashlib.sha256()
    b3 = blake3.blake3(max_threads=b3_threads)
    cobj = zstandard.ZstdCompressor(
        level=3, threads=threads, write_checksum=True, write_content_size=True
    ).compressobj(size=path.stat().st_size)
    up = FileUpload(OUT)
    with open(path, "rb") as fh:
        while data := fh.read(chunk):
            sha.update(data)
            b3.update(data)
            out = cobj.compress(data)
            if out:
                up.write(out)
    up.write(cobj.flush())
    up.close()


def v_hash_thread(path: Path, threads: int = 2, chunk: int = 4 * MiB) -> None:
    """Compression (zstd MT) in the calling thread; ONE helper thread hashes sha then b3."""
    sha = hashlib.sha256()
    b3 = blake3.blake3(max_threads=1)
    q: Queue[bytes | None] = Queue(maxsize=4)

    def hasher() -> None:
        while (item := q.get()) is not None:
            sha.update(item)
            b3.update(item)

    t = threading.Thread(target=hasher)
    t.start()
    cobj = zstandard.ZstdCompressor(
        level=3, threads=threads, write_checksum=True, write_content_size=True
    ).compressobj(size=path.stat().st_size)
    up = FileUpload(OUT)
    with open(path, "rb") as fh:
        while data := fh.read(chunk):
            q.put(data)
            out = cobj.compress(data)
            if out:
                up.write(out)
    up.write(cobj.flush())
    q.put(None)
    t.join()
    up.close()


def v_readtoiter(path: Path, threads: int = 2, chunk: int = 4 * MiB) -> None:
    """ZstdCompressor.read_to_iter over a reader that hashes what zstd pulls (no lanes)."""
    sha = hashlib.sha256()
    b3 = blake3.blake3(max_threads=1)

    class Hashing:
        def __init__(self, fh: BinaryIO) -> None:
            self.fh = fh

        def read(self, n: int) -> bytes:
            data = self.fh.read(n)
            sha.update(data)
            b3.update(data)
            return data

    comp = zstandard.ZstdCompressor(
        level=3, threads=threads, write_checksum=True, write_content_size=True
    )
    up = FileUpload(OUT)
    with open(path, "rb") as fh:
        for out in comp.read_to_iter(
            Hashing(fh), size=path.stat().st_size, read_size=chunk, write_size=chunk
        ):
            up.write(out)
    up.close()


def v_raw_current(path: Path) -> None:
    """Random data as ingest stores it today: sample says incompressible, lanes sha | upload."""
    up = FileUpload(OUT)
    enc = Encoder(3, threads=2)
    with open(path, "rb") as fh:
        first = fh.read(4 * MiB)
        assert not enc.looks_compressible(first[: 1 * MiB])
        enc.encode_stream(fh, path.stat().st_size, up, first=first, compress=False)  # type: ignore[arg-type]
    up.close()


def v_raw_serial(path: Path) -> None:
    sha = hashlib.sha256()
    up = FileUpload(OUT)
    with open(path, "rb") as fh:
        while data := fh.read(4 * MiB):
            sha.update(data)
            up.write(data)
    up.close()


def v_raw_pool(path: Path) -> None:
    """Raw: sha256 and (blake3 + write) on two threads, chunks in flight bounded."""
    sha = hashlib.sha256()
    up = FileUpload(OUT)
    with ThreadPoolExecutor(1) as pool, open(path, "rb") as fh:
        pending = None
        while data := fh.read(4 * MiB):
            fut = pool.submit(sha.update, data)
            up.write(data)
            if pending is not None:
                pending.result()
            pending = fut
        if pending is not None:
            pending.result()
    up.close()


VARIANTS: dict[str, Callable[[Path], None]] = {
    "cli": v_cli,
    "current": v_current,
    "current-T1": lambda p: v_current(p, threads=1),
    "current-b3one": lambda p: v_current(p, b3_auto=False),
    "current-T1-b3one": lambda p: v_current(p, threads=1, b3_auto=False),
    "current-16M": lambda p: v_current(p, chunk=16 * MiB),
    "zstd-only": v_zstd_only,
    "zstd-only-T1": lambda p: v_zstd_only(p, threads=1),
    "zstd-T2-job16M": lambda p: v_zstd_params(p, 2, job_mib=16),
    "zstd-T2-job32M": lambda p: v_zstd_params(p, 2, job_mib=32),
    "zstd-level1": lambda p: v_level(p, 1),
    "zstd-level2": lambda p: v_level(p, 2),
    "zstd-level3": lambda p: v_level(p, 3),
    "serial": v_serial,
    "serial-b3auto": lambda p: v_serial(p, b3_threads=-1),
    "serial-16M": lambda p: v_serial(p, chunk=16 * MiB),
    "hash-thread": v_hash_thread,
    "read_to_iter": v_readtoiter,
    "raw-current": v_raw_current,
    "raw-serial": v_raw_serial,
    "raw-pool": v_raw_pool,
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("file", type=Path)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", default="")
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n] or list(VARIANTS)
    with open(args.file, "rb") as fh:
        while fh.read(16 * MiB):
            pass
    size = args.file.stat().st_size
    results: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    for rep in range(args.repeat):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            os.sync()
            cpu0, ccpu0, t0 = _cpu(), _children_cpu(), time.perf_counter()
            VARIANTS[name](args.file)
            wall = time.perf_counter() - t0
            cpu = _cpu() - cpu0 + _children_cpu() - ccpu0
            results[name].append((wall, cpu))
            print(f"  [{rep + 1}] {name:<14} {wall:6.2f} s wall {cpu:6.2f} s cpu", flush=True)
    base = statistics.median(w for w, _ in results.get("cli", [(0.0, 0.0)])) or None
    print(f"\n{args.file.name}: {size / 1e6:.0f} MB; medians (speed vs cli = cli wall / wall)")
    for name in names:
        wall = statistics.median(w for w, _ in results[name])
        cpu = statistics.median(c for _, c in results[name])
        rel = f"{base / wall:5.2f}x" if base else "  -  "
        print(f"  {name:<14} {wall:6.2f} s  {size / wall / 1e6:7.1f} MB/s  cpu {cpu:6.2f} s  {rel}")
    OUT.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
