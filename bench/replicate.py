"""Replication benchmark: S3 throughput against plain boto3, cold packing against none.

Usage::

    .venv/bin/python bench/replicate.py [--size-mib 512] [--blob-mib 64] [--small-files 100000]
                                        [--repeat 4] [--parallel 1] [--json OUT]

1. LARGE: an archive with a local hot tier holding ``--size-mib`` of 64 MiB blobs
   (``--blob-mib``; three random, one text in four) and an S3 tier of role ``cold`` on a SeaweedFS
   server this script starts on loopback, with ``cold_pack_below=0`` so every blob
   is copied loose. The clock runs ``Worker(node).run_once()`` passes until the S3
   tier's queue is empty (plan, stream from the hot tier, PutObject, read back and
   hash). The baseline is ``upload_file`` (default TransferConfig) of the very same
   stored object files from the hot tier folder to another bucket of the same
   server, in a thread pool as wide as the workers (``--parallel``). Both run in
   every round, in alternating order, from a warm page cache after a ``sync``; the
   ratio is archive MB/s over boto3 MB/s of this run (target >= 0.8). On a shared
   machine wall time swings with the neighbours, so the CPU both sides burn (this
   process plus the SeaweedFS server) is reported too: its ratio hardly moves, and
   on a CPU-bound loopback it is what the wall-time ratio tends to.
2. SMALL: ``--small-files`` files of 100 B - 4 KiB bound for a ``local-cold`` tier,
   replicated once with packing (the default ``cold_pack_below``) and once without
   (``cold_pack_below=0``), each to a tier of its own. Cold objects are counted by
   listing the tier, writes by counting promotes (a proxy around that tier's
   ``begin_put`` in this process). Target: >= 100x fewer of both with packing.

Data sets are generated once and cached under ``WORK/data`` (see
``bench/replicate_data.py``); each run's archives and server live in ``WORK/run``.
``--code REV`` measures a ``git archive`` of REV (its ``archive``, ``tiers``,
``migrations`` and ``tests`` folders, put first on ``sys.path``) instead of the working
tree, which others edit while a run of an hour goes on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WORK = ROOT / ".bench" / "replicate"
CODE_FOLDERS = ("archive", "tiers", "migrations", "tests")


def _export_code(argv: list[str]) -> str | None:
    """``--code REV``: export REV's code folders to WORK/code/<commit>/ (reused if there)
    and put them first on ``sys.path``; must run before the archive is imported."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--code")
    pre.add_argument("--work", type=Path, default=DEFAULT_WORK)
    known, _ = pre.parse_known_args(argv)
    if not known.code:
        return None
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", f"{known.code}^{{commit}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    target = known.work / "code" / commit[:12]
    if not (target / "archive").is_dir():
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        tar = subprocess.run(
            ["git", "-C", str(ROOT), "archive", commit, *CODE_FOLDERS],
            capture_output=True,
            check=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=tar, check=True)
    sys.path.insert(0, str(target))
    return commit[:12]


if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
CODE = _export_code(sys.argv[1:])

from archive.config import LocalColdTierConfig, LocalTierConfig, Settings  # noqa: E402
from archive.datasets import DatasetRef  # noqa: E402
from archive.ingest import ingest_tree  # noqa: E402
from bench.replicate_archive import (  # noqa: E402
    PutCounter,
    S3Calls,
    child_cpu_seconds,
    cpu_seconds,
    drain,
    list_objects,
    open_archive,
    stored_files,
)
from bench.replicate_data import large_set, small_set, warm  # noqa: E402
from bench.replicate_s3 import (  # noqa: E402
    empty_bucket,
    new_bucket,
    plain_client,
    seaweedfs,
    tier_config,
    upload_files,
)

MB = 1_000_000
THROUGHPUT_TARGET = 0.8
PACKING_TARGET = 100.0
DEFAULT_COLD_PACK_BELOW: int = Settings.model_fields["cold_pack_below"].default


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=512, help="LARGE: MiB of 64 MiB blobs")
    parser.add_argument("--small-files", type=int, default=100_000, help="SMALL: file count")
    parser.add_argument(
        "--blob-mib",
        type=int,
        default=64,
        help="LARGE: size of each blob (above 64 MiB the S3 tier uses multipart)",
    )
    parser.add_argument("--repeat", type=int, default=4, help="LARGE: rounds of both uploads")
    parser.add_argument(
        "--parallel",
        type=int,
        default=1,
        help="worker threads, and the baseline's thread pool (above 1, worker_batch=1 so "
        "the blobs are shared out)",
    )
    parser.add_argument("--parts", default="large,small", help="comma list: large,small")
    parser.add_argument(
        "--no-cold-fsync",
        dest="cold_fsync",
        action="store_false",
        help="SMALL: cold tiers without fsync (the default keeps the tier's default, fsync)",
    )
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK)
    parser.add_argument(
        "--code", metavar="REV", help="measure a git archive of REV, not the working tree"
    )
    parser.add_argument("--keep", action="store_true", help="keep WORK/run afterwards")
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    args = parser.parse_args(argv)
    args.parts = [p for p in args.parts.split(",") if p]
    if set(args.parts) - {"large", "small"}:
        parser.error("--parts takes large and/or small")
    return args


def _settle() -> None:
    """Flush dirty pages so one contender's writes are not billed to the next."""
    os.sync()
    time.sleep(0.5)


def _round_large(
    args: argparse.Namespace, server: Any, client: Any, archive: Path, rnd: int, what: str
) -> dict[str, Any]:
    hot = LocalTierConfig(path=archive / "hot", role="hot")
    files = stored_files(archive / "hot")
    stored = sum(path.stat().st_size for path, _ in files)
    warm(archive / "hot")
    _settle()
    load = os.getloadavg()[0]
    if what == "permafrost":
        bucket = new_bucket(client, "perm")
        tier = f"s3-{rnd}"
        batch = {"worker_batch": 1} if args.parallel > 1 else {}
        node = open_archive(
            archive,
            {"hot": hot, tier: tier_config(server, bucket)},
            cold_pack_below=0,
            **batch,
        )
        calls = S3Calls(node.tiers[tier].client)  # type: ignore[attr-defined]
        weed0 = child_cpu_seconds()
        try:
            drained = drain(node, tier, workers=args.parallel)
        finally:
            node.close()
        weed = child_cpu_seconds() - weed0
        landed = [o for o in _keys(client, bucket) if o.startswith("blobs/")]
        if drained.copied != len(files) or len(landed) != len(files):
            raise SystemExit(
                f"round {rnd}: copied {drained.copied}, {len(landed)} objects in the bucket, "
                f"expected {len(files)}; failures: {drained.failures[-3:]}"
            )
        result: dict[str, Any] = {
            "seconds": drained.seconds,
            "cpu_seconds": drained.cpu_seconds,
            "passes": drained.passes,
            "failures": len(drained.failures),
            "s3_calls": calls.snapshot(),
        }
    else:
        bucket = new_bucket(client, "plain")
        cpu0, weed0 = cpu_seconds(), child_cpu_seconds()
        seconds = upload_files(client, bucket, files, threads=args.parallel)
        result = {"seconds": seconds, "cpu_seconds": cpu_seconds() - cpu0}
        weed = child_cpu_seconds() - weed0
    empty_bucket(client, bucket)
    result.update(
        tool=what,
        round=rnd,
        bytes=stored,
        objects=len(files),
        mb_per_s=stored / result["seconds"] / MB,
        server_cpu_seconds=weed,
        total_cpu_seconds=result["cpu_seconds"] + weed,
        loadavg_1min=load,
    )
    return result


def _keys(client: Any, bucket: str) -> list[str]:
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys += [item["Key"] for item in page.get("Contents", [])]
    return keys


def measure_large(args: argparse.Namespace, run: Path) -> dict[str, Any]:
    print(
        f"\n== LARGE: {args.size_mib} MiB of {args.blob_mib} MiB blobs, "
        "local hot tier -> S3 (SeaweedFS)"
    )
    started = time.perf_counter()
    data = large_set(args.work / "data" / f"large-{args.blob_mib}", args.size_mib, args.blob_mib)
    print(f"   data: {data.files} files, {data.bytes / MB:,.0f} MB ({_since(started)})")
    archive = run / "large"
    node = open_archive(archive, {"hot": LocalTierConfig(path=archive / "hot", role="hot")})
    try:
        report = ingest_tree(node, data.root, DatasetRef("bench", "large"))
    finally:
        node.close()
    print(
        f"   ingested in {report.seconds:.1f} s: {report.new_blobs} blobs, "
        f"{report.stored_bytes / MB:,.0f} MB stored (the bytes both contenders upload)"
    )
    rounds: list[dict[str, Any]] = []
    with seaweedfs(run / "seaweedfs") as server:
        client = plain_client(server)
        for rnd in range(args.repeat):
            order = ["permafrost", "boto3"] if rnd % 2 == 0 else ["boto3", "permafrost"]
            for what in order:
                result = _round_large(args, server, client, archive, rnd, what)
                rounds.append(result)
                print(
                    f"   [{rnd + 1}/{args.repeat}] {what:<10} {result['seconds']:6.2f} s "
                    f"{result['mb_per_s']:7.1f} MB/s  cpu {result['cpu_seconds']:5.2f} s  "
                    f"server cpu {result['server_cpu_seconds']:5.2f} s  "
                    f"load {result['loadavg_1min']:.1f}",
                    flush=True,
                )
        client.close()
    return _summarise_large(rounds)


def _summarise_large(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    def median(tool: str, key: str) -> float:
        return float(statistics.median(r[key] for r in rounds if r["tool"] == tool))

    pairs = [
        (a, b)
        for a in rounds
        if a["tool"] == "permafrost"
        for b in rounds
        if b["tool"] == "boto3" and b["round"] == a["round"]
    ]
    paired = [a["mb_per_s"] / b["mb_per_s"] for a, b in pairs]
    paired_cpu = [b["total_cpu_seconds"] / a["total_cpu_seconds"] for a, b in pairs]
    summary = {
        "permafrost_mb_per_s": median("permafrost", "mb_per_s"),
        "boto3_mb_per_s": median("boto3", "mb_per_s"),
        "ratio": statistics.median(paired),
        "ratio_per_round": [round(x, 3) for x in paired],
        "cpu_ratio": statistics.median(paired_cpu),
        "cpu_ratio_per_round": [round(x, 3) for x in paired_cpu],
        "permafrost_cpu_seconds": median("permafrost", "cpu_seconds"),
        "boto3_cpu_seconds": median("boto3", "cpu_seconds"),
        "permafrost_server_cpu_seconds": median("permafrost", "server_cpu_seconds"),
        "boto3_server_cpu_seconds": median("boto3", "server_cpu_seconds"),
        "s3_calls": [r for r in rounds if r["tool"] == "permafrost"][-1]["s3_calls"],
        "rounds": rounds,
    }
    verdict = "meets" if summary["ratio"] >= THROUGHPUT_TARGET else "MISSES"
    print(
        f"\n   permafrost replication {summary['permafrost_mb_per_s']:7.1f} MB/s "
        f"(cpu {summary['permafrost_cpu_seconds']:.2f} s, "
        f"server cpu {summary['permafrost_server_cpu_seconds']:.2f} s)\n"
        f"   boto3 upload_file      {summary['boto3_mb_per_s']:7.1f} MB/s "
        f"(cpu {summary['boto3_cpu_seconds']:.2f} s, "
        f"server cpu {summary['boto3_server_cpu_seconds']:.2f} s)\n"
        f"   ratio {summary['ratio']:.2f} (median of per-round ratios "
        f"{', '.join(f'{x:.2f}' for x in paired)}): {verdict} the target {THROUGHPUT_TARGET}\n"
        f"   cpu ratio {summary['cpu_ratio']:.2f} (boto3 over permafrost, client + server CPU "
        f"for the same bytes; per round {', '.join(f'{x:.2f}' for x in paired_cpu)})"
    )
    calls = ", ".join(
        f"{op} {c['requests']:.0f} ({c['seconds']:.2f} s)" for op, c in summary["s3_calls"].items()
    )
    print(f"   S3 requests of the last permafrost round: {calls}")
    return summary


def _mode_small(archive: Path, mode: str, below: int, fsync: bool) -> dict[str, Any]:
    hot = LocalTierConfig(path=archive / "hot", role="hot")
    tier = f"cold-{mode}"
    cold = LocalColdTierConfig(path=archive / tier, fsync=fsync)
    warm(archive / "hot")
    _settle()
    node = open_archive(archive, {"hot": hot, tier: cold}, cold_pack_below=below)
    try:
        counter = PutCounter(node.tiers[tier])
        drained = drain(node, tier)
        objects = list_objects(node.tiers[tier])
    finally:
        node.close()
    result = {
        "mode": mode,
        "cold_pack_below": below,
        "seconds": drained.seconds,
        "cpu_seconds": drained.cpu_seconds,
        "blobs_copied": drained.copied,
        "objects": sum(objects.values()),
        "objects_by_prefix": dict(objects),
        "writes": counter.promotes,
        "uploads_begun": counter.begun,
        "bytes_written": counter.promoted_bytes,
        "failures": len(drained.failures),
    }
    print(
        f"   {mode:<6} (cold_pack_below={below}): {result['objects']:>7,} objects "
        f"{dict(objects)}, {result['writes']:>7,} writes, {drained.copied:,} blobs in "
        f"{drained.seconds:7.1f} s ({drained.copied / drained.seconds:,.0f} blobs/s)",
        flush=True,
    )
    return result


def measure_small(args: argparse.Namespace, run: Path) -> dict[str, Any]:
    print(f"\n== SMALL: {args.small_files:,} files of 100 B - 4 KiB bound for a local-cold tier")
    started = time.perf_counter()
    data = small_set(args.work / "data" / f"small-{args.small_files}", args.small_files)
    print(f"   data: {data.files:,} files, {data.bytes / MB:,.1f} MB ({_since(started)})")
    archive = run / "small"
    node = open_archive(archive, {"hot": LocalTierConfig(path=archive / "hot", role="hot")})
    try:
        report = ingest_tree(node, data.root, DatasetRef("bench", "small"))
    finally:
        node.close()
    print(f"   ingested in {report.seconds:.1f} s: {report.new_blobs:,} blobs")
    packed = _mode_small(archive, "packed", DEFAULT_COLD_PACK_BELOW, args.cold_fsync)
    loose = _mode_small(archive, "loose", 0, args.cold_fsync)
    summary = {
        "files": data.files,
        "bytes": data.bytes,
        "blobs": report.new_blobs,
        "ingest_seconds": report.seconds,
        "cold_fsync": args.cold_fsync,
        "packed": packed,
        "loose": loose,
        "objects_ratio": loose["objects"] / max(1, packed["objects"]),
        "writes_ratio": loose["writes"] / max(1, packed["writes"]),
        "time_ratio": loose["seconds"] / packed["seconds"],
    }
    worst = min(summary["objects_ratio"], summary["writes_ratio"])
    verdict = "meets" if worst >= PACKING_TARGET else "MISSES"
    print(
        f"\n   packing: {summary['objects_ratio']:,.0f}x fewer cold objects, "
        f"{summary['writes_ratio']:,.0f}x fewer writes, {summary['time_ratio']:,.1f}x faster "
        f"({packed['seconds']:.1f} s vs {loose['seconds']:.1f} s): {verdict} the target "
        f"{PACKING_TARGET:.0f}x"
    )
    return summary


def _since(started: float) -> str:
    return f"{time.perf_counter() - started:.1f} s, cached after the first run"


def _environment() -> dict[str, Any]:
    try:
        rev = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        rev = "?"
    return {
        "git": rev,
        "code": f"git archive of {CODE}" if CODE else "working tree",
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "loadavg_1min_at_start": os.getloadavg()[0],
    }


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    run = args.work / "run"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    env = _environment()
    print(
        f"git {env['git']} ({env['code']}), python {env['python']}, {env['cpus']} CPUs, "
        f"work {args.work}"
    )
    results: dict[str, Any] = {
        "environment": env,
        "arguments": {
            "size_mib": args.size_mib,
            "small_files": args.small_files,
            "repeat": args.repeat,
            "blob_mib": args.blob_mib,
            "parallel": args.parallel,
            "cold_fsync": args.cold_fsync,
        },
    }
    try:
        if "large" in args.parts:
            results["large"] = measure_large(args, run)
        if "small" in args.parts:
            results["small"] = measure_small(args, run)
    finally:
        if not args.keep:
            shutil.rmtree(run, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"\nfigures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
