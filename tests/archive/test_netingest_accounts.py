"""`permafrost ingest --server` with personal API tokens: members write, others are refused."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from archive.client import ArchiveClient, RetryPolicy, ServerRefused
from archive.config import Settings
from archive.datasets import parse_ref
from archive.journal import Journal, journal_path
from archive.netingest import NetIngestReport, network_ingest
from tests.support.accounts import Person, add_people
from tests.support.server import live_server  # noqa: F401  (fixture)
from web.app import create_app

FAST = RetryPolicy(attempts=2, base_seconds=0.01, max_seconds=0.05)


def _ingest(url: str, token: str, root: Path, ref: str, journal_dir: Path) -> NetIngestReport:
    with ArchiveClient(url, token, retry=FAST) as client:
        journal = Journal(journal_path(client.server, root, journal_dir))
        try:
            return network_ingest(client, root, parse_ref(ref), journal=journal)
        finally:
            journal.close()


@pytest.fixture
def served(tmp_path: Path, live_server: Callable[[FastAPI], str]) -> tuple[str, dict[str, Person]]:  # noqa: F811
    app = create_app(Settings(data_dir=tmp_path / "server"))
    url = live_server(app)
    return url, add_people(app.state.node)


def test_a_writer_ingests_with_a_personal_token(
    served: tuple[str, dict[str, Person]], tmp_path: Path
) -> None:
    url, people = served
    root = tmp_path / "tree"
    (root / "sub").mkdir(parents=True)
    files = {"a.txt": b"alpha\n", "sub/b.bin": os.urandom(300_000)}
    for rel, data in files.items():
        (root / rel).write_bytes(data)
    report = _ingest(url, people["writer"].token, root, "lab/run", tmp_path / "j1")
    assert (report.version, report.files) == (1, 2)
    for rel, data in files.items():
        got = httpx.get(
            f"{url}/api/v1/datasets/lab/run/versions/1/files/{rel}", headers=people["reader"].auth
        )
        assert got.content == data

    # The same tree into a collection the caller is not a member of: refused, nothing made.
    with pytest.raises(ServerRefused, match="404 NotFound"):
        _ingest(url, people["writer"].token, root, "other/run", tmp_path / "j2")
    listed = httpx.get(f"{url}/api/v1/datasets", headers=people["admin"].auth).json()
    assert [(d["collection"], d["name"]) for d in listed] == [("lab", "run")]
