"""Where one ingest spends its wall time: wraps the phases of archive.ingest in timers.

Runs ``ingest_tree`` in-process on a fresh embedded archive (the same settings
path as the CLI), with chosen functions wrapped to add up their wall time and
call counts. Nested phases overlap (e.g. ``seal`` includes ``promote``). Threads
count separately: ``encode_bytes`` runs on the pool, so its sum may exceed the
wall time.

    .venv/bin/python bench/experiments/phases.py DATA_DIR [PERMAFROST_X=V ...]
"""

from __future__ import annotations

import collections
import functools
import gc
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
if os.environ.get("BENCH_CODE"):  # a snapshot (bench/ingest.py --code) instead of the tree
    sys.path.insert(0, os.environ["BENCH_CODE"])

TOTALS: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0, 0.0])
CALLS: list[tuple[str, float, float, str]] = []
LOGGED = {"_Ingest.large", "Encoder.encode_stream", "LocalUpload.promote"}
_lock = threading.Lock()


def wrap(owner: Any, name: str, label: str | None = None) -> None:
    original = getattr(owner, name, None)
    if original is None:
        return  # the code moved on: archive/ is being edited by others
    key = label or f"{getattr(owner, '__name__', owner)}.{name}"

    @functools.wraps(original)
    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        cpu = time.thread_time()
        try:
            return original(*args, **kwargs)
        finally:
            spent = time.perf_counter() - started
            cpu_spent = time.thread_time() - cpu
            with _lock:
                if key in LOGGED:
                    what = getattr(args[1], "path", "") if len(args) > 1 else ""
                    CALLS.append((key, started, spent, str(what)))
                TOTALS[key][0] += spent
                TOTALS[key][1] += 1
                TOTALS[key][2] += cpu_spent

    setattr(owner, name, timed)


def _children_cpu() -> float:
    """CPU seconds of reaped child processes (the encoding workers)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    source = Path(sys.argv[1]).resolve()
    for pair in sys.argv[2:]:
        key, _, value = pair.partition("=")
        os.environ[key] = value
    work = Path(tempfile.mkdtemp(prefix="pf-phases-", dir=ROOT / ".bench"))
    os.environ["PERMAFROST_DATA_DIR"] = str(work / "data")
    os.environ.pop("PERMAFROST_CONFIG", None)
    os.chdir(work)

    t0 = time.perf_counter()
    import archive.blobstore as blobstore
    import archive.datasets as datasets
    import archive.encode_pool as encode_pool
    import archive.encoding as encoding
    import archive.ingest as ingest
    import archive.packs as packs
    import tiers.local as local
    from archive.config import load_settings
    from archive.datasets import parse_ref
    from archive.node import ArchiveNode

    imports = time.perf_counter() - t0

    wrap(ingest, "scan_tree")
    wrap(ingest, "_previous_entries")
    wrap(ingest._Ingest, "small")
    wrap(ingest._Ingest, "_read_small")
    wrap(ingest._Ingest, "_store_small")
    wrap(ingest._Ingest, "large")
    wrap(ingest, "known_blobs")
    wrap(ingest, "present_blobs")
    wrap(encoding.Encoder, "encode_bytes")
    wrap(encoding.Encoder, "encode_stream")
    wrap(encoding.Encoder, "looks_compressible")
    wrap(packs.PackWriter, "add")
    wrap(packs, "_header")
    wrap(packs.PackWriter, "seal")
    wrap(blobstore.BlobSink, "flush")
    wrap(blobstore.BlobSink, "_later")
    wrap(encode_pool._Worker, "receive")
    wrap(ingest, "_decoded")
    wrap(blobstore.BlobSink, "recorded_loose")
    wrap(blobstore, "record_pack")
    wrap(ingest, "commit_version")
    wrap(ingest, "plan", "replication.plan")
    wrap(datasets, "_manifest_entries")
    wrap(datasets, "_write_manifest")
    wrap(local.LocalUpload, "write")
    wrap(local.LocalUpload, "promote")
    wrap(local, "_fsync_folder")
    wrap(os, "fsync")

    settings = load_settings()
    t1 = time.perf_counter()
    node = ArchiveNode.open(settings)
    node.close()
    init = time.perf_counter() - t1  # permafrost init (creates the catalog)

    t2 = time.perf_counter()
    node = ArchiveNode.open(settings)
    opened = time.perf_counter() - t2
    gc.freeze()  # as the CLI does once the catalog is open (archive.cli_app._node)
    if os.environ.get("PHASES_GC") == "off":
        gc.disable()
    elif os.environ.get("PHASES_GC"):
        gc.set_threshold(int(os.environ["PHASES_GC"]), 10, 10)
    t3 = time.perf_counter()
    cpu0 = time.process_time()
    kids0 = _children_cpu()
    with node.session():
        pass
    report = ingest.ingest_tree(node, source, parse_ref(f"bench/{source.name}"))
    total = time.perf_counter() - t3
    cpu = time.process_time() - cpu0
    kids = _children_cpu() - kids0
    t4 = time.perf_counter()
    node.close()
    closed = time.perf_counter() - t4

    print(f"imports {imports:.2f} s, init {init:.2f} s, open {opened:.2f} s, close {closed:.2f} s")
    print(
        f"ingest_tree {total:.2f} s wall, {cpu:.2f} s process CPU, {kids:.2f} s in children; "
        f"files {report.files}, "
        f"{report.bytes / 1e6:.0f} MB -> stored {report.stored_bytes / 1e6:.0f} MB"
    )
    for key, started, spent, what in CALLS:
        print(f"  +{started - t3:6.2f} s  {key:<24} {spent:6.2f} s  {what}")
    print(f"{'phase':<34} {'wall s':>8} {'calls':>7} {'thread cpu s':>12}")
    for key, (spent, calls, cpu_spent) in sorted(TOTALS.items(), key=lambda kv: -kv[1][0]):
        print(f"{key:<34} {spent:8.2f} {int(calls):7d} {cpu_spent:12.2f}")


if __name__ == "__main__":
    main()
