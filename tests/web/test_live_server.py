"""Over a real socket: streamed uploads and downloads through uvicorn, as clients see them."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import blake3
import httpx
import pytest
from fastapi import FastAPI

from archive.config import Settings
from archive.packs import blob_key
from tests.web.conftest import ADMIN_TOKEN, AUTH
from web.app import create_app

MiB = 1024 * 1024
CHUNK = 256 * 1024


def pseudo_random(size: int, seed: bytes) -> Iterator[bytes]:
    """Incompressible bytes, made chunk by chunk so the test never holds them whole."""
    counter = 0
    made = 0
    while made < size:
        piece = blake3.blake3(seed + counter.to_bytes(8, "big")).digest(
            length=min(CHUNK, size - made)
        )
        made += len(piece)
        counter += 1
        yield piece


def digests(chunks: Iterator[bytes]) -> tuple[str, str, int]:
    b3, sha, size = blake3.blake3(), hashlib.sha256(), 0
    for chunk in chunks:
        b3.update(chunk)
        sha.update(chunk)
        size += len(chunk)
    return b3.hexdigest(), sha.hexdigest(), size


def read_into(http: httpx.Client, url: str, received: bytearray) -> None:
    with http.stream("GET", url) as got:
        assert got.status_code == 200
        for chunk in got.iter_bytes():
            received += chunk


def test_streamed_upload_and_download_of_20_mib(
    tmp_path: Path, live_server: Callable[[FastAPI], str]
) -> None:
    size = 20 * MiB + 17
    b3, sha256, _ = digests(pseudo_random(size, b"upload"))
    base = live_server(create_app(Settings(data_dir=tmp_path / "data", api_token=ADMIN_TOKEN)))
    with httpx.Client(base_url=base, timeout=60, headers=AUTH) as http:
        missing = http.post("/api/v1/blobs/missing", json={"blobs": [b3]})
        assert missing.json() == {"missing": [b3]}
        stored = http.put(
            f"/api/v1/blobs/{b3}",
            content=pseudo_random(size, b"upload"),  # an iterator: sent chunked, streamed
            headers={"X-Permafrost-Sha256": sha256},
        )
        assert stored.status_code == 201, stored.text
        assert stored.json()["size"] == size
        commit = http.post(
            "/api/v1/datasets/big/one/versions",
            json={"entries": [{"path": "blob.bin", "blake3": b3, "sha256": sha256}]},
        )
        assert commit.status_code == 201, commit.text
        with http.stream("GET", "/api/v1/datasets/big/one/versions/1/files/blob.bin") as got:
            assert got.status_code == 200
            assert got.headers["content-length"] == str(size)
            got_b3, got_sha256, got_size = digests(got.iter_bytes())
        assert (got_b3, got_sha256, got_size) == (b3, sha256, size)
        tail = http.get(
            "/api/v1/datasets/big/one/versions/1/files/blob.bin",
            headers={"Range": "bytes=-100"},
        )
        assert tail.status_code == 206
        assert tail.content == b"".join(pseudo_random(size, b"upload"))[-100:]


def test_wrong_upload_over_the_wire_is_422(
    tmp_path: Path, live_server: Callable[[FastAPI], str]
) -> None:
    base = live_server(create_app(Settings(data_dir=tmp_path / "data", api_token=ADMIN_TOKEN)))
    claimed = "ab" * 32
    with httpx.Client(base_url=base, timeout=60, headers=AUTH) as http:
        response = http.put(f"/api/v1/blobs/{claimed}", content=pseudo_random(5 * MiB, b"x"))
        assert response.status_code == 422
        assert response.json()["error"] == "UploadDigestMismatch"
        assert http.head(f"/api/v1/blobs/{claimed}").status_code == 404


def test_a_copy_damaged_past_the_first_chunk_never_arrives_whole(
    tmp_path: Path, live_server: Callable[[FastAPI], str]
) -> None:
    """The server announced the length; a body that fails verification ends short of it."""
    data = os.urandom(9 * MiB)  # raw, loose, three tier reads
    b3 = blake3.blake3(data).hexdigest()
    settings = Settings(data_dir=tmp_path / "data", api_token=ADMIN_TOKEN)
    base = live_server(create_app(settings))
    with httpx.Client(base_url=base, timeout=60, headers=AUTH) as http:
        assert http.put(f"/api/v1/blobs/{b3}", content=data).status_code == 201
        entries = [{"path": "f.bin", "blake3": b3}]
        assert http.post("/api/v1/datasets/c/d/versions", json={"entries": entries}).is_success
        stored = settings.data_dir / "tiers" / "hot" / blob_key(b3)
        damaged = bytearray(stored.read_bytes())
        damaged[-1] ^= 0xFF
        stored.chmod(0o644)
        stored.write_bytes(bytes(damaged))
        received = bytearray()
        with pytest.raises(httpx.RemoteProtocolError):
            read_into(http, "/api/v1/datasets/c/d/versions/1/files/f.bin", received)
        assert len(received) < len(data)
