"""Commits sent as NDJSON: versions larger than one JSON document should carry."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import select

from archive.catalog import models
from archive.client import ArchiveClient
from archive.config import Settings
from archive.node import ArchiveNode
from tests.web.conftest import ADMIN_TOKEN, AUTH, content
from tests.web.test_uploads import API, count, put
from web.app import create_app

STREAM = f"{API}/datasets/lab/run1/versions/stream"
NDJSON = {"Content-Type": "application/x-ndjson"}


def ndjson(*lines: Any) -> bytes:
    return b"".join(
        (line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines
    )


@pytest.mark.slow
def test_client_commits_200000_entries_through_a_live_server(
    tmp_path: Path, live_server: Callable[[FastAPI], str]
) -> None:
    """The bulk-ingest story's 200,000 files in one version, streamed both ways."""
    settings = Settings(data_dir=tmp_path / "data", api_token=ADMIN_TOKEN)
    base = live_server(create_app(settings))
    blobs = [content(b"shared %d\n" % i) for i in range(3)]
    entries = [
        {
            "path": f"d{i // 1000:03d}/f{i:06d}.dat",
            "blake3": blobs[i % 3].b3,
            "sha256": blobs[i % 3].sha256,
            "size": len(blobs[i % 3].data),
        }
        for i in range(200_000)
    ]
    with ArchiveClient(base, ADMIN_TOKEN) as client:
        for i, blob in enumerate(blobs):
            path = tmp_path / f"blob{i}"
            path.write_bytes(blob.data)
            assert client.put_blob(blob.b3, blob.sha256, path, len(blob.data), path.name)
        version, created = client.commit("lab", "run1", entries, message="big")
        again, created_again = client.commit("lab", "run1", entries, message="big")
    assert created and version["number"] == 1 and version["files"] == 200_000
    assert not created_again and again["number"] == 1  # identical: nothing new
    node = ArchiveNode.open(settings)
    try:
        with node.session() as session:
            rows = session.exec(select(models.Entry.path, models.Entry.blob_b3)).all()
            assert len(rows) == 200_000
            got = dict(rows)
            assert got["d000/f000000.dat"] == blobs[0].b3
            assert got["d199/f199999.dat"] == blobs[199_999 % 3].b3
            assert session.exec(select(models.Version)).one().file_count == 200_000
    finally:
        node.close()


def test_stream_commit_equals_the_json_commit(client: TestClient, node: ArchiveNode) -> None:
    a, b = content(b"alpha"), content(b"beta")
    put(client, a)
    put(client, b)
    header = {"message": "streamed", "title": "Run 1", "metadata": {"shots": 2}}
    body = ndjson(
        header,
        {"path": "x/a.txt", "blake3": a.b3, "sha256": a.sha256, "size": 5},
        b"",
        {"path": "b.txt", "blake3": b.b3},
    )
    response = client.post(STREAM, content=body, headers=NDJSON)
    assert response.status_code == 201, response.text
    assert response.json()["files"] == 2
    assert response.json()["bytes"] == 9
    assert client.get(f"{API}/datasets/lab/run1").json()["metadata"] == {"shots": 2}
    same = {
        **header,
        "entries": [{"path": "b.txt", "blake3": b.b3}, {"path": "x/a.txt", "blake3": a.b3}],
    }
    again = client.post(f"{API}/datasets/lab/run1/versions", json=same)
    assert again.status_code == 200  # the JSON form of the same commit: nothing new
    assert client.get(f"{API}/datasets/lab/run1/versions/1/files/x/a.txt").content == b"alpha"


@pytest.mark.parametrize(
    ("lines", "says"),
    [
        ([], "empty body"),
        ([{"message": "a\x00b"}], "line 1"),
        ([{}, {"path": "a", "blake3": "0" * 63}], "line 2"),
        ([{}, {"path": "ok", "blake3": "HELD"}, b"{not json"], "line 3"),
        ([{}, {"path": "ok", "blake3": "HELD", "size": -1}], "line 2"),
        ([{}, b"x" * 40_000], "longer than"),
        ([b'{"metadata": {"x": NaN}}'], "line 1"),
        ([{}, {"path": "../up", "blake3": "HELD"}], "segment"),
        ([{}, {"path": "a", "blake3": "HELD"}, {"path": "a", "blake3": "HELD"}], "a"),
    ],
)
def test_bad_stream_is_422_and_commits_nothing(
    client: TestClient, node: ArchiveNode, lines: list[Any], says: str
) -> None:
    held = content(b"held")
    put(client, held)
    fixed = [
        {k: held.b3 if v == "HELD" else v for k, v in line.items()}
        if isinstance(line, dict)
        else line
        for line in lines
    ]
    response = client.post(STREAM, content=ndjson(*fixed), headers=NDJSON)
    assert response.status_code == 422, response.text
    assert says in json.dumps(response.json())
    assert count(node, models.Version) == 0
    assert count(node, models.Entry) == 0
    assert count(node, models.Dataset) == 0


def test_stream_naming_a_missing_blob_is_409(client: TestClient, node: ArchiveNode) -> None:
    held, absent = content(b"held"), content(b"absent")
    put(client, held)
    body = ndjson({}, {"path": "a", "blake3": held.b3}, {"path": "b", "blake3": absent.b3})
    response = client.post(STREAM, content=body, headers=NDJSON)
    assert response.status_code == 409
    assert response.json()["missing"] == [absent.b3]
    assert count(node, models.Version) == 0


@pytest.mark.parametrize("media", ["application/json", "text/plain", None])
def test_a_commit_in_the_wrong_media_type_is_refused(
    client: TestClient, node: ArchiveNode, media: str | None
) -> None:
    held = content(b"held")
    put(client, held)
    body = ndjson({}, {"path": "a", "blake3": held.b3})
    headers = {"Content-Type": media} if media else {}
    streamed = client.post(STREAM, content=body, headers=headers)
    assert streamed.status_code == 415, streamed.text
    as_text = client.post(
        f"{API}/datasets/lab/run1/versions",
        content=json.dumps({"entries": [{"path": "a", "blake3": held.b3}]}),
        headers={"Content-Type": "text/plain"},
    )
    assert as_text.status_code == 422  # the JSON route takes JSON only
    assert count(node, models.Version) == 0


@pytest.mark.slow
def test_a_commit_of_more_than_a_million_entries_is_refused_and_commits_nothing(
    tmp_path: Path, live_server: Callable[[FastAPI], str]
) -> None:
    """1,000,001 entries, streamed: 422 at the first entry past the cap, nothing committed."""
    settings = Settings(data_dir=tmp_path / "data", api_token=ADMIN_TOKEN)
    app = create_app(settings)
    base = live_server(app)
    blob = content(b"named a million times\n")

    def body() -> Iterator[bytes]:
        yield ndjson({"message": "too many"})
        for start in range(0, 1_000_001, 10_000):
            names = range(start, min(start + 10_000, 1_000_001))
            yield b"".join(
                b'{"path":"d%04d/f%07d","blake3":"%s"}\n' % (i // 1000, i, blob.b3.encode())
                for i in names
            )

    with httpx.Client(base_url=base, headers=AUTH, timeout=300) as http:
        assert http.put(f"{API}/blobs/{blob.b3}", content=blob.data).status_code == 201
        answer = http.post(STREAM, content=body(), headers=NDJSON)
        assert answer.status_code == 422, answer.text
        assert "more than 1,000,000 entries" in answer.json()["detail"]
        assert http.get(f"{API}/datasets/lab/run1").status_code == 404
        assert http.get("/healthz").status_code == 200
    node: ArchiveNode = app.state.node
    assert count(node, models.Version) == 0
    assert count(node, models.Entry) == 0
