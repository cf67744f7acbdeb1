"""Hostile input on the federation entry point, from a partner whose signatures hold:
each is refused with a clear 4xx and nothing is stored (docs/security.md)."""

from __future__ import annotations

import hashlib
import json
import os
import socket
from urllib.parse import urlsplit

import blake3
import httpx
import pytest

from federation.client import FederationClient
from federation.signing import content_digest
from tests.federation.conftest import Connect, Pair, PairFactory, held

NOTHING: tuple[list[tuple[str, str]], list[str]] = ([], [])


@pytest.fixture
def home_database() -> None:
    """These tests are about the partner's entry point: home's catalog is SQLite only."""
    return None


def send(
    client: FederationClient, method: str, path: str, body: bytes, media: str
) -> httpx.Response:
    request = client.build(method, path, content=body, headers={"Content-Type": media})
    return client.http.send(request)


@pytest.fixture
def paired(make_pair: PairFactory, client_of: Connect) -> tuple[Pair, FederationClient]:
    pair = make_pair()
    return pair, client_of(pair)


BAD_ADDRESSES = [
    "..",
    "%2e%2e",
    "..%2F..%2F..%2Fetc%2Fpasswd",
    "abc",
    "A" * 64,
    "g" * 64,
    "0" * 63,
    "0" * 65,
    "0" * 62 + "%00",
]


@pytest.mark.parametrize("address", BAD_ADDRESSES)
def test_bad_blob_addresses_are_refused(
    paired: tuple[Pair, FederationClient], address: str
) -> None:
    pair, client = paired
    response = send(client, "PUT", f"/blobs/{address}", b"payload", "application/octet-stream")
    assert 400 <= response.status_code < 500
    assert held(pair) == NOTHING
    assert not list(pair.partner.hot_path.parent.rglob("passwd"))


def test_a_body_that_is_not_its_address_is_refused(paired: tuple[Pair, FederationClient]) -> None:
    pair, client = paired
    address = blake3.blake3(b"what was promised").hexdigest()
    response = send(
        client, "PUT", f"/blobs/{address}", b"something else", "application/octet-stream"
    )
    assert response.status_code == 400
    assert "does not hash to its address" in response.json()["detail"]
    assert held(pair) == NOTHING


BAD_MANIFEST_NAMES = [
    "../v1.json",
    "c/../v1.json",
    "c/d/../../../../etc/v1.json",
    "c/..%2F..%2Fx/v1.json",
    "c/d/v1.json/..",
    "c/d/v0.json",
    "c/d/x.json",
    ".hidden/d/v1.json",
    "c/d/e/v1.json",
]


@pytest.mark.parametrize("name", BAD_MANIFEST_NAMES)
def test_bad_manifest_names_are_refused(paired: tuple[Pair, FederationClient], name: str) -> None:
    pair, client = paired
    response = send(client, "PUT", f"/manifests/{name}", b"{}", "application/json")
    assert 400 <= response.status_code < 500
    assert held(pair) == NOTHING


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/manifests/c/d/v1.json", b'{"entries": ['),
        ("/manifests/c/d/v1.json", b"\xff\xfe not text"),
        ("/manifests/c/d/v1.json", b"[1, 2, 3]"),
        ("/proofs", b'{"key": "00"'),
        ("/proofs", b'{"key": "zz", "addresses": []}'),
        ("/proofs", json.dumps({"key": "0" * 64, "addresses": ["0" * 64] * 1001}).encode()),
        ("/proofs", json.dumps({"key": "0" * 64, "addresses": ["../../etc"]}).encode()),
        ("/proofs", json.dumps({"key": "0" * 64, "addresses": "0" * 64, "x": 1}).encode()),
    ],
)
def test_malformed_json_is_refused(
    paired: tuple[Pair, FederationClient], path: str, body: bytes
) -> None:
    pair, client = paired
    method = "PUT" if path.startswith("/manifests") else "POST"
    response = send(client, method, path, body, "application/json")
    assert response.status_code == 400, response.text
    assert held(pair) == NOTHING


@pytest.mark.parametrize(
    ("path", "media"),
    [("/manifests/c/d/v1.json", "text/html"), ("/proofs", "text/plain"), ("/proofs", "")],
)
def test_a_wrong_content_type_is_refused(
    paired: tuple[Pair, FederationClient], path: str, media: str
) -> None:
    pair, client = paired
    method = "PUT" if path.startswith("/manifests") else "POST"
    response = send(client, method, path, b"{}", media)
    assert response.status_code == 415
    assert held(pair) == NOTHING


def _raw(pair: Pair, client: FederationClient, address: str, body: bytes, declared: int) -> bytes:
    """A signed PUT sent over a raw socket, declaring ``declared`` bytes and sending ``body``;
    the socket is half-closed after the body; returns what the server answered."""
    request = client.build(
        "PUT",
        f"/blobs/{address}",
        content=body,
        headers={"Content-Type": "application/octet-stream"},
    )
    lines = [f"PUT {request.url.raw_path.decode()} HTTP/1.1"]
    for name, value in request.headers.items():
        if name.lower() != "content-length":
            lines.append(f"{name}: {value}")
    lines.append(f"Content-Length: {declared}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode()
    where = urlsplit(pair.partner.url)
    with socket.create_connection((where.hostname, where.port), timeout=30) as sock:
        sock.sendall(head + body)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


@pytest.mark.parametrize(
    ("declared", "answers"),
    [(1000, (b"HTTP/1.1 400",)), (5000, (b"", b"HTTP/1.1 4"))],
    ids=["longer-than-declared", "shorter-than-declared"],
)
def test_a_body_that_is_not_its_content_length_stores_nothing(
    paired: tuple[Pair, FederationClient], declared: int, answers: tuple[bytes, ...]
) -> None:
    """Longer: the extra bytes are not the body, whose digest then fails (400). Shorter:
    the client half-closes and waits; no answer or a 4xx. Either way nothing is kept,
    and the same blob sent properly afterwards is stored."""
    pair, client = paired
    body = os.urandom(2000)
    address = blake3.blake3(body).hexdigest()
    answer = _raw(pair, client, address, body, declared)
    assert answer.startswith(answers) if answer else b"" in answers
    assert held(pair) == NOTHING
    assert client.put_blob(address, [body], size=len(body), sha256=_sha256(body)) is True
    assert len(held(pair)[0]) == 1


def test_chunked_uploads_without_a_length_are_refused(
    paired: tuple[Pair, FederationClient],
) -> None:
    pair, client = paired
    body = b"no length"
    request = client.build(
        "PUT",
        f"/blobs/{blake3.blake3(body).hexdigest()}",
        content=iter([body]),
        sha256=_sha256(body),
        headers={"Content-Type": "application/octet-stream"},
    )
    assert "content-length" not in request.headers
    response = client.http.send(request)
    assert response.status_code == 400 and "Content-Length" in response.json()["detail"]
    assert held(pair) == NOTHING


def test_a_digest_header_that_is_not_sha256_is_refused(
    paired: tuple[Pair, FederationClient],
) -> None:
    pair, client = paired
    body = b"digest games"
    request = client.build("PUT", f"/blobs/{blake3.blake3(body).hexdigest()}", content=body)
    client.signer.sign(request, digest="sha-512=:" + "A" * 86 + "==:")
    response = client.http.send(request)
    assert response.status_code == 401 and "sha-256" in response.json()["detail"]
    assert content_digest(b"\0" * 32).startswith("sha-256=:")
    assert held(pair) == NOTHING


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()
