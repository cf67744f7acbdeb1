"""Small files encoded in worker processes (archive.encode_pool) store exactly what the
thread path stores; a worker that dies fails the ingest cleanly, and workers that
cannot start leave the work to threads. The workers' answers are read ahead on a
thread of their own (EncodeAhead), within a bound, from before the catalog loads."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from archive import ingest_start as start_module
from archive.catalog import models
from archive.config import LocalTierConfig, Settings
from archive.encode_pool import EncodeAhead, EncoderPool, WorkerDied
from archive.encode_worker import Encoded, encode_files
from archive.encoding import BlobDigest, Encoder
from archive.errors import UnsupportedFile
from archive.ingest import ingest_tree
from archive.ingest_start import GROUP_FILES, PROCESSES_FROM, begin_ingest
from archive.node import ArchiveNode
from archive.refs import parse_ref
from tests.support.imports import CATALOG_MODULES

FILES = PROCESSES_FROM + 200


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Small files above the process threshold: text that compresses, random that does not."""
    root = tmp_path_factory.mktemp("small")
    rng = random.Random(7)
    for i in range(FILES):
        folder = root / f"d{i % 13:02d}"
        folder.mkdir(exist_ok=True)
        size = rng.randint(0, 6000)
        data = (
            rng.randbytes(size)
            if i % 3 == 0
            else (f"row {i},{rng.random():.6f}\n" * (size // 20 + 1)).encode()[:size]
        )
        (folder / f"f{i:05d}.dat").write_bytes(data)
    return root


def open_node(root: Path) -> ArchiveNode:
    settings = Settings(
        data_dir=root,
        tiers={"hot": LocalTierConfig(path=root / "hot", role="hot", fsync=False)},
    )
    return ArchiveNode.open(settings)


def catalog(node: ArchiveNode) -> dict[str, Any]:
    with node.session() as session:
        return {
            "entries": sorted(
                (e.path, e.blob_b3) for e in session.exec(select(models.Entry)).all()
            ),
            "blobs": sorted(
                (b.b3, b.sha256, b.size, b.stored_size, b.stored_b3, b.codec)
                for b in session.exec(select(models.Blob)).all()
            ),
            "packs": sorted(p.id for p in session.exec(select(models.Pack)).all()),
        }


class CountingPool(EncoderPool):
    started: list[EncoderPool] = []

    def __init__(self, workers: int, level: int) -> None:
        super().__init__(workers, level)
        CountingPool.started.append(self)


def test_processes_store_what_threads_store(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    CountingPool.started = []
    monkeypatch.setattr(start_module, "EncoderPool", CountingPool)
    in_processes = open_node(tmp_path / "processes")
    report = ingest_tree(in_processes, tree, parse_ref("lab/small"))
    assert report.files == FILES and len(CountingPool.started) == 1

    monkeypatch.setattr(start_module, "PROCESSES_FROM", FILES + 1)
    on_threads = open_node(tmp_path / "threads")
    ingest_tree(on_threads, tree, parse_ref("lab/small"))
    assert len(CountingPool.started) == 1, "the second ingest ran on threads"

    processes, threads = catalog(in_processes), catalog(on_threads)
    assert len(processes["entries"]) == FILES and processes["packs"]
    assert processes == threads  # same blobs, same digests, packs byte for byte
    for node in (in_processes, on_threads):
        node.close()


def test_encode_files_reports_what_it_cannot_encode(tmp_path: Path) -> None:
    good = tmp_path / "good"
    good.write_bytes(b"hello " * 100)
    results = encode_files(3, [(str(good), 600), (str(tmp_path / "gone"), 5), (str(good), 601)])
    digests, stored = results[0]
    expected, expected_stored = Encoder(3).encode_bytes(good.read_bytes())
    assert digests is not None and BlobDigest(*digests) == expected
    assert stored == expected_stored
    assert results[1] == (None, "No such file or directory")
    assert results[2] == (None, "file changed while being read")


def test_a_killed_worker_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 100)
    work = [(i, [(str(path), 100)]) for i in range(6)]
    with EncoderPool(2, 3) as pool:
        assert [tag for tag, _ in pool.encode(work[:2])] == [0, 1]
        os.kill(pool._workers[1].process.pid, signal.SIGKILL)
        pool._workers[1].process.wait()
        with pytest.raises(WorkerDied, match="stopped"):
            list(pool.encode(work))


class DyingPool(EncoderPool):
    """Kills one of its workers once the first groups came back: a crash mid-ingest."""

    def encode(
        self, groups: Iterable[tuple[Any, list[tuple[str, int]]]], *, in_flight: int = 2
    ) -> Iterator[tuple[Any, list[Encoded]]]:
        for count, answer in enumerate(super().encode(groups, in_flight=in_flight)):
            if count == 2:
                os.kill(self._workers[0].process.pid, signal.SIGKILL)
            yield answer


def test_a_worker_dying_mid_ingest_fails_it_and_a_rerun_completes(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = open_node(tmp_path / "archive")
    monkeypatch.setattr(start_module, "EncoderPool", DyingPool)
    with pytest.raises(WorkerDied):
        ingest_tree(node, tree, parse_ref("lab/small"))
    with node.session() as session:
        assert not session.exec(select(models.Version)).all()
        assert not session.exec(select(models.Entry)).all()
    staging = tmp_path / "archive" / "hot" / ".staging"
    assert not staging.exists() or not any(staging.iterdir())

    monkeypatch.setattr(start_module, "EncoderPool", EncoderPool)
    report = ingest_tree(node, tree, parse_ref("lab/small"))
    assert (report.version, report.files) == (1, FILES)
    node.close()


def test_workers_that_cannot_start_leave_the_work_to_threads(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = open_node(tmp_path / "archive")
    monkeypatch.setattr(sys, "executable", "/bin/false")  # every worker exits at once
    report = ingest_tree(node, tree, parse_ref("lab/small"))
    assert (report.version, report.files) == (1, FILES)
    assert len(catalog(node)["entries"]) == FILES
    node.close()


def test_read_ahead_yields_what_the_pool_encodes_in_order(tree: Path) -> None:
    files = sorted(str(p) for p in tree.rglob("*.dat"))[:300]
    work = [
        (i, [(path, os.path.getsize(path)) for path in files[i : i + 7]]) for i in range(0, 300, 7)
    ]
    with EncoderPool(2, 3) as pool:
        direct = list(pool.encode(work))
    with EncodeAhead(EncoderPool(2, 3), iter(work), max_bytes=10_000) as ahead:
        assert list(ahead) == direct
    assert [tag for tag, _ in direct] == list(range(0, 300, 7))
    assert direct[0][1] == encode_files(3, work[0][1])


def test_read_ahead_holds_at_most_its_bound_and_close_stops_the_workers(tree: Path) -> None:
    path = next(tree.rglob("*.dat"))
    size = path.stat().st_size
    pulled: list[int] = []

    def groups() -> Iterator[tuple[int, list[tuple[str, int]]]]:
        for i in range(200):
            pulled.append(i)
            yield i, [(str(path), size)]

    pool = EncoderPool(2, 3)
    processes = [w.process for w in pool._workers]
    ahead = EncodeAhead(pool, groups(), max_bytes=1)  # every answer is over the bound
    assert [tag for tag, _ in zip(range(3), ahead, strict=False)] == [0, 1, 2]
    time.sleep(1.0)  # the workers would have encoded all 200 groups by now, unbounded
    # Taken 3 + one held ready + one waiting in the thread + 2 in flight per worker.
    assert len(pulled) <= 3 + 1 + 1 + 2 * 2 + 1
    ahead.close()
    assert [p.wait(timeout=5) for p in processes] == [0, 0]


def test_read_ahead_raises_a_dead_worker_after_the_groups_before_it(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 100)
    work = [(i, [(str(path), 100)]) for i in range(40)]
    got: list[int] = []
    ahead = EncodeAhead(DyingPool(2, 3), iter(work), max_bytes=1 << 20)
    answers = iter(ahead)
    with ahead:
        for _ in range(3):
            got.append(next(answers)[0])
        with pytest.raises(WorkerDied):
            got.extend(tag for tag, _ in answers)
    # Everything a worker answered before it died is handed on, in order, then the error.
    assert len(got) < len(work) and got == list(range(len(got)))


# As the CLI does: begin the ingest, and see what is encoded before the catalog loads.
BEGIN_WITHOUT_CATALOG = f"""
import json, sys
from pathlib import Path
from archive.config import Settings
from archive.ingest_start import begin_ingest
with begin_ingest(Path(sys.argv[1]), Settings(data_dir=Path(sys.argv[2]))) as begun:
    assert begun.ahead is not None
    group, encoded = next(iter(begun.ahead))
    print(json.dumps({{
        "loaded": [m for m in {CATALOG_MODULES!r} if m in sys.modules],
        "files": [f.abspath for f in group],
        "b3": [digests[0] for digests, _ in encoded],
        "groups": len(begun.groups),
    }}))
"""


def test_an_ingest_encodes_small_files_before_the_catalog_loads(tree: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", BEGIN_WITHOUT_CATALOG, str(tree), str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    seen = json.loads(result.stdout)
    assert seen["loaded"] == []
    assert seen["groups"] == -(-FILES // GROUP_FILES) and len(seen["files"]) == GROUP_FILES
    expected = Encoder(3)
    assert seen["b3"] == [expected.encode_bytes(Path(f).read_bytes())[0].b3 for f in seen["files"]]


def test_the_cli_ingests_many_small_files_through_the_workers(tree: Path, cli: Any) -> None:
    report = cli.json("ingest", str(tree), "--collection", "lab", "--dataset", "small")
    assert (report["files"], report["version"]) == (FILES, 1)
    shown = cli.json("show", "lab/small")
    files = {f["path"]: f["blake3"] for f in shown["files"]}
    assert len(files) == FILES
    one = next(iter(sorted(files)))
    assert files[one] == Encoder(3).encode_bytes((tree / one).read_bytes())[0].b3
    cli("verify", "lab/small")


def test_a_file_gone_after_the_scan_fails_the_ingest_and_stops_the_workers(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    shutil.copytree(tree, src)
    node = open_node(tmp_path / "archive")
    # One encoded group may wait: the workers cannot reach the last group before the
    # ingest takes the ones before it, so it is gone before they read it.
    monkeypatch.setattr(start_module, "AHEAD_BYTES", 1)
    begun = begin_ingest(src, node.settings)
    assert begun.ahead is not None
    processes = [w.process for w in begun.ahead._pool._workers]
    victim = begun.groups[-1][-1]
    os.unlink(victim.abspath)
    with pytest.raises(UnsupportedFile, match="No such file") as caught:
        ingest_tree(node, src, parse_ref("lab/small"), begun=begun)
    assert caught.value.path == victim.path
    assert [p.wait(timeout=5) for p in processes] == [0, 0]
    with node.session() as session:
        assert not session.exec(select(models.Version)).all()
        assert not session.exec(select(models.Entry)).all()
    staging = tmp_path / "archive" / "hot" / ".staging"
    assert not staging.exists() or not any(staging.iterdir())
    node.close()
