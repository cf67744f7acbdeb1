"""Cold-only files: restore through CLI and API, the delay honoured, the cost shown first."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from archive.config import LocalColdTierConfig, LocalTierConfig, Settings
from archive.datasets import parse_ref
from archive.ingest import ingest_tree
from archive.node import ArchiveNode
from archive.worker import Worker
from web.app import create_app

DELAY = 2.0
CLI_DELAY = 8.0  # each CLI call costs about a second to start: leave room for two


def _cold_only(node: ArchiveNode) -> None:
    """Lose every hot object, so only the cold copies remain."""
    root = Path(node.settings.tiers["hot"].path)  # type: ignore[union-attr]
    shutil.rmtree(root / "blobs", ignore_errors=True)
    shutil.rmtree(root / "packs", ignore_errors=True)


def test_restore_through_the_cli_honours_the_delay(
    tmp_path: Path, database_url: str | None
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "permafrost.toml").write_text(
        (f'database_url = "{database_url}"\n' if database_url else "")
        + '[tiers.hot]\nkind = "local"\npath = "permafrost-data/tiers/hot"\n'
        f'[tiers.cold]\nkind = "local-cold"\npath = "permafrost-data/tiers/cold"\n'
        f"restore_delay_seconds = {CLI_DELAY}\nprice_per_gib = 0.5\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERMAFROST_")}
    src = tmp_path / "src"
    src.mkdir()
    big = os.urandom(3 * 1024 * 1024)
    (src / "big.bin").write_bytes(big)
    (src / "note.txt").write_text("small, so it travels to cold in a pack")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "archive.cli", *args],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )

    assert cli("ingest", str(src), "-C", "lab", "-D", "cold").returncode == 0
    assert cli("worker", "--once").returncode == 0
    node = ArchiveNode.open(
        Settings(
            data_dir=work / "permafrost-data",
            database_url=database_url,
            tiers={
                "hot": LocalTierConfig(path=work / "permafrost-data/tiers/hot"),
                "cold": LocalColdTierConfig(path=work / "permafrost-data/tiers/cold"),
            },
        )
    )
    _cold_only(node)
    node.close()

    shown = cli("restore", "lab/cold", "--json")
    assert shown.returncode == 0, shown.stderr
    assert '"objects": 2' in shown.stdout and '"price_per_gib": 0.5' in shown.stdout

    first = cli("get", "lab/cold", "big.bin", "-o", str(tmp_path / "big.bin"))
    assert first.returncode == 3, first.stderr
    assert "restore requested" in first.stderr and "ready in about" in first.stderr
    assert not (tmp_path / "big.bin").exists()
    again = cli("get", "lab/cold", "big.bin", "-o", str(tmp_path / "big.bin"))
    assert again.returncode == 3  # the delay is not over yet
    time.sleep(CLI_DELAY + 0.5)
    assert cli("worker", "--once", "--loops", "restore").returncode == 0
    done = cli("get", "lab/cold", "big.bin", "-o", str(tmp_path / "big.bin"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "big.bin").read_bytes() == big
    # The small file's pack was not restored yet: one more round trip for it.
    assert cli("get", "lab/cold", "note.txt", "-o", "-").returncode == 3


@pytest.fixture
def cold_archive(tmp_path: Path, database_url: str | None) -> tuple[Settings, bytes]:
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        tiers={
            "hot": LocalTierConfig(path=tmp_path / "data/hot"),
            "cold": LocalColdTierConfig(
                path=tmp_path / "data/cold", restore_delay_seconds=DELAY, price_per_gib=2.0
            ),
        },
    )
    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(2 * 1024 * 1024)
    (src / "f.bin").write_bytes(data)
    node = ArchiveNode.open(settings)
    ingest_tree(node, src, parse_ref("lab/api"))
    Worker(node).run_once()
    _cold_only(node)
    node.close()
    return settings, data


def test_restore_through_the_api(cold_archive: tuple[Settings, bytes]) -> None:
    settings, data = cold_archive
    settings = settings.model_copy(update={"api_token": SecretStr("restore-token")})
    url = "/api/v1/datasets/lab/api/versions/latest/files/f.bin"
    auth = {"Authorization": "Bearer restore-token"}
    with TestClient(create_app(settings), headers=auth) as client:
        refused = client.get(url)
        assert refused.status_code == 409
        assert refused.json()["error"] == "RestoreRequired"

        plan = client.post("/api/v1/restores", json={"dataset": "lab/api"})
        assert plan.status_code == 200
        assert plan.json()["plan"]["objects"] == 1
        assert plan.json()["requests"] == []
        [option] = plan.json()["plan"]["options"]
        assert option["price_per_gib"] == 2.0 and option["bytes"] == 2 * 1024 * 1024

        asked = client.post("/api/v1/restores", json={"dataset": "lab/api", "confirm": True})
        assert asked.status_code == 202
        assert asked.json()["requests"][0]["state"] == "in-progress"
        assert client.get("/api/v1/restores").json()[0]["key"].startswith("blobs/b3/")
        assert client.get(url).status_code == 409  # not before the delay

        time.sleep(DELAY + 0.5)
        node: ArchiveNode = client.app.state.node  # type: ignore[attr-defined]
        assert Worker(node, loops=["restore"]).run_once()["restore"] == 1
        assert client.get("/api/v1/restores").json()[0]["state"] == "ready"
        got = client.get(url)
        assert got.status_code == 200
        assert got.content == data
        status = client.get("/api/v1/status").json()
        assert status["datasets"]["total"] == 1
