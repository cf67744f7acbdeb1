"""What durability costs a large blob, and how much of it can hide behind other work.

Writes one file's bytes (raw, as ingest stores random data) to a staging file with
SHA-256 + BLAKE3 computed on the way, then makes it durable:

  nosync      no fsync at all (what ``zstd`` does; not durable)
  fsync-end   one fsync after the last write (what ``LocalUpload.promote`` does)
  early-sync  an ``fdatasync`` issued from a helper thread every ``--every`` MiB, so
              the disk writes while we hash; the final fsync only flushes the tail
  overlap     fsync-end, but the fsync runs on a helper thread while the NEXT file is
              hashed and written (a pipelined promote): reported per file in a loop
              of ``--files`` files

    .venv/bin/python bench/experiments/durable_writes.py FILE [--repeat 3]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import blake3

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / ".bench" / "durable"
MiB = 1024 * 1024
CHUNK = 4 * MiB


def _write(src: Path, dst: Path, *, every: int = 0) -> int:
    """Hash and copy ``src`` to ``dst``; with ``every`` > 0, fdatasync in the background."""
    sha, b3 = hashlib.sha256(), blake3.blake3(max_threads=1)
    flusher = ThreadPoolExecutor(1) if every else None
    pending: Future[None] | None = None
    written = since = 0
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        with open(src, "rb") as fh:
            while data := fh.read(CHUNK):
                sha.update(data)
                b3.update(data)
                os.write(fd, data)
                written += len(data)
                since += len(data)
                if flusher is not None and since >= every and (pending is None or pending.done()):
                    pending = flusher.submit(os.fdatasync, fd)
                    since = 0
        if pending is not None:
            pending.result()
        return fd
    except BaseException:
        os.close(fd)
        raise
    finally:
        if flusher is not None:
            flusher.shutdown(wait=True)


def one(src: Path, mode: str, every: int) -> float:
    dst = OUT / "blob"
    t0 = time.perf_counter()
    fd = _write(src, dst, every=every if mode == "early-sync" else 0)
    if mode != "nosync":
        os.fsync(fd)
    os.close(fd)
    return time.perf_counter() - t0


def overlapped(src: Path, files: int) -> float:
    """``files`` blobs in a row; each one's fsync runs while the next one is written."""
    t0 = time.perf_counter()
    syncer = ThreadPoolExecutor(1)
    pending: list[Future[None]] = []

    def finish(fd: int) -> None:
        os.fsync(fd)
        os.close(fd)

    for i in range(files):
        fd = _write(src, OUT / f"blob-{i}")
        pending.append(syncer.submit(finish, fd))
    for f in pending:
        f.result()
    syncer.shutdown()
    return (time.perf_counter() - t0) / files


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("file", type=Path)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--every", type=int, default=32, help="MiB between background flushes")
    parser.add_argument("--files", type=int, default=3)
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    with open(args.file, "rb") as fh:
        while fh.read(16 * MiB):
            pass
    modes = ["nosync", "fsync-end", "early-sync", "overlap"]
    results: dict[str, list[float]] = {m: [] for m in modes}
    size = args.file.stat().st_size
    for rep in range(args.repeat):
        for mode in modes[rep % 4 :] + modes[: rep % 4]:
            os.sync()
            if mode == "overlap":
                took = overlapped(args.file, args.files)
            else:
                took = one(args.file, mode, args.every * MiB)
            results[mode].append(took)
            rate = size / took / 1e6
            print(f"  [{rep + 1}] {mode:<11} {took:6.2f} s  {rate:7.1f} MB/s", flush=True)
            for p in OUT.iterdir():
                p.unlink()
    print(f"\n{args.file.name}: {size / 1e6:.0f} MB per blob, medians")
    for mode in modes:
        took = statistics.median(results[mode])
        print(f"  {mode:<11} {took:6.2f} s  {size / took / 1e6:7.1f} MB/s")


if __name__ == "__main__":
    main()
