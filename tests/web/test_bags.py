"""POST /api/v1/bags: a bag uploaded as a zip or tar, validated strictly, stored or refused."""

from __future__ import annotations

import io
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import bagit
import httpx
import pytest
from fastapi.testclient import TestClient

from archive.config import Settings
from archive.node import ArchiveNode
from archive.safe_extract import ExtractLimits
from tests.support.archive_state import snapshot
from tests.support.server import serve
from web.api.bags import get_bag_limits
from web.app import create_app

API = "/api/v1"
FILES = {"a.txt": b"alpha\n", "sub/b.bin": bytes(range(256)) * 1000}


def bag_zip(tmp_path: Path, *, damage: bool = False, top: str = "incoming") -> bytes:
    folder = tmp_path / top
    for rel, content in FILES.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(content)
    bagit.make_bag(str(folder), {"Title": "Uploaded bag"}, checksums=["sha256", "sha512"])
    if damage:
        (folder / "data" / "a.txt").write_bytes(b"ALPHA\n")  # same size, other bytes
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, f"{top}/{path.relative_to(folder).as_posix()}")
    return buffer.getvalue()


def scratch(settings: Settings) -> list[Path]:
    return list((settings.data_dir / "tmp").rglob("*"))


def test_a_valid_bag_becomes_a_version(
    client: TestClient, node: ArchiveNode, settings: Settings, tmp_path: Path
) -> None:
    body = bag_zip(tmp_path)
    created = client.post(
        f"{API}/bags", params={"collection": "lab", "dataset": "b1"}, content=body
    )
    assert created.status_code == 201, created.text
    answer = created.json()
    assert answer["dataset"] == "lab/b1" and answer["created"] is True
    assert answer["version"]["number"] == 1 and answer["version"]["files"] == 2
    assert answer["algorithms"] == ["sha256", "sha512"] and answer["sha256_checked"] == 2
    for rel, content in FILES.items():
        assert client.get(f"{API}/datasets/lab/b1/versions/1/files/{rel}").content == content
    detail = client.get(f"{API}/datasets/lab/b1").json()
    assert detail["title"] == "Uploaded bag"
    assert detail["metadata"]["Payload-Oxum"] == f"{sum(map(len, FILES.values()))}.2"
    assert scratch(settings) == []

    again = client.post(f"{API}/bags", params={"collection": "lab", "dataset": "b1"}, content=body)
    assert again.status_code == 200 and again.json()["created"] is False


def test_an_invalid_bag_is_refused_with_reasons_and_nothing_stored(
    client: TestClient, node: ArchiveNode, settings: Settings, tmp_path: Path
) -> None:
    before = snapshot(node)
    refused = client.post(
        f"{API}/bags",
        params={"collection": "lab", "dataset": "bad"},
        content=bag_zip(tmp_path, damage=True),
    )
    assert refused.status_code == 422
    answer = refused.json()
    assert answer["error"] == "InvalidBag"
    messages = [e["msg"] for e in answer["errors"]]
    assert any("data/a.txt sha256 validation failed" in m for m in messages)
    assert any("data/a.txt sha512 validation failed" in m for m in messages)
    assert snapshot(node) == before
    assert scratch(settings) == []


def test_an_unsafe_archive_is_refused(
    client: TestClient, node: ArchiveNode, settings: Settings
) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("bag/../../escape")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
        link = tarfile.TarInfo("bag/data/passwd")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    before = snapshot(node)
    refused = client.post(
        f"{API}/bags", params={"collection": "lab", "dataset": "x"}, content=buffer.getvalue()
    )
    assert refused.status_code == 422
    messages = " ".join(e["msg"] for e in refused.json()["errors"])
    assert "'..' segment" in messages and "a symbolic link" in messages
    assert snapshot(node) == before
    assert scratch(settings) == []


def test_too_large_is_413(
    client: TestClient, node: ArchiveNode, settings: Settings, tmp_path: Path
) -> None:
    client.app.dependency_overrides[get_bag_limits] = lambda: ExtractLimits(max_bytes=10_000)  # type: ignore[attr-defined]
    refused = client.post(
        f"{API}/bags", params={"collection": "lab", "dataset": "big"}, content=bag_zip(tmp_path)
    )
    assert refused.status_code == 413
    assert "larger than the limit of 10000 bytes" in refused.json()["detail"]
    assert scratch(settings) == []


def test_parameters_are_checked(client: TestClient) -> None:
    assert client.post(f"{API}/bags", params={"collection": "lab"}, content=b"x").status_code == 422
    bad = client.post(f"{API}/bags", params={"collection": "../x", "dataset": "d"}, content=b"x")
    assert bad.status_code == 422


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[str]:
    with serve(create_app(Settings(data_dir=tmp_path / "data", api_token="t0ken"))) as url:
        yield url


def test_streamed_upload_over_http_with_a_token(secured: str, tmp_path: Path) -> None:
    body = bag_zip(tmp_path)

    def pieces() -> Iterator[bytes]:
        for i in range(0, len(body), 7000):
            yield body[i : i + 7000]

    url = f"{secured}{API}/bags?collection=lab&dataset=streamed"
    assert httpx.post(url, content=body).status_code == 401
    created = httpx.post(url, content=pieces(), headers={"Authorization": "Bearer t0ken"})
    assert created.status_code == 201, created.text
    assert created.json()["files"] == 2
