"""Resumable uploads (tus 1.0 core) over a real socket, and whole versions as streamed zips."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import blake3
import httpx
import pytest
from fastapi import FastAPI
from sqlmodel import select

from archive.catalog import models
from archive.config import Settings
from archive.node import ArchiveNode
from tests.support.accounts import Person, add_people
from web.app import create_app

MiB = 1024 * 1024
UPLOADS = "/api/v1/uploads"
OFFSET_TYPE = {"Content-Type": "application/offset+octet-stream", "Tus-Resumable": "1.0.0"}


@pytest.fixture
def served(
    tmp_path: Path, live_server: Callable[[FastAPI], str]
) -> tuple[str, ArchiveNode, dict[str, Person]]:
    app = create_app(Settings(data_dir=tmp_path / "data"))
    base = live_server(app)
    node: ArchiveNode = app.state.node
    return base, node, add_people(node)


def _patch(http: httpx.Client, url: str, offset: int, body: bytes) -> httpx.Response:
    return http.patch(url, content=body, headers={**OFFSET_TYPE, "Upload-Offset": str(offset)})


def test_an_upload_resumes_after_a_dropped_connection(
    served: tuple[str, ArchiveNode, dict[str, Person]],
) -> None:
    base, node, people = served
    data = os.urandom(6 * MiB + 5)
    with httpx.Client(base_url=base, headers=people["writer"].auth, timeout=60) as http:
        made = http.post(UPLOADS, headers={"Upload-Length": str(len(data))})
        assert made.status_code == 201
        url = made.headers["location"]
        assert made.headers["upload-offset"] == "0"
        assert _patch(http, url, 0, data[: 2 * MiB]).headers["upload-offset"] == str(2 * MiB)

        # The connection drops half way through the next piece: a raw socket sends
        # the headers and 1 MiB of a 3 MiB body, then closes.
        host, port = base.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as raw:
            head = (
                f"PATCH {url} HTTP/1.1\r\nHost: {host}\r\n"
                f"Authorization: Bearer {people['writer'].token}\r\n"
                f"Content-Type: application/offset+octet-stream\r\n"
                f"Upload-Offset: {2 * MiB}\r\nContent-Length: {3 * MiB}\r\n\r\n"
            )
            raw.sendall(head.encode() + data[2 * MiB : 3 * MiB])
        offset = _wait_for_offset(http, url, above=2 * MiB)
        assert 2 * MiB < offset <= 3 * MiB  # what arrived is kept

        stale = _patch(http, url, 0, data[:10])
        assert stale.status_code == 409  # not where the upload stands
        done = _patch(http, url, offset, data[offset:])
        assert done.status_code == 204
        assert done.headers["upload-offset"] == str(len(data))
        assert done.headers["upload-blake3"] == blake3.blake3(data).hexdigest()
        assert done.headers["upload-sha256"] == hashlib.sha256(data).hexdigest()
        status = http.get(url).json()
        assert status["complete"] and status["blake3"] == done.headers["upload-blake3"]

        # Someone else cannot see it; the uploader may commit it.
        other = http.head(url, headers=people["manager"].auth)
        assert other.status_code == 404
        commit = http.post(
            "/api/v1/datasets/lab/resumed/versions",
            json={"entries": [{"path": "big.bin", "blake3": status["blake3"]}]},
        )
        assert commit.status_code == 201, commit.text
        got = http.get("/api/v1/datasets/lab/resumed/versions/1/files/big.bin")
        assert got.content == data
    with node.session() as session:
        blob = session.get(models.Blob, status["blake3"])
        assert blob is not None
        assert (blob.sha256, blob.size) == (hashlib.sha256(data).hexdigest(), len(data))


def _wait_for_offset(http: httpx.Client, url: str, above: int) -> int:
    """The server notices the hang-up a moment later; until then the PATCH holds the lock."""
    deadline = time.monotonic() + 10
    while True:
        offset = int(http.head(url).headers["upload-offset"])
        if offset > above or time.monotonic() > deadline:
            return offset
        time.sleep(0.05)


def test_too_many_bytes_are_refused(served: tuple[str, ArchiveNode, dict[str, Person]]) -> None:
    base, _, people = served
    with httpx.Client(base_url=base, headers=people["writer"].auth, timeout=60) as http:
        url = http.post(UPLOADS, headers={"Upload-Length": "4"}).headers["location"]
        assert _patch(http, url, 0, b"12345").status_code == 422
        assert http.head(url).headers["upload-offset"] == "0"
        wrong_type = http.patch(url, content=b"1234", headers={"Upload-Offset": "0"})
        assert wrong_type.status_code == 422


def test_an_empty_file_is_complete_at_once(
    served: tuple[str, ArchiveNode, dict[str, Person]],
) -> None:
    base, _, people = served
    with httpx.Client(base_url=base, headers=people["writer"].auth, timeout=60) as http:
        made = http.post(UPLOADS, headers={"Upload-Length": "0"})
        assert made.headers["upload-blake3"] == blake3.blake3(b"").hexdigest()


def test_a_version_downloads_as_a_streamed_zip(
    served: tuple[str, ArchiveNode, dict[str, Person]],
) -> None:
    base, node, people = served
    files = {
        "a.txt": b"alpha\n" * 1000,
        "sub/b.bin": os.urandom(3 * MiB),
        "sub/deeper/c é.txt": b"unicode name\n",
    }
    with httpx.Client(base_url=base, headers=people["writer"].auth, timeout=60) as http:
        entries = []
        for path, data in files.items():
            b3 = blake3.blake3(data).hexdigest()
            assert http.put(f"/api/v1/blobs/{b3}", content=data).status_code == 201
            entries.append({"path": path, "blake3": b3})
        assert http.post(
            "/api/v1/datasets/lab/zipped/versions", json={"entries": entries}
        ).is_success
        answer = http.get("/c/lab/zipped/v/1/zip")
        assert answer.status_code == 200
        assert answer.headers["content-type"] == "application/zip"
        assert "zipped-v1.zip" in answer.headers["content-disposition"]
        assert "content-length" not in answer.headers  # streamed as it is made
        bag = http.get("/c/lab/zipped/v/1/bag")
        assert bag.status_code == 200
    with zipfile.ZipFile(io.BytesIO(answer.content)) as archive:
        assert archive.testzip() is None  # every CRC matches
        got = {n.removeprefix("zipped-v1/"): archive.read(n) for n in archive.namelist()}
    assert got == files
    with zipfile.ZipFile(io.BytesIO(bag.content)) as archive:
        names = archive.namelist()
        assert "zipped-v1-bag/bagit.txt" in names
        assert archive.read("zipped-v1-bag/data/sub/b.bin") == files["sub/b.bin"]
    with node.session() as session:
        assert session.exec(select(models.Dataset).where(models.Dataset.name == "zipped")).one()
