"""Interrupted ingests: nothing half-visible, nothing lost, a rerun finishes the job."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlmodel import select

from archive.catalog import models
from archive.checkout import stream_blob
from archive.config import Settings
from archive.datasets import parse_ref
from archive.ingest import ingest_tree
from archive.node import ArchiveNode

from .conftest import NodeFactory

MiB = 1024 * 1024


def many_files(root: Path, count: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    for i in range(count):
        path = root / f"d{i % 17}" / f"f{i:05}.dat"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(rng.randint(2000, 12000)))


class Stop(Exception):
    pass


class StopAfter:
    """An ingest progress listener that pulls the plug after some files."""

    def __init__(self, files: int) -> None:
        self.left = files

    def started(self, files: int, total_bytes: int) -> None:
        pass

    def advanced(self, files: int, nbytes: int) -> None:
        self.left -= files
        if self.left <= 0:
            raise Stop


def assert_every_blob_row_has_bytes(node: ArchiveNode) -> int:
    with node.session() as session:
        blobs = session.exec(select(models.Blob)).all()
        for blob in blobs:
            data = b"".join(stream_blob(blob.b3, session=session, tiers=node.tiers))
            assert len(data) == blob.size
    return len(blobs)


def test_interrupted_ingest_leaves_no_version_and_resumes(
    make_node: NodeFactory, tmp_path: Path
) -> None:
    node = make_node(pack_size=1 * MiB)
    src = tmp_path / "src"
    many_files(src, 600)
    with pytest.raises(Stop):
        ingest_tree(node, src, parse_ref("lab/big"), progress=StopAfter(450))
    with node.session() as session:
        assert session.exec(select(models.Version)).all() == []
        assert session.exec(select(models.Dataset)).all() == []
    stored_first = assert_every_blob_row_has_bytes(node)
    assert 0 < stored_first < 600  # whole packs were kept, the open one discarded

    report = ingest_tree(node, src, parse_ref("lab/big"))
    assert report.created and report.version == 1 and report.files == 600
    assert report.new_blobs == 600 - stored_first  # nothing stored twice
    assert assert_every_blob_row_has_bytes(node) == 600


def test_sigkill_mid_ingest_then_rerun(tmp_path: Path) -> None:
    src = tmp_path / "src"
    many_files(src, 3000)
    data = tmp_path / "archive"
    env = {
        **os.environ,
        "PERMAFROST_DATA_DIR": str(data),
        "PERMAFROST_PACK_SIZE": str(1 * MiB),
        "PERMAFROST_ZSTD_LEVEL": "19",
    }
    env.pop("PERMAFROST_CONFIG", None)
    cmd = [sys.executable, "-m", "archive.cli", "ingest", str(src), "-C", "lab", "-D", "k"]
    subprocess.run(
        [sys.executable, "-m", "archive.cli", "init"],
        env=env,
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    proc = subprocess.Popen(
        cmd, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    catalog = data / "catalog.db"
    deadline = time.monotonic() + 60
    blobs = 0
    while time.monotonic() < deadline and proc.poll() is None:
        with sqlite3.connect(catalog, timeout=30) as conn:
            blobs = conn.execute("select count(*) from blob").fetchone()[0]
        if blobs >= 200:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "ingest finished before it could be killed; make the tree bigger"
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    settings = Settings(data_dir=data)
    node = ArchiveNode.open(settings)
    try:
        with node.session() as session:
            assert session.exec(select(models.Version)).all() == []
        assert assert_every_blob_row_has_bytes(node) >= 200
    finally:
        node.close()
    env["PERMAFROST_ZSTD_LEVEL"] = "3"
    result = subprocess.run(
        [*cmd, "--json"], env=env, cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    node = ArchiveNode.open(settings)
    try:
        assert assert_every_blob_row_has_bytes(node) == 3000
        with node.session() as session:
            assert len(session.exec(select(models.Version)).all()) == 1
            assert len(session.exec(select(models.Entry)).all()) == 3000
    finally:
        node.close()


@pytest.mark.slow
def test_memory_stays_flat_for_a_large_file(tmp_path: Path) -> None:
    """A 10 GiB sparse file and 64 MiB of random bytes ingest within 300 MB of RSS.

    The sparse file takes no disk and its zeros compress to next to nothing, so the
    test needs little space; it takes about a minute (BLAKE3, SHA-256 and zstd over
    10 GiB) and measured 186 MB of peak RSS.
    """
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "sparse.img", "wb") as fh:
        fh.truncate(10 * 1024 * MiB)
    (src / "random.bin").write_bytes(os.urandom(64 * MiB))
    env = {**os.environ, "PERMAFROST_DATA_DIR": str(tmp_path / "archive")}
    env.pop("PERMAFROST_CONFIG", None)
    # A child's ru_maxrss counts the pages it shared with its parent before exec: a
    # long pytest process would be measured too. A small launcher forks the ingest.
    launcher = (
        "import os, subprocess, sys\n"
        "proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)\n"
        "_, status, usage = os.wait4(proc.pid, 0)\n"
        "print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)\n"
    )
    cmd = [sys.executable, "-m", "archive.cli", "ingest", str(src), "-C", "lab", "-D", "big"]
    result = subprocess.run(
        [sys.executable, "-c", launcher, *cmd],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    code, maxrss_kb = (int(x) for x in result.stdout.split())
    assert code == 0, result.stderr
    peak_mb = maxrss_kb / 1024
    assert peak_mb < 300, f"peak RSS {peak_mb:.0f} MB"
    node = ArchiveNode.open(Settings(data_dir=tmp_path / "archive"), upgrade=False)
    try:
        with node.session() as session:
            sizes = sorted(b.size for b in session.exec(select(models.Blob)).all())
    finally:
        node.close()
    assert sizes == [64 * MiB, 10 * 1024 * MiB]
