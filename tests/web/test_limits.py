"""Limits and back-pressure (issue 8): body sizes, stalled bodies, rate limits, upload slots.

Over a real socket where it matters (a body that lies about its length only exists
on the wire), else through the app in process. Each refusal is checked for its
status, its JSON error, and that nothing was kept.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import blake3
import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import select

from archive.catalog import models
from archive.config import Settings
from archive.node import ArchiveNode
from tests.web.conftest import ADMIN_TOKEN, AUTH
from web.app import create_app

KiB = 1024
MiB = 1024 * KiB
OFFSET_TYPE = "application/offset+octet-stream"


def _settings(tmp_path: Path, **limits: object) -> Settings:
    return Settings(data_dir=tmp_path / "data", api_token=ADMIN_TOKEN, **limits)  # type: ignore[arg-type]


def _kept(node: ArchiveNode, settings: Settings) -> tuple[int, list[Path]]:
    """Blob rows, and files in the hot tier and the upload scratch area."""
    with node.session() as session:
        rows = len(session.exec(select(models.Blob)).all())
    files = [
        p
        for where in (settings.data_dir / "tiers" / "hot", settings.data_dir / "tmp")
        if where.exists()
        for p in where.rglob("*")
        if p.is_file() and p.suffix != ".json"
    ]
    return rows, files


# -- body sizes -------------------------------------------------------------------------


def test_json_bodies_are_limited_and_commits_have_their_own_limit(tmp_path: Path) -> None:
    settings = _settings(tmp_path, max_json_body_bytes=4 * KiB, max_commit_body_bytes=64 * KiB)
    with TestClient(create_app(settings), headers=AUTH) as client:
        node: ArchiveNode = client.app.state.node  # type: ignore[attr-defined]
        many = {"blobs": ["ab" * 32] * 100}  # about 6.7 KB
        declared = client.post("/api/v1/blobs/missing", json=many)
        assert declared.status_code == 413
        assert declared.json()["error"] == "TooLarge"
        assert "4,096 bytes" in declared.json()["detail"]
        chunked = client.post(
            "/api/v1/blobs/missing",
            content=iter([b'{"blobs": [', *[b'"' + b"ab" * 32 + b'", '] * 99, b'"ab"]}']),
            headers={"Content-Type": "application/json"},
        )
        assert chunked.status_code == 413
        assert chunked.json()["error"] == "TooLarge"
        assert client.post("/api/v1/blobs/missing", json={"blobs": ["ab" * 32]}).json() == {
            "missing": ["ab" * 32]
        }

        # A commit of 200 entries (about 30 KB) is over the JSON limit, under the commit one.
        data = b"one blob, many names\n"
        b3 = blake3.blake3(data).hexdigest()
        assert client.put(f"/api/v1/blobs/{b3}", content=data).status_code == 201
        entries = [{"path": f"folder/file-{i:04d}.txt", "blake3": b3} for i in range(200)]
        made = client.post("/api/v1/datasets/c/d/versions", json={"entries": entries})
        assert made.status_code == 201, made.text
        too_many = [{"path": f"f/{'x' * 200}-{i:05d}", "blake3": b3} for i in range(300)]
        refused = client.post("/api/v1/datasets/c/d/versions", json={"entries": too_many})
        assert refused.status_code == 413
        with node.session() as session:
            assert len(session.exec(select(models.Version)).all()) == 1


def test_a_resumable_upload_longer_than_the_limit_is_refused_at_creation(tmp_path: Path) -> None:
    settings = _settings(tmp_path, max_upload_bytes=1 * MiB)
    with TestClient(create_app(settings), headers=AUTH) as client:
        node: ArchiveNode = client.app.state.node  # type: ignore[attr-defined]
        made = client.post("/api/v1/uploads", headers={"Upload-Length": str(MiB + 1)})
        assert made.status_code == 413
        assert made.json()["error"] == "TooLarge"
        assert "location" not in made.headers
        assert _kept(node, settings) == (0, [])
        assert not list((settings.data_dir / "tmp" / "uploads").glob("*.json"))


# -- bodies that lie about their length ---------------------------------------------------


def _raw(base: str, head: str, body: bytes, *, half_close: bool) -> bytes:
    """Send a request by hand and read the whole answer (what arrived before the server
    reset the connection: closing with unread bytes of ours sends a TCP reset, which
    may also discard an answer already sent)."""
    host, port = base.removeprefix("http://").split(":")
    answer = b""
    with socket.create_connection((host, int(port)), timeout=30) as raw:
        try:
            raw.sendall(head.encode() + body)
            if half_close:
                raw.shutdown(socket.SHUT_WR)
            while chunk := raw.recv(65536):
                answer += chunk
        except (ConnectionResetError, BrokenPipeError):
            pass
    return answer


def _status(answer: bytes) -> int:
    """The status of a raw answer; 0 when the server closed without one."""
    return int(answer.split(b" ", 2)[1]) if answer else 0


@pytest.fixture
def lying(
    tmp_path: Path, live_server: Callable[[FastAPI], str]
) -> tuple[str, ArchiveNode, Settings]:
    settings = _settings(tmp_path, body_idle_seconds=1.0)
    app = create_app(settings)
    base = live_server(app)
    return base, app.state.node, settings


def test_a_put_that_sends_less_than_its_content_length_keeps_nothing(
    lying: tuple[str, ArchiveNode, Settings],
) -> None:
    base, node, settings = lying
    data = b"z" * (3 * MiB)
    b3 = blake3.blake3(data).hexdigest()
    head = (
        f"PUT /api/v1/blobs/{b3} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    )
    # The client stops short and waits: the body stalls, 408 after body_idle_seconds.
    stalled = _raw(base, head, data[: 2 * MiB], half_close=False)
    assert _status(stalled) == 408
    assert b'"error":"RequestTimeout"' in stalled
    # The client stops short and hangs up its side: uvicorn closes the connection (there
    # is no one left to answer), or answers 400 (ClientDisconnect) if it gets the chance.
    short = _raw(base, head, data[: 2 * MiB], half_close=True)
    assert _status(short) in (0, 400), short[:200]
    # A Content-Length shorter than the body: that much is the body, which hashes wrong
    # (422); the rest is a malformed next request, on which uvicorn may close first.
    head_short = head.replace(f"Content-Length: {len(data)}", f"Content-Length: {MiB}")
    answer = _raw(base, head_short, data, half_close=True)
    assert _status(answer) in (0, 400, 422), answer[:200]
    for bad in ("-1", "12abc", "0x10", "1e6", "5, 6", "9" * 30):
        head_bad = head.replace(f"Content-Length: {len(data)}", f"Content-Length: {bad}")
        assert _status(_raw(base, head_bad, data[:10], half_close=True)) == 400, bad
    with httpx.Client(base_url=base, headers=AUTH, timeout=30) as http:
        assert http.head(f"/api/v1/blobs/{b3}").status_code == 404
        assert http.get("/healthz").status_code == 200
    assert _kept(node, settings) == (0, [])


def test_a_resumable_append_that_stalls_keeps_what_arrived(
    lying: tuple[str, ArchiveNode, Settings],
) -> None:
    base, node, _ = lying
    data = bytes(range(256)) * 8192  # 2 MiB
    with httpx.Client(base_url=base, headers=AUTH, timeout=30) as http:
        url = http.post("/api/v1/uploads", headers={"Upload-Length": str(len(data))}).headers[
            "location"
        ]
        head = (
            f"PATCH {url} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n"
            f"Content-Type: {OFFSET_TYPE}\r\nUpload-Offset: 0\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
        )
        assert _status(_raw(base, head, data[:MiB], half_close=False)) == 408
        offset = int(http.head(url).headers["upload-offset"])
        assert offset <= MiB
        rest = http.patch(
            url,
            content=data[offset:],
            headers={"Content-Type": OFFSET_TYPE, "Upload-Offset": str(offset)},
        )
        assert rest.status_code == 204
        assert rest.headers["upload-blake3"] == blake3.blake3(data).hexdigest()
    with node.session() as session:
        blob = session.get(models.Blob, blake3.blake3(data).hexdigest())
        assert blob is not None and blob.size == len(data)


def test_a_bag_declared_over_the_limit_is_413_before_it_is_read(
    lying: tuple[str, ArchiveNode, Settings],
) -> None:
    base, node, settings = lying
    head = (
        "POST /api/v1/bags?collection=c&dataset=d HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/zip\r\n"
        f"Content-Length: {settings.max_upload_bytes + 1}\r\nConnection: close\r\n\r\n"
    )
    answer = _raw(base, head, b"PK\x03\x04", half_close=False)
    assert _status(answer) == 413
    assert b'"error":"RequestEntityTooLarge"' in answer  # the route's own, smaller limit
    assert _kept(node, settings) == (0, [])


# -- rate limits ---------------------------------------------------------------------------


def test_each_token_has_its_own_bucket_and_made_up_tokens_share_the_address(
    tmp_path: Path,
) -> None:
    settings = _settings(
        tmp_path,
        rate_per_second=0.01,
        rate_burst=5,
        anonymous_rate_per_second=0.01,
        anonymous_rate_burst=3,
    )
    with TestClient(create_app(settings)) as client:
        statuses = [client.get("/api/v1/collections", headers=AUTH).status_code for _ in range(8)]
        # The first request, before the token was proven, counts against the address.
        assert statuses == [200] * 6 + [429] * 2
        limited = client.get("/api/v1/collections", headers=AUTH)
        assert limited.json()["error"] == "TooManyRequests"
        assert int(limited.headers["retry-after"]) >= 1
        assert all(client.get("/healthz").status_code == 200 for _ in range(20))
        # Made-up tokens are never proven: each counts against the address, as
        # requests without credentials do (two of its three went to the admin's first try).
        guesses = [
            client.get("/api/v1/collections", headers={"Authorization": f"Bearer guess-{i}"})
            for i in range(4)
        ]
        assert [g.status_code for g in guesses] == [401, 401, 429, 429]
        assert client.get("/api/v1/collections").status_code == 429


def test_one_bucket_is_shared_by_concurrent_requests(
    tmp_path: Path, live_server: Callable[[FastAPI], str]
) -> None:
    """40 requests at once from 8 threads, a burst of 20 and next to no refill: 20 pass."""
    settings = _settings(tmp_path, rate_per_second=0.001, rate_burst=20)
    base = live_server(create_app(settings))
    with httpx.Client(base_url=base, headers=AUTH, timeout=30) as http:
        assert http.get("/api/v1/collections").status_code == 200  # proves the token
        start = threading.Barrier(8)

        def burst(_: int) -> list[int]:
            start.wait()
            return [http.get("/api/v1/collections").status_code for _ in range(5)]

        with ThreadPoolExecutor(8) as pool:
            codes = [c for batch in pool.map(burst, range(8)) for c in batch]
    assert sorted(codes) == [200] * 20 + [429] * 20


# -- upload slots ------------------------------------------------------------------------


def _held_upload(base: str, data: bytes) -> socket.socket:
    """A PUT whose body has started but not finished: it holds an upload slot."""
    host, port = base.removeprefix("http://").split(":")
    raw = socket.create_connection((host, int(port)), timeout=30)
    raw.sendall(
        (
            f"PUT /api/v1/blobs/{blake3.blake3(data).hexdigest()} HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {ADMIN_TOKEN}\r\nContent-Length: {len(data)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        + data[:1000]
    )
    return raw


def _finish(raw: socket.socket, data: bytes) -> int:
    raw.sendall(data[1000:])
    answer = b""
    while chunk := raw.recv(65536):
        answer += chunk
    raw.close()
    return _status(answer)


def test_uploads_beyond_the_cap_are_503_and_keep_nothing(
    tmp_path: Path, live_server: Callable[[FastAPI], str]
) -> None:
    settings = _settings(tmp_path, max_concurrent_uploads=2)
    app = create_app(settings)
    base = live_server(app)
    node: ArchiveNode = app.state.node
    held = [bytes([n]) * (2 * MiB) for n in (1, 2)]
    extra = b"the third upload\n"
    b3 = blake3.blake3(extra).hexdigest()
    with httpx.Client(base_url=base, headers=AUTH, timeout=30) as http:
        sockets = [_held_upload(base, data) for data in held]
        _wait_for(lambda: getattr(app.state, "uploads_in_progress", 0) == 2)
        busy = http.put(f"/api/v1/blobs/{b3}", content=extra)
        assert busy.status_code == 503
        assert busy.json()["error"] == "ServiceUnavailable"
        assert busy.headers["retry-after"] == "2"
        tus = http.post("/api/v1/uploads", headers={"Upload-Length": str(len(extra))})
        busy_patch = http.patch(
            tus.headers["location"],
            content=extra,
            headers={"Content-Type": OFFSET_TYPE, "Upload-Offset": "0"},
        )
        assert busy_patch.status_code == 503
        assert http.head(tus.headers["location"]).headers["upload-offset"] == "0"
        assert http.head(f"/api/v1/blobs/{b3}").status_code == 404
        assert http.get("/healthz").status_code == 200
        assert [_finish(raw, data) for raw, data in zip(sockets, held, strict=True)] == [201, 201]
        assert http.put(f"/api/v1/blobs/{b3}", content=extra).status_code == 201
    assert app.state.uploads_in_progress == 0
    with node.session() as session:
        sizes = sorted(b.size for b in session.exec(select(models.Blob)).all())
    assert sizes == [len(extra), 2 * MiB, 2 * MiB]


def _wait_for(condition: Callable[[], bool]) -> None:
    for _ in range(500):
        if condition():
            return
        threading.Event().wait(0.02)
    raise AssertionError("condition not reached in 10 s")
