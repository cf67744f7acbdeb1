"""Hostile names through the portal's upload (issue 8, item 3): tus, then the commit.

The upload page sends each file through the resumable upload API with the session
cookie and the page's CSRF token, then names the files in one commit; names only
reach the server in that commit. Each hostile name is a clear 4xx that stores
nothing (no dataset, version or entry: the catalog and the tiers as they were after
the bytes arrived), except case-only differences, which are legal and stored.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import blake3
import pytest
from fastapi.testclient import TestClient

from archive.config import Settings
from archive.node import ArchiveNode
from tests.support.accounts import add_people, sign_in
from tests.support.archive_state import snapshot
from web.app import create_app

UPLOADS = "/api/v1/uploads"
VERSIONS = "/api/v1/datasets/lab/portal/versions"
DATA = b"uploaded through the portal\n"
B3 = blake3.blake3(DATA).hexdigest()


@pytest.fixture
def portal(tmp_path: Path) -> Iterator[tuple[TestClient, ArchiveNode, dict[str, str]]]:
    """A researcher signed in to the portal (cookie), who has uploaded DATA with tus."""
    with TestClient(create_app(Settings(data_dir=tmp_path / "data"))) as client:
        node: ArchiveNode = client.app.state.node  # type: ignore[attr-defined]
        add_people(node)
        csrf = {"X-CSRF-Token": sign_in(client, "writer")}
        made = client.post(UPLOADS, headers={**csrf, "Upload-Length": str(len(DATA))})
        assert made.status_code == 201, made.text
        done = client.patch(
            made.headers["location"],
            content=DATA,
            headers={
                **csrf,
                "Content-Type": "application/offset+octet-stream",
                "Upload-Offset": "0",
            },
        )
        assert done.headers["upload-blake3"] == B3
        yield client, node, csrf


REFUSED_PATHS = {
    "dot-dot": "../escape.txt",
    "dot-dot-inside": "a/../../b.txt",
    "absolute": "/etc/passwd",
    "windows-drive": "C:\\x.txt",
    "drive-relative": "c:x.txt",
    "backslash": "win\\dows.txt",
    "nul": "nul\x00.txt",
    "newline": "line\nbreak.txt",
    "empty-segment": "a//b.txt",
    "dot-segment": "a/./b.txt",
    "segment-of-256-bytes": "x" * 256,
    "path-over-2048-bytes": "/".join(["y" * 250] * 9),
}


@pytest.mark.parametrize("path", REFUSED_PATHS.values(), ids=REFUSED_PATHS.keys())
def test_hostile_names_are_422_and_store_nothing(
    portal: tuple[TestClient, ArchiveNode, dict[str, str]], path: str
) -> None:
    client, node, csrf = portal
    before = snapshot(node)
    answer = client.post(VERSIONS, headers=csrf, json={"entries": [{"path": path, "blake3": B3}]})
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"] in ("InvalidPath", "RequestValidationError")
    assert snapshot(node) == before


def test_overlong_utf8_and_normalisation_collisions_store_nothing(
    portal: tuple[TestClient, ArchiveNode, dict[str, str]],
) -> None:
    client, node, csrf = portal
    before = snapshot(node)
    # "/" as the overlong two-byte sequence C0 AF: not UTF-8, so not JSON either.
    overlong = b'{"entries": [{"path": "a\xc0\xafetc", "blake3": "%s"}]}' % B3.encode()
    answer = client.post(
        VERSIONS, headers={**csrf, "Content-Type": "application/json"}, content=overlong
    )
    assert answer.status_code == 400, answer.text  # FastAPI: "error parsing the body"
    assert answer.json()["error"] == "BadRequest"
    nfc = unicodedata.normalize("NFC", "café.txt")
    nfd = unicodedata.normalize("NFD", "café.txt")
    assert nfc != nfd
    both = [{"path": nfc, "blake3": B3}, {"path": nfd, "blake3": B3}]
    collision = client.post(VERSIONS, headers=csrf, json={"entries": both})
    assert collision.status_code == 422, collision.text
    assert collision.json()["error"] == "PathCollision"
    assert len(collision.json()["paths"]) == 2
    assert snapshot(node) == before


def test_without_the_csrf_token_nothing_is_uploaded_or_committed(
    portal: tuple[TestClient, ArchiveNode, dict[str, str]],
) -> None:
    client, node, _ = portal
    before = snapshot(node)
    assert client.post(UPLOADS, headers={"Upload-Length": "5"}).status_code == 403
    commit = client.post(VERSIONS, json={"entries": [{"path": "a.txt", "blake3": B3}]})
    assert commit.status_code == 403
    assert snapshot(node) == before


@pytest.mark.parametrize("length", ["-1", "abc", "1e3", str(2**70)])
def test_a_bad_upload_length_is_422(
    portal: tuple[TestClient, ArchiveNode, dict[str, str]], length: str
) -> None:
    client, node, csrf = portal
    before = snapshot(node)
    answer = client.post(UPLOADS, headers={**csrf, "Upload-Length": length})
    assert answer.status_code in (413, 422), answer.text
    assert "location" not in answer.headers
    assert snapshot(node) == before


def test_case_only_differences_and_a_thousand_byte_name_are_stored(
    portal: tuple[TestClient, ArchiveNode, dict[str, str]],
) -> None:
    client, _, csrf = portal
    long = "/".join(["é" * 125] * 3 + ["x" * 250])  # 1,003 bytes of UTF-8
    paths = ["Readme.txt", "README.txt", long]
    entries = [{"path": p, "blake3": B3} for p in paths]
    answer = client.post(VERSIONS, headers=csrf, json={"entries": entries})
    assert answer.status_code == 201, answer.text
    listed = client.get(f"{VERSIONS}/1/entries").json()["items"]
    assert sorted(e["path"] for e in listed) == sorted(paths)
    for path in paths:
        assert client.get(f"{VERSIONS}/1/files/{path}").content == DATA


def test_a_csrf_token_is_only_looked_for_in_a_small_form(
    portal: tuple[TestClient, ArchiveNode, dict[str, str]],
) -> None:
    """A signed-in upload labelled as a form, its token first and then 2 MiB: finding the
    token would mean parsing it all in memory. It is refused as lacking one instead."""
    client, node, csrf = portal
    before = snapshot(node)
    body = urlencode({"csrf_token": csrf["X-CSRF-Token"], "pad": "x" * (2 * 1024 * 1024)})
    answer = client.put(
        f"/api/v1/blobs/{blake3.blake3(body.encode()).hexdigest()}",
        content=body,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert answer.status_code == 403, answer.text
    assert answer.json()["error"] == "CsrfRefused"
    assert snapshot(node) == before
