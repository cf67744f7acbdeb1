"""An archive node on real parts: local folder or SeaweedFS S3 tiers, SQLite or PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from archive.config import LocalTierConfig, S3TierConfig, Settings
from archive.node import ArchiveNode

NodeFactory = Callable[..., ArchiveNode]


def _settings(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest, **overrides: Any
) -> Settings:
    data = tmp_path / "data"
    tiers: dict[str, Any]
    if kind == "s3":
        server = request.getfixturevalue("s3_server")
        hot = S3TierConfig(role="hot", **server.tier_settings(server.make_bucket()))
        cold = S3TierConfig(role="cold", **server.tier_settings(server.make_bucket()))
        tiers = {"hot": hot, "cold": cold}
    else:
        tiers = {
            "hot": LocalTierConfig(path=data / "tiers" / "hot", role="hot"),
            "cold": LocalTierConfig(path=data / "tiers" / "cold", role="cold"),
        }
    database_url = overrides.pop("database_url", None)
    return Settings(data_dir=data, database_url=database_url, tiers=tiers, **overrides)


@pytest.fixture(
    params=[
        pytest.param(("local", "sqlite"), id="local-sqlite"),
        pytest.param(("s3", "sqlite"), id="s3-sqlite", marks=pytest.mark.s3),
        pytest.param(("local", "postgres"), id="local-postgres", marks=pytest.mark.postgres),
    ]
)
def make_node(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[NodeFactory]:
    """Build archive nodes on the parametrised parts; all closed at teardown."""
    kind, database = request.param
    database_url = None
    if database == "postgres":
        database_url = request.getfixturevalue("postgres_schema_url")
    base = _settings(kind, tmp_path, request, database_url=database_url)
    nodes: list[ArchiveNode] = []

    def factory(**overrides: Any) -> ArchiveNode:
        """Open (or reopen) the same archive, optionally with other settings."""
        settings = base.model_copy(update=overrides) if overrides else base
        node = ArchiveNode.open(settings)
        nodes.append(node)
        return node

    yield factory
    for node in nodes:
        node.close()


@pytest.fixture
def node(make_node: NodeFactory) -> ArchiveNode:
    return make_node()


@pytest.fixture
def local_node(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ArchiveNode]:
    node = ArchiveNode.open(_settings("local", tmp_path, request))
    yield node
    node.close()


class Cli:
    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.cwd = cwd
        self.env = env

    def __call__(self, *args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "archive.cli", *args],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == code, (
            f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
        )
        return result

    def json(self, *args: str, code: int = 0) -> object:
        return json.loads(self(*args, "--json", code=code).stdout)


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    """The embedded default: no config at all, everything under ./permafrost-data."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERMAFROST_")}
    work = tmp_path / "work"
    work.mkdir()
    return Cli(work, env)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str | None:
    """The catalog for a test that builds its own settings: the embedded SQLite default
    (None), or a fresh PostgreSQL schema when the tests may use one."""
    if request.param == "postgres":
        url: str = request.getfixturevalue("postgres_schema_url")
        return url
    return None


@pytest.fixture
def local_db_node(tmp_path: Path, database_url: str | None) -> Iterator[ArchiveNode]:
    """Local hot and cold folders, on each catalog database in turn."""
    data = tmp_path / "data"
    node = ArchiveNode.open(
        Settings(
            data_dir=data,
            database_url=database_url,
            tiers={
                "hot": LocalTierConfig(path=data / "tiers" / "hot", role="hot"),
                "cold": LocalTierConfig(path=data / "tiers" / "cold", role="cold"),
            },
        )
    )
    yield node
    node.close()
