"""Bulk ingest over the network: ``permafrost ingest --server`` against plain boto3.

Usage::

    .venv/bin/python bench/bulk.py [--files 5000] [--jobs 8] [--work DIR] [--json OUT.json]

One run measures, on loopback:

1. ``permafrost ingest TREE --server URL`` (a subprocess, as a user runs it) into a
   ``permafrost serve --no-worker`` process whose hot tier is S3 on SeaweedFS
   (the test suite's ``weed server -s3``), against ``upload_file`` of the same files
   with boto3's default TransferConfig in a thread pool as wide as ``--jobs``, to the
   same endpoint (a fresh bucket). Target: no slower than 1.2x, while also hashing
   (BLAKE3 + SHA-256 on both sides), verifying and recording every file.
2. The same command again on the unchanged tree: target under 5% of the first
   run's time, and zero bytes uploaded.
3. 1% of the files rewritten: target bytes uploaded within 2% of the bytes changed.

The tree is made once per run: 5,000 files of mixed sizes (70% 1-32 KiB, 28%
32 KiB-1 MiB, 2% 1-8 MiB; half random bytes, half CSV-like text). Files are
written just before the clocks start, so both sides read them from the page
cache. Ratios are between figures of this run only. CPU seconds (user + system)
are counted beside wall time for every process that does the work: the client,
the ``permafrost serve`` process and SeaweedFS for ours; this process (boto3's
threads) and SeaweedFS for the baseline. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import boto3  # noqa: E402
import httpx  # noqa: E402
from boto3.s3.transfer import TransferConfig  # noqa: E402
from botocore.config import Config  # noqa: E402

from bench.replicate_archive import child_cpu_seconds, cpu_seconds  # noqa: E402
from tests.support.s3server import S3Server, free_ports, new_server, run_seaweedfs  # noqa: E402

KiB, MiB = 1024, 1024 * 1024
TOKEN = "bench-token"  # noqa: S105  (a loopback server made for this run)
VENV_BIN = Path(sys.executable).parent


def make_tree(root: Path, files: int, seed: int = 7) -> dict[str, int]:
    """The tree to send; returns entry path -> size."""
    rng = random.Random(seed)
    sizes: dict[str, int] = {}
    for i in range(files):
        roll = rng.random()
        if roll < 0.70:
            size = rng.randint(1 * KiB, 32 * KiB)
        elif roll < 0.98:
            size = rng.randint(32 * KiB, 1 * MiB)
        else:
            size = rng.randint(1 * MiB, 8 * MiB)
        rel = f"d{i % 50:02}/sub{i % 7}/file-{i:05}.{'bin' if i % 2 else 'csv'}"
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_content(rng, size, text=i % 2 == 0))
        sizes[rel] = size
    return sizes


def _content(rng: random.Random, size: int, *, text: bool) -> bytes:
    if not text:
        return rng.randbytes(size)
    line = b"%d,%d,%.6f,station-%d,OK\n"
    out = bytearray()
    while len(out) < size:
        out += line % (len(out), rng.randint(0, 10**9), rng.random(), rng.randint(1, 400))
    return bytes(out[:size])


def s3_client(server: S3Server) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=server.endpoint_url,
        aws_access_key_id=server.access_key_id,
        aws_secret_access_key=server.secret_access_key,
        region_name=server.region_name,
        config=Config(
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            s3={"addressing_style": "path"},
            max_pool_connections=64,
        ),
    )


@contextmanager
def permafrost_server(work: Path, server: S3Server, bucket: str) -> Iterator[str]:
    """``permafrost serve --no-worker`` with its hot tier on ``bucket``; yields its URL."""
    work.mkdir(parents=True, exist_ok=True)
    (port,) = free_ports(1)
    (work / "permafrost.toml").write_text(
        f'data_dir = "{work / "data"}"\n'
        f"port = {port}\n"
        "[tiers.hot]\n"
        'kind = "s3"\nrole = "hot"\n'
        f'bucket = "{bucket}"\nendpoint_url = "{server.endpoint_url}"\n'
        f'region_name = "{server.region_name}"\n'
        f'access_key_id = "{server.access_key_id}"\n'
        f'secret_access_key = "{server.secret_access_key}"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERMAFROST_")}
    env["PERMAFROST_API_TOKEN"] = TOKEN
    log = (work / "serve.log").open("wb")
    process = subprocess.Popen(
        [str(VENV_BIN / "permafrost"), "serve", "--no-worker"],
        cwd=work,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"permafrost serve did not start; see {work / 'serve.log'}")
            time.sleep(0.2)
        yield url
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _cpu_by_part(own: int) -> dict[str, float]:
    """CPU seconds so far: ``own`` (this process, or its reaped children), the live
    ``permafrost serve`` child and SeaweedFS."""
    return {
        "client": cpu_seconds(own),
        "server": child_cpu_seconds(("permafrost",)),
        "seaweedfs": child_cpu_seconds(("weed",)),
    }


def _cpu_since(own: int, before: dict[str, float]) -> dict[str, float]:
    after = _cpu_by_part(own)
    return {part: round(after[part] - before[part], 3) for part in after}


def ingest(url: str, tree: Path, cache: Path, jobs: int) -> tuple[float, dict[str, Any]]:
    """One ``permafrost ingest --server`` run: wall seconds and its --json report (with
    ``cpu_seconds``: the client's, the server's and SeaweedFS's)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERMAFROST_")}
    env |= {"PERMAFROST_TOKEN": TOKEN, "XDG_CACHE_HOME": str(cache)}
    argv = [str(VENV_BIN / "permafrost"), "ingest", str(tree), "-C", "bench", "-D", "bulk"]
    argv += ["--server", url, "--jobs", str(jobs), "--json"]
    subprocess.run(["sync"], check=True)
    before = _cpu_by_part(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    cpu = _cpu_since(resource.RUSAGE_CHILDREN, before)
    if done.returncode != 0:
        raise RuntimeError(f"permafrost ingest failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds, json.loads(done.stdout) | {"cpu_seconds": sum(cpu.values()), "cpu": cpu}


def boto3_baseline(server: S3Server, tree: Path, jobs: int) -> tuple[float, dict[str, float]]:
    """``upload_file`` of every file (default TransferConfig) on ``jobs`` threads: wall
    and CPU seconds (this process's and SeaweedFS's)."""
    client = s3_client(server)
    bucket = f"baseline-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    files = sorted(p for p in tree.rglob("*") if p.is_file())
    config = TransferConfig()
    subprocess.run(["sync"], check=True)
    before = _cpu_by_part(resource.RUSAGE_SELF)
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for future in [
            pool.submit(
                client.upload_file, str(p), bucket, p.relative_to(tree).as_posix(), Config=config
            )
            for p in files
        ]:
            future.result()
    seconds = time.perf_counter() - started
    return seconds, _cpu_since(resource.RUSAGE_SELF, before)


def change_one_percent(tree: Path, sizes: dict[str, int], seed: int = 11) -> int:
    """Rewrite 1% of the files with new random bytes of the same size; bytes changed."""
    rng = random.Random(seed)
    chosen = rng.sample(sorted(sizes), max(1, len(sizes) // 100))
    for rel in chosen:
        (tree / rel).write_bytes(rng.randbytes(sizes[rel]))
    return sum(sizes[rel] for rel in chosen)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--jobs", type=int, default=8, help="uploads at once, both sides")
    parser.add_argument("--work", type=Path, default=ROOT / ".bench" / "bulk")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    work: Path = args.work
    shutil.rmtree(work, ignore_errors=True)
    tree = work / "tree"
    sizes = make_tree(tree, args.files)
    total = sum(sizes.values())
    print(f"tree: {len(sizes)} files, {total / MiB:.1f} MiB; jobs {args.jobs}", flush=True)
    server, ports = new_server()
    with run_seaweedfs(work / "seaweedfs", server, ports) as s3:
        client = s3_client(s3)
        bucket = f"permafrost-{uuid.uuid4().hex[:8]}"
        client.create_bucket(Bucket=bucket)
        with permafrost_server(work / "server", s3, bucket) as url:
            baseline, baseline_parts = boto3_baseline(s3, tree, args.jobs)
            baseline_cpu = sum(baseline_parts.values())
            print(
                f"boto3 upload_file x{args.jobs}: {baseline:.2f} s, cpu {baseline_cpu:.2f} s "
                f"{baseline_parts}",
                flush=True,
            )
            first, r1 = ingest(url, tree, work / "cache", args.jobs)
            print(
                f"permafrost ingest --server, first run: {first:.2f} s, "
                f"cpu {r1['cpu_seconds']:.2f} s {r1['cpu']}",
                flush=True,
            )
            second, r2 = ingest(url, tree, work / "cache", args.jobs)
            print(f"second run, unchanged: {second:.2f} s, {r2['uploaded_bytes']} B sent")
            changed_bytes = change_one_percent(tree, sizes)
            third, r3 = ingest(url, tree, work / "cache", args.jobs)
            print(f"1% changed: {third:.2f} s, {r3['uploaded_bytes']} B sent", flush=True)
    figures = {
        "files": len(sizes),
        "bytes": total,
        "jobs": args.jobs,
        "boto3_seconds": baseline,
        "boto3_cpu_seconds": baseline_cpu,
        "boto3_cpu": baseline_parts,
        "first_seconds": first,
        "first_cpu_seconds": r1["cpu_seconds"],
        "first_cpu": r1["cpu"],
        "first_vs_boto3": first / baseline,
        "first_vs_boto3_cpu": r1["cpu_seconds"] / baseline_cpu,
        "first_uploaded_bytes": r1["uploaded_bytes"],
        "second_seconds": second,
        "second_vs_first": second / first,
        "second_uploaded_bytes": r2["uploaded_bytes"],
        "second_hashed": r2["hashed"],
        "changed_bytes": changed_bytes,
        "third_seconds": third,
        "third_uploaded_bytes": r3["uploaded_bytes"],
        "third_uploaded_vs_changed": r3["uploaded_bytes"] / changed_bytes,
        "phases": {"first": r1["phases"], "second": r2["phases"], "third": r3["phases"]},
    }
    print(
        f"\nfirst run / boto3: {figures['first_vs_boto3']:.2f}x (target <= 1.2); "
        f"CPU seconds {figures['first_vs_boto3_cpu']:.2f}x\n"
        f"second run / first: {figures['second_vs_first']:.1%} (target < 5%), "
        f"{figures['second_uploaded_bytes']} bytes uploaded (target 0)\n"
        f"1% changed: uploaded / changed bytes = {figures['third_uploaded_vs_changed']:.4f} "
        "(target within 2% of 1)\n"
        f"phases of the first run (s): {r1['phases']}"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    main()
