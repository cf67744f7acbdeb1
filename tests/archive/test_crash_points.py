"""SIGKILL an ingest at many points of its life, on local and S3 hot tiers.

Each run starts a fresh archive, starts ``permafrost ingest`` and kills it after a
delay; the delays are spread evenly over the length of one whole ingest (measured
first), so the kills land in start-up, hashing and packing, promotes, the manifest
write and the catalog commit. After each kill:

* any version the catalog shows is complete: all its entries, its manifest object
  present and hashing to the recorded BLAKE3;
* every blob row has its bytes (read back whole, every digest proven);
* a rerun of the same command commits the version;
* ``gc`` (grace 0) removes what the kill left, and afterwards every stored object is
  named by the catalog and ``verify`` passes.

``PERMAFROST_CRASH_RUNS`` sets the number of kills on the local tier (default 8; the
S3 tier gets half, each of its runs being about three times as long). Set it to 30 for
the full sweep: about 4 minutes local and 6 on S3 on a 2-core machine.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import blake3
import pytest
from sqlmodel import select

from archive.catalog import models
from archive.checkout import stream_blob
from archive.config import load_settings
from archive.gc import collect_garbage
from archive.node import ArchiveNode
from archive.verify import verify_version

RUNS = int(os.environ.get("PERMAFROST_CRASH_RUNS", "8"))
MiB = 1024 * 1024


def make_tree(root: Path) -> int:
    rng = random.Random(11)
    for i in range(400):
        path = root / f"d{i % 9}" / f"f{i:04}.dat"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(rng.randint(500, 9000)))
    (root / "large").mkdir()
    (root / "large/random.bin").write_bytes(rng.randbytes(3 * MiB))
    (root / "large/text.csv").write_bytes(b"".join(b"%d,%d\n" % (i, i * 7) for i in range(300_000)))
    return 402


def write_config(path: Path, data: Path, hot: dict[str, Any] | None) -> dict[str, str]:
    lines = [f"data_dir = {json.dumps(str(data))}", "pack_size = 1048576"]
    if hot is None:
        lines.append(f'[tiers.hot]\nkind = "local"\nrole = "hot"\npath = "{data / "hot"}"')
    else:
        lines.append('[tiers.hot]\nkind = "s3"\nrole = "hot"')
        lines += [f"{k} = {json.dumps(v)}" for k, v in hot.items()]
    path.write_text("\n".join(lines) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERMAFROST_")}
    env["PERMAFROST_CONFIG"] = str(path)
    return env


def ingest_cmd(src: Path) -> list[str]:
    return [sys.executable, "-m", "archive.cli", "ingest", str(src), "-C", "lab", "-D", "crash"]


def check_consistent(node: ArchiveNode, files: int) -> bool:
    """The invariants after a kill; returns whether a version is visible."""
    with node.session() as session:
        versions = session.exec(select(models.Version)).all()
        for v in versions:
            entries = session.exec(select(models.Entry).where(models.Entry.version_id == v.id))
            assert len(entries.all()) == v.file_count == files
            with node.hot.open(v.manifest_key) as manifest:
                assert blake3.blake3(manifest.read()).hexdigest() == v.manifest_b3
        for blob in session.exec(select(models.Blob)).all():
            data = b"".join(stream_blob(blob.b3, session=session, tiers=node.tiers))
            assert len(data) == blob.size and blake3.blake3(data).hexdigest() == blob.b3
    return bool(versions)


def settle(node: ArchiveNode) -> None:
    """gc with no grace, then: every object named, every copy verified."""
    collect_garbage(node, grace=dt.timedelta(0))
    with node.session() as session:
        named = {r.key for r in session.exec(select(models.Replica)).all()}
        named |= {v.manifest_key for v in session.exec(select(models.Version)).all()}
        named |= {k.replace(".tar", ".json") for k in named if k.startswith("packs/")}
        assert {i.key for i in node.hot.list("")} == named
        for v in session.exec(select(models.Version)).all():
            report = verify_version(v, session=session, tiers=node.tiers)
            assert report.failures == [] and report.copies > 0


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["local", pytest.param("s3", marks=pytest.mark.s3)])
def test_sigkill_at_many_points_then_rerun_and_gc(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    src = tmp_path / "src"
    files = make_tree(src)

    def archive(run: str) -> tuple[dict[str, str], Path]:
        hot = None
        if kind == "s3":
            server = request.getfixturevalue("s3_server")
            hot = server.tier_settings(server.make_bucket())
        data = tmp_path / run
        return write_config(tmp_path / f"{run}.toml", data, hot), data

    env, _ = archive("measure")
    started = time.monotonic()
    subprocess.run(ingest_cmd(src), env=env, cwd=tmp_path, check=True, capture_output=True)
    whole = time.monotonic() - started

    runs = RUNS if kind == "local" else max(2, RUNS // 2)
    outcomes = {"no version": 0, "committed": 0}
    for i in range(runs):
        env, _ = archive(f"run{i}")
        proc = subprocess.Popen(
            ingest_cmd(src),
            env=env,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(whole * (i + 0.5) / runs)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        node = ArchiveNode.open(load_settings(Path(env["PERMAFROST_CONFIG"])))
        try:
            visible = check_consistent(node, files)
            outcomes["committed" if visible else "no version"] += 1
            rerun = subprocess.run(
                [*ingest_cmd(src), "--json"], env=env, cwd=tmp_path, capture_output=True, text=True
            )
            assert rerun.returncode == 0, rerun.stderr
            assert json.loads(rerun.stdout)["version"] == 1  # finished, never a second version
            assert check_consistent(node, files)
            settle(node)
        finally:
            node.close()
    # The kills covered both sides of the commit (the last ones land after it).
    assert outcomes["no version"] >= runs // 3, outcomes
