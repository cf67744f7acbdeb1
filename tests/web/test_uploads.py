"""The client upload flow: which blobs are missing, PUT each, commit the version."""

from __future__ import annotations

import hashlib
import os
import unicodedata
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlmodel import select

from archive.catalog import models
from archive.config import Settings
from archive.node import ArchiveNode
from tests.web.conftest import ADMIN_TOKEN, AUTH, Content, content
from web.app import create_app

API = "/api/v1"
COMMIT = f"{API}/datasets/lab/run1/versions"


def hot_files(settings: Settings) -> list[Path]:
    """Every file in the hot tier's folder, staging included."""
    root = settings.data_dir / "tiers" / "hot"
    return sorted(p for p in root.rglob("*") if p.is_file())


def count(node: ArchiveNode, table: type[Any]) -> int:
    with node.session() as session:
        return int(session.scalar(sa.select(sa.func.count()).select_from(table)) or 0)


def put(client: TestClient, blob: Content, **headers: str) -> Any:
    return client.put(f"{API}/blobs/{blob.b3}", content=blob.data, headers=headers)


def test_full_flow_missing_put_commit_download(client: TestClient, node: ArchiveNode) -> None:
    files = {
        "readme.md": content(b"# run 1\n" * 100),
        "raw/signal.bin": content(os.urandom(3 * 1024 * 1024)),
        "raw/again.bin": content(b"# run 1\n" * 100),  # same content as readme: one blob
    }
    digests = sorted({c.b3 for c in files.values()})
    missing = client.post(f"{API}/blobs/missing", json={"blobs": digests})
    assert missing.status_code == 200
    assert missing.json() == {"missing": digests}
    for blob in {c.b3: c for c in files.values()}.values():
        stored = put(client, blob, **{"X-Permafrost-Sha256": blob.sha256})
        assert stored.status_code == 201
        assert stored.json()["blake3"] == blob.b3
        assert stored.json()["sha256"] == blob.sha256
        assert stored.json()["size"] == len(blob.data)
        assert stored.json()["created"] is True
        assert client.head(f"{API}/blobs/{blob.b3}").status_code == 200
    assert client.post(f"{API}/blobs/missing", json={"blobs": digests}).json() == {"missing": []}
    body = {
        "message": "first run",
        "title": "Run 1",
        "metadata": {"instrument": "x-ray", "shots": 3},
        "entries": [
            {"path": p, "blake3": c.b3, "sha256": c.sha256, "size": len(c.data)}
            for p, c in files.items()
        ],
    }
    committed = client.post(COMMIT, json=body)
    assert committed.status_code == 201, committed.text
    assert committed.json()["number"] == 1
    assert committed.json()["files"] == 3
    assert committed.json()["bytes"] == sum(len(c.data) for c in files.values())
    detail = client.get(f"{API}/datasets/lab/run1").json()
    assert detail["title"] == "Run 1"
    assert detail["metadata"] == {"instrument": "x-ray", "shots": 3}
    for path, blob in files.items():
        got = client.get(f"{COMMIT}/1/files/{path}")
        assert got.status_code == 200
        assert got.content == blob.data
        assert hashlib.sha256(got.content).hexdigest() == blob.sha256
    again = client.post(COMMIT, json=body)
    assert again.status_code == 200
    assert again.json()["number"] == 1
    with node.session() as session:
        assert len(session.exec(select(models.Version)).all()) == 1


def test_put_of_a_held_blob_answers_200(client: TestClient) -> None:
    blob = content(b"same bytes twice")
    assert put(client, blob).status_code == 201
    second = put(client, blob)
    assert second.status_code == 200
    assert second.json()["created"] is False


def test_head_of_an_unknown_blob_is_404(client: TestClient) -> None:
    assert client.head(f"{API}/blobs/{'0' * 64}").status_code == 404
    assert client.head(f"{API}/blobs/NOT-HEX").status_code == 422


@pytest.mark.parametrize("size", [10, 3 * 1024 * 1024])
def test_put_with_wrong_bytes_keeps_nothing(
    client: TestClient, node: ArchiveNode, settings: Settings, size: int
) -> None:
    claimed = content(os.urandom(size))
    before_files, before_rows = hot_files(settings), count(node, models.Blob)
    response = client.put(f"{API}/blobs/{claimed.b3}", content=os.urandom(size))
    assert response.status_code == 422
    assert response.json()["error"] == "UploadDigestMismatch"
    assert response.json()["expected"] == claimed.b3
    assert hot_files(settings) == before_files
    assert count(node, models.Blob) == before_rows
    assert client.head(f"{API}/blobs/{claimed.b3}").status_code == 404


def test_put_with_wrong_sha256_header_keeps_nothing(
    client: TestClient, node: ArchiveNode, settings: Settings
) -> None:
    blob = content(b"right bytes, wrong sha256 claim")
    before_files, before_rows = hot_files(settings), count(node, models.Blob)
    response = put(client, blob, **{"X-Permafrost-Sha256": "ab" * 32})
    assert response.status_code == 422
    assert response.json()["algorithm"] == "sha256"
    assert hot_files(settings) == before_files
    assert count(node, models.Blob) == before_rows


def test_put_shorter_than_declared_keeps_nothing(
    client: TestClient, node: ArchiveNode, settings: Settings
) -> None:
    blob = content(b"0123456789" * 1000)
    before_files = hot_files(settings)

    def body() -> Any:
        yield blob.data

    response = client.put(
        f"{API}/blobs/{blob.b3}",
        content=body(),
        headers={"Content-Length": str(len(blob.data) + 5)},
    )
    assert response.status_code == 422
    assert hot_files(settings) == before_files
    assert count(node, models.Blob) == 0


def test_missing_refuses_bad_digests_and_huge_lists(client: TestClient) -> None:
    for bad in ["ABC", "g" * 64, "A" * 64, "0" * 63]:
        response = client.post(f"{API}/blobs/missing", json={"blobs": [bad]})
        assert response.status_code == 422, bad
    huge = {"blobs": ["0" * 64] * 10_001}
    assert client.post(f"{API}/blobs/missing", json=huge).status_code == 422
    fine = {"blobs": ["0" * 64] * 10_000}
    assert client.post(f"{API}/blobs/missing", json=fine).json() == {"missing": ["0" * 64]}


def test_commit_naming_a_missing_blob_is_409_and_commits_nothing(
    client: TestClient, node: ArchiveNode
) -> None:
    held = content(b"held")
    put(client, held)
    absent = content(b"never uploaded")
    body = {
        "entries": [
            {"path": "a.txt", "blake3": held.b3},
            {"path": "b.txt", "blake3": absent.b3},
        ]
    }
    response = client.post(COMMIT, json=body)
    assert response.status_code == 409
    assert response.json()["error"] == "MissingBlobs"
    assert response.json()["missing"] == [absent.b3]
    assert count(node, models.Version) == 0
    assert count(node, models.Dataset) == 0
    assert client.get(f"{API}/datasets/lab/run1").status_code == 404


def test_commit_with_a_false_claim_is_422(client: TestClient, node: ArchiveNode) -> None:
    held = content(b"held")
    put(client, held)
    body = {"entries": [{"path": "a.txt", "blake3": held.b3, "size": 999}]}
    assert client.post(COMMIT, json=body).status_code == 422
    assert count(node, models.Version) == 0


NFC = unicodedata.normalize("NFC", "café.txt")
NFD = unicodedata.normalize("NFD", "café.txt")


@pytest.mark.parametrize(
    ("paths", "reason"),
    [
        (["../x"], "segment"),
        (["/abs"], "absolute"),
        (["a//b"], "segment"),
        (["a/./b"], "segment"),
        (["C:\\x"], "backslash"),
        (["C:x"], "drive"),
        (["a\x00b"], "NUL"),
        (["a\nb"], "control"),
        (["dir/"], "segment"),
        ([""], None),
        (["same.txt", "same.txt"], None),
        ([NFC, NFD], None),
    ],
)
def test_commit_with_bad_paths_is_422_and_commits_nothing(
    client: TestClient, node: ArchiveNode, paths: list[str], reason: str | None
) -> None:
    held = content(b"held")
    put(client, held)
    body = {"entries": [{"path": p, "blake3": held.b3} for p in paths]}
    response = client.post(COMMIT, json=body)
    assert response.status_code == 422, paths
    if reason is not None:
        assert reason in response.json()["reason"]
    assert count(node, models.Version) == 0
    assert count(node, models.Entry) == 0


@pytest.mark.parametrize(
    "body",
    [
        {"entries": [], "message": "a\x00b"},
        {"entries": [], "title": "x" * 1001},
        {"entries": [{"path": "a", "blake3": "0" * 63}]},
        {"entries": [{"path": "a", "blake3": "0" * 64, "sha256": "Z" * 64}]},
        {"entries": [{"path": "a", "blake3": "0" * 64, "size": -1}]},
        {"message": "no entries key"},
    ],
)
def test_commit_refuses_unstorable_input(
    client: TestClient, node: ArchiveNode, body: dict[str, Any]
) -> None:
    response = client.post(COMMIT, json=body)
    assert response.status_code == 422
    assert response.json()["error"] == "RequestValidationError"
    assert count(node, models.Version) == 0


@pytest.mark.parametrize(
    "raw",
    [
        b'{"entries": [], "metadata": {"x": NaN}}',
        b'{"entries": [], "metadata": {"x": [Infinity]}}',
        b'{"entries": [], "metadata": {"k": "\\ud800"}}',
        b'{"entries": [], "metadata": {"\\u0000": 1}}',
        b'{"entries": [], "message": "\\udfff"}',
    ],
)
def test_commit_refuses_json_no_catalog_can_store(
    client: TestClient, node: ArchiveNode, raw: bytes
) -> None:
    response = client.post(COMMIT, content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert count(node, models.Version) == 0


def test_the_configured_api_token_is_an_administrator(tmp_path: Path) -> None:
    """Every route but /healthz needs credentials; the configured token is one (issue 7)."""
    settings = Settings(data_dir=tmp_path / "data", api_token="s3cret-token")
    with TestClient(create_app(settings)) as client:
        denied = client.get(f"{API}/collections")
        assert denied.status_code == 401
        assert denied.headers["www-authenticate"].startswith("Bearer")
        assert denied.json()["error"] == "NotAuthenticated"
        wrong = client.get(f"{API}/collections", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        basic = client.get(f"{API}/collections", headers={"Authorization": "Basic czNjcmV0"})
        assert basic.status_code == 401
        blob = content(b"guarded")
        refused = client.put(f"{API}/blobs/{blob.b3}", content=blob.data)
        assert refused.status_code == 401
        assert client.get("/healthz").status_code == 200
        auth = {"Authorization": "Bearer s3cret-token"}
        assert client.get(f"{API}/collections", headers=auth).status_code == 200
        assert (
            client.put(f"{API}/blobs/{blob.b3}", content=blob.data, headers=auth).status_code == 201
        )


def test_openapi_declares_the_bearer_scheme(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert "HTTPBearer" in schema["components"]["securitySchemes"]
    responses = schema["paths"]["/api/v1/collections"]["get"]["responses"]
    assert "401" in responses


def test_uploads_over_the_size_limit_are_413_and_keep_nothing(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", api_token=ADMIN_TOKEN, max_upload_bytes=10_000)
    big, small = content(os.urandom(10_001)), content(os.urandom(10_000))
    with TestClient(create_app(settings), headers=AUTH) as client:
        node: ArchiveNode = client.app.state.node  # type: ignore[attr-defined]
        declared = put(client, big)
        assert declared.status_code == 413, declared.text
        assert "10,000 bytes" in declared.json()["detail"]

        def chunked() -> Any:  # no Content-Length: the limit holds while streaming
            yield big.data[:6000]
            yield big.data[6000:]

        streamed = client.put(f"{API}/blobs/{big.b3}", content=chunked())
        assert streamed.status_code == 413
        assert count(node, models.Blob) == 0
        assert hot_files(settings) == []  # staging included: the aborted writes are gone
        assert put(client, small).status_code == 201  # at the limit: fine
        assert count(node, models.Blob) == 1
