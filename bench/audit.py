"""Fixity audit throughput against ``b3sum`` and ``zstd -d | b3sum``, on the same stored files.

Usage::

    .venv/bin/python bench/audit.py [--gib 1.0] [--repeat 3] [--json OUT.json]

The LARGE data set (``bench/datagen.py``: half random, half text-like) is ingested
once into a fresh archive with one local tier. Then, in the same run, with the page
cache warm and the order of the contenders rotating each round:

* ``stored`` audit (BLAKE3 of every stored object against ``stored_b3``, catalog
  updated and one event per copy committed) against ``b3sum`` over the same stored
  files (multi-threaded, mmap): target ratio >= 0.8;
* ``deep`` audit (decompress, BLAKE3 and SHA-256 of the content) against
  ``zstd -d -c FILE | b3sum`` for each compressed file (``b3sum FILE`` for the files
  stored raw): target ratio >= 0.8.

A ratio is the reference tool's time divided by the audit's (> 1: the audit is
faster). Each figure is the median of ``--repeat`` rounds. CPU-time ratios (user +
system of the tool's processes, of this process for the audit) are printed beside
them: on a shared machine they move far less than wall times.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sqlmodel import select  # noqa: E402

from archive.catalog import models  # noqa: E402
from archive.catalog.models import Codec  # noqa: E402
from archive.config import LocalTierConfig, Settings  # noqa: E402
from archive.datasets import parse_ref  # noqa: E402
from archive.ingest import ingest_tree  # noqa: E402
from archive.node import ArchiveNode  # noqa: E402
from archive.packs import blob_key  # noqa: E402
from bench.datagen import large_set  # noqa: E402
from bench.replicate_archive import cpu_seconds  # noqa: E402
from fixity.audit import AuditOptions, Auditor  # noqa: E402
from fixity.checks import Level  # noqa: E402

MB = 1_000_000
TARGET = 0.8


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=ROOT / ".bench", help="outputs (git-ignored)")
    parser.add_argument("--data", type=Path, help="where the data sets live (default WORK/data)")
    parser.add_argument("--gib", type=float, default=1.0, help="size of the LARGE set")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="audit_threads of the archive")
    parser.add_argument("--json", type=Path, help="write the figures here")
    return parser.parse_args(argv)


def _warm(paths: list[Path]) -> None:
    """Read every stored file once so every contender starts with them in the page cache."""
    block = bytearray(8 * 1024 * 1024)
    for path in paths:
        with open(path, "rb", buffering=0) as fh:
            while fh.readinto(block):
                pass


def _timed_command(argv: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds of a command (with every process it waited for)."""
    os.sync()
    cpu, start = cpu_seconds(resource.RUSAGE_CHILDREN), time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start, cpu_seconds(resource.RUSAGE_CHILDREN) - cpu


def _helpers_cpu_seconds() -> float:
    """CPU seconds of this process's live children: the hashing helpers of
    ``tiers.mapped``, which ``RUSAGE_*`` counts only once they are reaped."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for task in Path("/proc/self/task").iterdir():
        for pid in (task / "children").read_text().split():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except FileNotFoundError:
                continue
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def _own_cpu_seconds() -> float:
    return cpu_seconds(resource.RUSAGE_SELF) + _helpers_cpu_seconds()


def _timed_audit(node: ArchiveNode, level: Level) -> tuple[float, float]:
    """Wall and CPU seconds (every thread of this process, and its hashing helpers) of
    one audit pass."""
    os.sync()
    auditor = Auditor(node, owner="bench")
    cpu, start = _own_cpu_seconds(), time.perf_counter()
    report = auditor.audit_pass(AuditOptions(level=level, due_only=False, manifests=False))
    seconds, cpu = time.perf_counter() - start, _own_cpu_seconds() - cpu
    if not report.clean or report.checked == 0:
        raise SystemExit(f"the {level} audit did not pass: {report.as_dict()}")
    return seconds, cpu


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    data_root = args.data or args.work / "data"
    data, reused = large_set(data_root / "large", args.gib)
    print(f"data: {data.files} files, {data.bytes / MB:.0f} MB ({'reused' if reused else 'made'})")
    archive = args.work / "audit-archive"
    shutil.rmtree(archive, ignore_errors=True)
    settings = Settings(
        data_dir=archive,
        tiers={"hot": LocalTierConfig(path=archive / "hot", role="hot", fsync=False)},
        audit_batch=10_000,
        audit_threads=args.threads,
    )
    node = ArchiveNode.open(settings)
    try:
        ingest_tree(node, data.root, parse_ref("bench/large"))
        with node.session() as session:
            blobs = session.exec(select(models.Blob)).all()
        hot = Path(archive / "hot")
        stored = [hot / blob_key(b.b3) for b in blobs]
        missing = [p for p in stored if not p.is_file()]
        if missing:
            raise SystemExit(f"expected loose blobs, {len(missing)} are packed: use larger files")
        stored_bytes = sum(b.stored_size for b in blobs)
        content_bytes = sum(b.size for b in blobs)
        listing = args.work / "audit-files.txt"
        listing.write_bytes(b"\0".join(os.fsencode(p) for p in stored))
        script = args.work / "audit-zstd-b3sum.sh"
        lines = ["set -e"]
        for b, path in zip(blobs, stored, strict=True):
            if b.codec == Codec.ZSTD:
                lines.append(f"zstd -d -c -q '{path}' | b3sum > /dev/null")
            else:
                lines.append(f"b3sum '{path}' > /dev/null")
        script.write_text("\n".join(lines) + "\n")
        _warm(stored)

        contenders: dict[str, Callable[[], tuple[float, float]]] = {
            "b3sum": lambda: _timed_command(
                ["sh", "-c", f"xargs -0 b3sum < '{listing}' > /dev/null"]
            ),
            "audit stored": lambda: _timed_audit(node, Level.STORED),
            "zstd -d | b3sum": lambda: _timed_command(["sh", str(script)]),
            "audit deep": lambda: _timed_audit(node, Level.DEEP),
        }
        times: dict[str, list[float]] = {name: [] for name in contenders}
        cpus: dict[str, list[float]] = {name: [] for name in contenders}
        names = list(contenders)
        for round_ in range(args.repeat):
            order = names[round_ % len(names) :] + names[: round_ % len(names)]
            for name in order:
                seconds, cpu = contenders[name]()
                times[name].append(seconds)
                cpus[name].append(cpu)
        median = {name: statistics.median(t) for name, t in times.items()}
        median_cpu = {name: statistics.median(t) for name, t in cpus.items()}
    finally:
        node.close()

    stored_ratio = median["b3sum"] / median["audit stored"]
    deep_ratio = median["zstd -d | b3sum"] / median["audit deep"]
    cpu_ratios = {
        "stored": median_cpu["b3sum"] / median_cpu["audit stored"],
        "deep": median_cpu["zstd -d | b3sum"] / median_cpu["audit deep"],
    }
    print(
        f"{len(stored)} stored objects, {stored_bytes / MB:.0f} MB stored, "
        f"{content_bytes / MB:.0f} MB content; median of {args.repeat}"
    )
    for name, seconds in median.items():
        volume = content_bytes if name in ("audit deep", "zstd -d | b3sum") else stored_bytes
        print(
            f"  {name:<16} {seconds:7.3f} s  {volume / MB / seconds:8.0f} MB/s"
            f"  cpu {median_cpu[name]:7.3f} s"
        )
    for label, ratio, cpu_ratio in (
        ("stored vs b3sum", stored_ratio, cpu_ratios["stored"]),
        ("deep vs zstd|b3sum", deep_ratio, cpu_ratios["deep"]),
    ):
        verdict = "ok" if ratio >= TARGET else f"BELOW the {TARGET} target"
        print(f"ratio {label}: {ratio:.2f} ({verdict}); CPU-time ratio {cpu_ratio:.2f}")
    if args.json:
        result: dict[str, Any] = {
            "stored_bytes": stored_bytes,
            "content_bytes": content_bytes,
            "objects": len(stored),
            "runs": times,
            "cpu_runs": cpus,
            "median_seconds": median,
            "median_cpu_seconds": median_cpu,
            "cpu_ratios": cpu_ratios,
            "ratio_stored_vs_b3sum": stored_ratio,
            "ratio_deep_vs_zstd_b3sum": deep_ratio,
        }
        args.json.write_text(json.dumps(result, indent=2))
    return 0 if min(stored_ratio, deep_ratio) >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
