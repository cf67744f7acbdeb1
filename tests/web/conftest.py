"""A real app on a temporary archive: SQLite catalog and local tiers under tmp_path."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import blake3
import pytest
from fastapi.testclient import TestClient

from archive.config import Settings
from archive.datasets import parse_ref
from archive.ingest import ingest_tree
from archive.node import ArchiveNode
from tests.support.server import live_server  # noqa: F401  (fixture)
from web.app import create_app

MiB = 1024 * 1024

#: The server's configured ``api_token``: an administrator, which most API tests act as.
ADMIN_TOKEN = "test-admin-token"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@dataclass(frozen=True)
class Content:
    data: bytes

    @property
    def b3(self) -> str:
        return blake3.blake3(self.data).hexdigest()

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def content(data: bytes) -> Content:
    return Content(data)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", api_token=ADMIN_TOKEN)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), headers=AUTH) as test_client:
        yield test_client


@pytest.fixture
def node(client: TestClient) -> ArchiveNode:
    opened: ArchiveNode = client.app.state.node  # type: ignore[attr-defined]
    return opened


#: Files of the sample dataset: compressible and not, packed (< 1 MiB) and loose.
SAMPLE_FILES: dict[str, bytes] = {
    "notes.txt": b"field notes, day %d\n" * 200,
    "data/table.csv": b"".join(b"%d,%d,%d\n" % (i, i * i, i % 7) for i in range(200_000)),
    "data/noise.bin": os.urandom(2 * MiB + 123),
    "data/tiny-noise.bin": os.urandom(3000),
    'odd/say "hi"; 100% done.txt': b"quoted\n",
    "odd/résumé \u2013 数据.txt": b"non-ASCII name\n",
}


def ingest_sample(node: ArchiveNode, root: Path) -> dict[str, bytes]:
    """The sample files ingested as ``c/d`` v1 through the CLI's own service."""
    for rel, data in SAMPLE_FILES.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    report = ingest_tree(node, root, parse_ref("c/d"), message="first")
    assert report.version == 1
    assert report.files == len(SAMPLE_FILES)
    return dict(SAMPLE_FILES)


@pytest.fixture
def sample(tmp_path: Path, node: ArchiveNode) -> dict[str, bytes]:
    return ingest_sample(node, tmp_path / "sample")


@dataclass(frozen=True)
class Archived:
    client: TestClient
    node: ArchiveNode
    files: dict[str, bytes]


@pytest.fixture(scope="module")
def archived(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archived]:
    """One app holding the sample, shared by a module's tests, which must only read."""
    root = tmp_path_factory.mktemp("archived")
    settings = Settings(data_dir=root / "data", api_token=ADMIN_TOKEN)
    with TestClient(create_app(settings), headers=AUTH) as test_client:
        opened: ArchiveNode = test_client.app.state.node  # type: ignore[attr-defined]
        yield Archived(test_client, opened, ingest_sample(opened, root / "sample"))
