"""Federation benchmark: replication to a partner node, and proofs of possession.

Usage::

    .venv/bin/python bench/federation.py [--size-mib 512] [--blob-mib 64] [--repeat 3]
                                         [--json OUT]

1. REPLICATE: a home archive (SQLite, local hot tier) holds ``--size-mib`` of random
   (incompressible, so stored as they are) blobs of ``--blob-mib``, and a tier of kind
   ``federation`` pointing at a partner node: ``permafrost serve --no-worker`` in a
   process of its own on loopback (its hot tier without fsync, like the baseline). The
   clock runs the worker's replication until the partner tier's queue is empty: spool,
   hash, sign, stream to the partner, which checks the signature, the SHA-256
   ``Content-Digest`` and the BLAKE3 address while writing, then proves it holds the
   bytes. The baseline is a plain ``httpx`` upload of the very same stored files to a
   bare FastAPI endpoint (``bench/federation_bare.py``, its own uvicorn process) that
   writes the body to a file, as many uploads at once as the worker has replication
   threads. Target: archive MB/s over baseline MB/s >= 0.7.
2. PROVE: a proof of possession of every blob the partner holds (one signed request
   per 1,000 blobs, fresh key; the partner reads and hashes every stored byte with a
   keyed BLAKE3), against ``b3sum`` over the partner's very same stored files.
   Target: b3sum seconds over proof seconds >= 0.8.

Both sides of each comparison run in every round, in alternating order, after a
``sync`` and from a warm page cache. The machine is shared and noisy, so the CPU time
both sides burn (this process plus the server it talks to, or ``b3sum`` itself) is
reported too, with its ratio, and the load average before and after.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from sqlmodel import col, select

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from archive.catalog import models  # noqa: E402
from archive.config import FederationTierConfig, LocalTierConfig, Settings  # noqa: E402
from archive.datasets import parse_ref  # noqa: E402
from archive.identity import ensure_node_key, public_key_text  # noqa: E402
from archive.ingest import ingest_tree  # noqa: E402
from archive.node import ArchiveNode  # noqa: E402
from archive.worker import Worker  # noqa: E402
from tiers import ProvingTier  # noqa: E402

MB = 1_000_000
REPLICATE_TARGET = 0.7
PROVE_TARGET = 0.8
DEFAULT_WORK = ROOT / ".bench" / "federation"
PERMAFROST = [sys.executable, "-m", "archive.cli"]
R = models.Replica


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, its reaped children (``/proc/<pid>/stat``) and
    its live ones (the hashing helpers of ``tiers.mapped``), recursively."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    total = sum(int(f) for f in fields[11:15]) / ticks
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except FileNotFoundError:
            continue  # the thread ended
        for child in children:
            with contextlib.suppress(FileNotFoundError):
                total += process_cpu_seconds(int(child))
    return total


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def server(argv: list[str], url: str, env: dict[str, str], log: Path) -> Iterator[int]:
    """Run a server process until the block ends; yields its pid once it answers."""
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(url, timeout=2).status_code < 500:
                        break
                except httpx.TransportError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{argv} did not start: see {log}")
                time.sleep(0.2)
            yield proc.pid
        finally:
            proc.terminate()
            proc.wait(30)


def partner_config(folder: Path, port: int) -> Path:
    config = folder / "permafrost.toml"
    config.write_text(
        f'data_dir = "{folder / "data"}"\nhost = "127.0.0.1"\nport = {port}\n'
        f'[tiers.hot]\nkind = "local"\npath = "{folder / "data" / "hot"}"\nfsync = false\n'
    )
    return config


def env_with(config: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERMAFROST_")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if config is not None:
        env["PERMAFROST_CONFIG"] = str(config)
    return env


def make_home(
    work: Path, partner_url: str, size_mib: int, blob_mib: int, *, prove_after_put: bool
) -> ArchiveNode:
    data = work / "home"
    settings = Settings(
        data_dir=data,
        tiers={
            "hot": LocalTierConfig(path=data / "hot", fsync=False),
            "partner": FederationTierConfig(url=partner_url, prove_after_put=prove_after_put),
        },
    )
    ensure_node_key(settings.node_key_path)
    node = ArchiveNode.open(settings)
    source = work / "source"
    if not source.exists():
        staging = work / "source.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for i in range(max(1, size_mib // blob_mib)):
            with (staging / f"blob{i:03d}.bin").open("wb") as out:
                for _ in range(blob_mib):
                    out.write(os.urandom(1024 * 1024))
        staging.rename(source)
    ingest_tree(node, source, parse_ref("bench/random"), message="bench")
    return node


def stored_files(node: ArchiveNode) -> list[Path]:
    hot = node.settings.tiers["hot"]
    assert isinstance(hot, LocalTierConfig)
    with node.session() as session:
        hot_id = node.tier_ids(session=session)["hot"]
        keys = session.exec(select(R.key).where(R.tier_id == hot_id)).all()
    return sorted(hot.path / key for key in keys)


def replicate(node: ArchiveNode, partner_pid: int) -> dict[str, float]:
    """Time the worker's copies to the partner tier, from a clean slate of that tier."""
    with node.session() as session:
        tier_id = node.tier_ids(session=session)["partner"]
        session.execute(sa.delete(R).where(col(R.tier_id) == tier_id))
    worker = Worker(node, owner="bench")
    os.sync()
    cpu0, server0 = cpu_seconds(), process_cpu_seconds(partner_pid)
    started = time.perf_counter()
    worker.plan_once()
    while worker.replicate_once():
        pass
    seconds = time.perf_counter() - started
    with node.session() as session:
        present = len(
            session.exec(select(R.id).where(R.tier_id == tier_id, R.state == "present")).all()
        )
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds() - cpu0 + process_cpu_seconds(partner_pid) - server0,
        "server_cpu_seconds": process_cpu_seconds(partner_pid) - server0,
        "copies": present,
    }


def upload(files: list[Path], url: str, threads: int, bare_pid: int) -> dict[str, float]:
    """The baseline: plain httpx PUTs of the same files, ``threads`` at a time."""

    def put(client: httpx.Client, path: Path) -> None:
        with path.open("rb") as body:
            size = path.stat().st_size
            response = client.put(
                f"{url}/upload/{path.name}",
                content=iter(lambda: body.read(4 * 1024 * 1024), b""),
                headers={"Content-Length": str(size)},
            )
            response.raise_for_status()

    os.sync()
    cpu0, server0 = cpu_seconds(), process_cpu_seconds(bare_pid)
    started = time.perf_counter()
    with httpx.Client(timeout=600) as client, ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda p: put(client, p), files))
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds() - cpu0 + process_cpu_seconds(bare_pid) - server0,
        "server_cpu_seconds": process_cpu_seconds(bare_pid) - server0,
    }


def prove(node: ArchiveNode, partner_pid: int) -> dict[str, float]:
    tier = node.tiers["partner"]
    assert isinstance(tier, ProvingTier)
    with node.session() as session:
        tier_id = node.tier_ids(session=session)["partner"]
        keys = list(session.exec(select(R.key).where(R.tier_id == tier_id)).all())
    os.sync()
    cpu0, server0 = cpu_seconds(), process_cpu_seconds(partner_pid)
    started = time.perf_counter()
    answers = tier.prove(keys, os.urandom(32))
    seconds = time.perf_counter() - started
    assert all(answers.values()) and len(answers) == len(keys), "the partner failed a proof"
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds() - cpu0 + process_cpu_seconds(partner_pid) - server0,
    }


def b3sum(files: list[Path]) -> dict[str, float]:
    os.sync()
    started = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(["b3sum", *map(str, files)], check=True, capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    seconds = time.perf_counter() - started
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return {"seconds": seconds, "cpu_seconds": cpu}


def rounds(
    repeat: int, first: Callable[[], dict[str, float]], second: Callable[[], dict[str, float]]
) -> list[tuple[dict[str, float], dict[str, float]]]:
    """``repeat`` pairs of (first, second), run in alternating order."""
    pairs = []
    for i in range(repeat):
        if i % 2 == 0:
            a = first()
            b = second()
        else:
            b = second()
            a = first()
        pairs.append((a, b))
        print(
            f"  round {i + 1}: {a['seconds']:.2f} s vs {b['seconds']:.2f} s, "
            f"cpu {a['cpu_seconds']:.2f} s (server {a.get('server_cpu_seconds', 0):.2f}) "
            f"vs {b['cpu_seconds']:.2f} s (server {b.get('server_cpu_seconds', 0):.2f})",
            flush=True,
        )
    return pairs


def summary(pairs: list[tuple[dict[str, float], dict[str, float]]], nbytes: int) -> dict[str, Any]:
    ratios = [b["seconds"] / a["seconds"] for a, b in pairs]
    cpu = [b["cpu_seconds"] / a["cpu_seconds"] for a, b in pairs]
    return {
        "ratio": round(statistics.median(ratios), 3),
        "ratio_per_round": [round(r, 3) for r in ratios],
        "cpu_ratio": round(statistics.median(cpu), 3),
        "archive_mb_per_s": round(
            nbytes / MB / statistics.median(a["seconds"] for a, _ in pairs), 1
        ),
        "baseline_mb_per_s": round(
            nbytes / MB / statistics.median(b["seconds"] for _, b in pairs), 1
        ),
        "archive_cpu_seconds": round(statistics.median(a["cpu_seconds"] for a, _ in pairs), 2),
        "baseline_cpu_seconds": round(statistics.median(b["cpu_seconds"] for _, b in pairs), 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--blob-mib", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--no-prove-after-put",
        action="store_true",
        help="the tier's prove_after_put = false (the partner's address check stands)",
    )
    args = parser.parse_args(argv)
    if shutil.which("b3sum") is None:
        raise SystemExit("b3sum is not installed (apt-get install -y b3sum)")
    work: Path = args.work
    run = work / "run"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    load_before = os.getloadavg()
    partner_port, bare_port = free_port(), free_port()
    partner_url, bare_url = f"http://127.0.0.1:{partner_port}", f"http://127.0.0.1:{bare_port}"
    (run / "partner").mkdir()
    config = partner_config(run / "partner", partner_port)
    node = make_home(
        run, partner_url, args.size_mib, args.blob_mib, prove_after_put=not args.no_prove_after_put
    )
    home_key = public_key_text(ensure_node_key(node.settings.node_key_path)[0])
    subprocess.run(
        [*PERMAFROST, "partner", "add", "home", "http://home.invalid",
         "--public-key", home_key, "--quota", "1T"],
        env=env_with(config), check=True, capture_output=True, cwd=ROOT,
    )  # fmt: skip
    files = stored_files(node)
    nbytes = sum(p.stat().st_size for p in files)
    bare_dir = run / "bare"
    bare_dir.mkdir()
    serve_partner = [*PERMAFROST, "serve", "--no-worker", "--port", str(partner_port)]
    serve_bare = [
        sys.executable, "-m", "uvicorn", "bench.federation_bare:app",
        "--host", "127.0.0.1", "--port", str(bare_port), "--log-level", "warning",
    ]  # fmt: skip
    bare_env = {**env_with(), "BARE_UPLOAD_DIR": str(bare_dir)}
    threads = node.settings.replicate_threads
    print(f"{len(files)} blobs, {nbytes / MB:.0f} MB; replicate threads {threads}", flush=True)
    with (
        server(
            serve_partner, f"{partner_url}/healthz", env_with(config), run / "partner.log"
        ) as pp,
        server(serve_bare, f"{bare_url}/healthz", bare_env, run / "bare.log") as bp,
    ):
        print("REPLICATE (archive vs httpx upload to a bare endpoint)", flush=True)
        replicated = rounds(
            args.repeat, lambda: replicate(node, pp), lambda: upload(files, bare_url, threads, bp)
        )
        assert all(a["copies"] == len(files) for a, _ in replicated)
        held = run / "partner" / "data" / "hot" / "partners"
        partner_files = sorted(p for p in held.rglob("*") if p.is_file())
        print("PROVE (proof of possession vs b3sum of the partner's files)", flush=True)
        proved = rounds(args.repeat, lambda: prove(node, pp), lambda: b3sum(partner_files))
    node.close()
    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_before": [round(x, 2) for x in load_before],
            "load_after": [round(x, 2) for x in os.getloadavg()],
        },
        "bytes": nbytes,
        "blobs": len(files),
        "prove_after_put": not args.no_prove_after_put,
        "replicate": {**summary(replicated, nbytes), "target": REPLICATE_TARGET},
        "prove": {**summary(proved, nbytes), "target": PROVE_TARGET},
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    ok = (
        result["replicate"]["ratio"] >= REPLICATE_TARGET
        and result["prove"]["ratio"] >= PROVE_TARGET
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
