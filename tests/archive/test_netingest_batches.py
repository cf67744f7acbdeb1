"""Network ingest sends small files in batches (``POST /blobs/batch``), stored as packs.

Against a live server with a local or an S3 (SeaweedFS) hot tier: the requests are
counted on the wire, the packs in the catalog, and every file read back.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import col, select

from archive.catalog import models
from archive.client import ServerUnreachable
from archive.config import Settings
from archive.errors import UnsupportedFile
from archive.node import ArchiveNode
from tests.archive.test_netingest import TOKEN, FailPuts, run
from tests.support.server import serve
from web.app import create_app

MiB = 1024 * 1024


class CountUploads:
    """The real API behind a counter of single uploads and batches."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.puts = 0
        self.batches = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "PUT":
            self.puts += 1
        if scope["type"] == "http" and scope["method"] == "POST":
            self.batches += scope["path"].endswith("/blobs/batch")
        await self.app(scope, receive, send)


def small_tree(root: Path, files: int = 150) -> dict[str, bytes]:
    rng = random.Random(5)
    tree: dict[str, bytes] = {}
    for i in range(files):
        size = rng.randint(0, 40_000)
        tree[f"d{i % 6}/f{i:03}.dat"] = (
            rng.randbytes(size) if i % 2 else b"%d;" % i * (size // 4 + 1)
        )
    tree["large/one.bin"] = os.urandom(MiB + 17)  # pack_below is 1 MiB: one PUT
    tree["large/two.csv"] = b"".join(b"%d,%d\n" % (i, i * 3) for i in range(200_000))
    for rel, data in tree.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return tree


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def server_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    tiers: dict[str, Any] = {}
    if request.param == "s3":
        server = request.getfixturevalue("s3_server")
        tiers = {"hot": {"kind": "s3", "role": "hot", **server.tier_settings(server.make_bucket())}}
    return Settings(data_dir=tmp_path / "server", api_token=TOKEN, tiers=tiers)


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as exits:
        yield exits


def fetch(url: str, path: str) -> bytes:
    response = httpx.get(
        f"{url}/api/v1/datasets/lab/run/versions/1/files/{path}",
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert response.status_code == 200, response.text
    return response.content


def packs(node: ArchiveNode) -> list[int]:
    with node.reading() as session:
        return sorted(p.member_count for p in session.exec(select(models.Pack)).all())


def test_a_tree_of_small_files_goes_in_batches_and_commits(
    server_settings: Settings, tmp_path: Path, stack: ExitStack
) -> None:
    app = create_app(server_settings)
    counter = CountUploads(app)
    url = stack.enter_context(serve(counter))  # type: ignore[arg-type]
    root = tmp_path / "tree"
    tree = small_tree(root)
    report = run(url, root, tmp_path / "journal", jobs=3, batch_files=40)
    assert report.version == 1 and report.uploaded_files == len(tree)
    assert report.uploaded_bytes == sum(map(len, tree.values()))
    small = len(tree) - 2
    assert (counter.puts, counter.batches) == (2, -(-small // 40))  # 150 files: 4 batches
    node: ArchiveNode = app.state.node
    assert sum(packs(node)) == small and len(packs(node)) == 4
    with node.reading() as session:
        loose = session.exec(select(models.Replica).where(col(models.Replica.blob_b3).is_not(None)))
        assert len(loose.all()) == 2
    for rel, data in tree.items():
        assert fetch(url, rel) == data


def test_an_interrupted_run_resumes_without_resending_its_batches(
    tmp_path: Path, stack: ExitStack
) -> None:
    settings = Settings(data_dir=tmp_path / "server", api_token=TOKEN)
    app = create_app(settings)
    failing = FailPuts(app, succeed_first=2)  # two batches arrive, then the network is down
    url = stack.enter_context(serve(failing))  # type: ignore[arg-type]
    root = tmp_path / "tree"
    tree = small_tree(root, files=100)
    tree = {k: v for k, v in tree.items() if not k.startswith("large/")}
    for rel in ("large/one.bin", "large/two.csv"):
        (root / rel).unlink()
    with pytest.raises(ServerUnreachable):
        run(url, root, tmp_path / "journal", jobs=1, batch_files=25)
    node: ArchiveNode = app.state.node
    assert packs(node) == [25, 25]

    failing.succeed_first = None  # the network is back
    sent_before = failing.puts
    again = run(url, root, tmp_path / "journal", jobs=1, batch_files=25)
    assert again.hashed == 0 and again.version == 1
    assert again.uploaded_files == 50 and failing.puts - sent_before == 2  # what did not arrive
    assert packs(node) == [25, 25, 25, 25]
    for rel, data in tree.items():
        assert fetch(url, rel) == data


def test_a_file_that_changes_size_before_its_batch_is_sent_is_refused(
    tmp_path: Path, stack: ExitStack
) -> None:
    settings = Settings(data_dir=tmp_path / "server", api_token=TOKEN)
    app = create_app(settings)
    url = stack.enter_context(serve(app))
    root = tmp_path / "tree"
    root.mkdir()
    for i in range(5):
        (root / f"f{i}.txt").write_bytes(b"file %d\n" % i)
    victim = root / "f3.txt"

    class GrowBeforeUpload:
        def phase(self, name: str, files: int, nbytes: int) -> None:
            if name == "upload":
                victim.write_bytes(b"file 3, now longer\n")

        def advanced(self, name: str, files: int, nbytes: int) -> None:
            pass

    with pytest.raises(UnsupportedFile, match="changed since it was hashed") as refused:
        run(url, root, tmp_path / "journal", progress=GrowBeforeUpload())
    assert refused.value.path == "f3.txt"
    assert packs(app.state.node) == []  # nothing of the batch was sent
    report = run(url, root, tmp_path / "journal")
    assert report.hashed == 1 and report.version == 1
    assert fetch(url, "f3.txt") == b"file 3, now longer\n"


class WithoutBatches:
    """The real API as a server from before batches answers: no ``/blobs/batch`` route."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].endswith("/blobs/batch"):
            await send({"type": "http.response.start", "status": 405, "headers": []})
            await send({"type": "http.response.body", "body": b'{"detail":"Method Not Allowed"}'})
            return
        await self.app(scope, receive, send)


@pytest.mark.parametrize("server", ["does-not-pack", "from-before-batches"])
def test_a_server_without_batches_gets_one_put_per_file(
    server: str, tmp_path: Path, stack: ExitStack
) -> None:
    pack_below = 0 if server == "does-not-pack" else 1024 * 1024
    settings = Settings(data_dir=tmp_path / "server", api_token=TOKEN, pack_below=pack_below)
    app = create_app(settings)
    counter = CountUploads(app if server == "does-not-pack" else WithoutBatches(app))
    url = stack.enter_context(serve(counter))  # type: ignore[arg-type]
    root = tmp_path / "tree"
    tree = small_tree(root, files=12)
    report = run(url, root, tmp_path / "journal", jobs=2)
    assert report.version == 1 and report.uploaded_files == len(tree)
    assert (counter.puts, counter.batches) == (len(tree), 0)
    assert packs(app.state.node) == []
    for rel, data in tree.items():
        assert fetch(url, rel) == data
