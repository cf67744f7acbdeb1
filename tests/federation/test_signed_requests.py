"""RFC 9421 signatures on the federation API: what is refused, and that it changes nothing."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import blake3
import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from archive.packs import blob_key
from federation.client import FederationClient
from tests.federation.conftest import Connect, MiB, PairFactory, held


@pytest.fixture
def home_database() -> None:
    """These tests are about the partner's entry point: home's catalog is SQLite only."""
    return None


def put_request(client: FederationClient, data: bytes, address: str | None = None) -> httpx.Request:
    return client.build(
        "PUT",
        f"/blobs/{address or blake3.blake3(data).hexdigest()}",
        content=data,
        headers={"Content-Type": "application/octet-stream"},
    )


def copy_of(request: httpx.Request, body: bytes) -> httpx.Request:
    """The same request as an eavesdropper would send it again: same headers, same bytes."""
    headers = {k: v for k, v in request.headers.items() if k.lower() != "content-length"}
    return httpx.Request(request.method, request.url, headers=headers, content=body)


def detail(response: httpx.Response) -> str:
    return str(response.json()["detail"])


def test_a_captured_request_replayed_is_refused(client_of: Connect, make_pair: PairFactory) -> None:
    pair = make_pair()
    client = client_of(pair)
    data = os.urandom(10_000)
    address = blake3.blake3(data).hexdigest()
    request = put_request(client, data)
    assert client.http.send(request).status_code == 201
    client.delete_blob(address)  # so that a replay would store it again
    assert held(pair) == ([], [])

    replay = client.http.send(copy_of(request, data))
    assert replay.status_code == 401
    assert "replayed" in detail(replay)
    assert held(pair) == ([], [])


def test_a_nonce_is_spent_for_every_process_sharing_the_catalog(
    client_of: Connect, make_pair: PairFactory, tmp_path: Path
) -> None:
    """The first use of a signed request happens in another process: the replay to the
    server is still refused, because seen nonces are in the catalog, not in memory."""
    pair = make_pair()
    client = client_of(pair)
    data = b"spent elsewhere"
    request = put_request(client, data)
    message = {"method": request.method, "url": str(request.url), "headers": dict(request.headers)}
    script = (
        "import json, sys\n"
        "from archive.node import ArchiveNode\n"
        "from archive.config import Settings\n"
        "from federation.signing import SignedMessage, verify_request\n"
        "settings = Settings.model_validate_json(sys.argv[1])\n"
        "m = json.loads(sys.argv[2])\n"
        "node = ArchiveNode.open(settings)\n"
        "with node.session() as session:\n"
        "    caller = verify_request(SignedMessage(m['method'], m['url'], m['headers']),\n"
        "                            skew_seconds=300, session=session)\n"
        "print(caller.name)\n"
    )
    other = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            pair.partner.settings.model_dump_json(),
            json.dumps(message),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert other.returncode == 0, other.stderr
    assert other.stdout.strip() == "home"
    replay = client.http.send(copy_of(request, data))
    assert replay.status_code == 401 and "replayed" in detail(replay)
    assert held(pair) == ([], [])


@pytest.mark.parametrize(("age", "why"), [(310, "age"), (-310, "future")])
def test_a_stale_or_future_signature_is_refused(
    client_of: Connect, make_pair: PairFactory, age: int, why: str
) -> None:
    pair = make_pair()
    client = client_of(pair)
    data = b"late"
    request = put_request(client, data)
    created = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=age)
    client.signer.sign(request, digest=request.headers["content-digest"], created=created)
    response = client.http.send(request)
    assert response.status_code == 401 and why in detail(response)
    assert held(pair) == ([], [])


def test_unsigned_and_forged_requests_are_refused(
    client_of: Connect, make_pair: PairFactory
) -> None:
    pair = make_pair()
    client = client_of(pair)
    data = b"the real bytes"
    address = blake3.blake3(data).hexdigest()
    url = f"{pair.partner.url}/federation/v1/blobs/{address}"

    unsigned = httpx.put(url, content=data, headers={"Accept": "application/json"})
    assert unsigned.status_code == 401 and "not signed" in detail(unsigned)

    stranger = client_of(pair, Ed25519PrivateKey.generate())
    unknown = stranger.http.send(put_request(stranger, data))
    assert unknown.status_code == 401 and "not a registered partner" in detail(unknown)

    # A real signature moved to another target: the signed @target-uri differs.
    other = b"other bytes"
    signed = put_request(client, data)
    moved = copy_of(signed, other)
    moved.url = httpx.URL(
        f"{pair.partner.url}/federation/v1/blobs/{blake3.blake3(other).hexdigest()}"
    )
    retargeted = client.http.send(moved)
    assert retargeted.status_code == 401 and "bad signature" in detail(retargeted)

    # A forged signature value: one byte of the Ed25519 signature changed.
    forged = put_request(client, data)
    value = forged.headers["signature"]
    position = value.index(":") + 5
    flipped = "A" if value[position] != "A" else "B"
    forged.headers["signature"] = value[:position] + flipped + value[position + 1 :]
    refused = client.http.send(forged)
    assert refused.status_code == 401 and "bad signature" in detail(refused)

    # A signed digest, and another body: the body is refused, not stored.
    swapped = client.http.send(copy_of(put_request(client, data), b"the real bytez"))
    assert swapped.status_code == 400 and "Content-Digest" in detail(swapped)
    assert held(pair) == ([], [])


def test_over_quota_is_refused_with_507_and_stores_nothing(
    client_of: Connect, make_pair: PairFactory, tmp_path: Path
) -> None:
    pair = make_pair(quota=1 * MiB)
    client = client_of(pair)
    response = client.http.send(put_request(client, os.urandom(MiB + 1)))
    assert response.status_code == 507
    assert "over quota" in detail(response) and "nothing was stored" in detail(response)
    assert held(pair) == ([], [])
    assert client.usage() == {
        "partner": "home",
        "used_bytes": 0,
        "objects": 0,
        "quota_bytes": MiB,
    }
    within = os.urandom(MiB)
    assert client.http.send(put_request(client, within)).status_code == 201
    assert client.http.send(put_request(client, b"one byte more")).status_code == 507
    rows, files = held(pair)
    assert rows == [("blob", blake3.blake3(within).hexdigest())] and len(files) == 1


def test_inventory_pages_usage_and_manifests(client_of: Connect, make_pair: PairFactory) -> None:
    pair = make_pair()
    client = client_of(pair)
    bodies = [os.urandom(1000 + i) for i in range(5)]
    for body in bodies:
        address = blake3.blake3(body).hexdigest()
        assert client.put_blob(address, [body], size=len(body), sha256=_sha(body)) is True
        assert client.put_blob(address, [body], size=len(body), sha256=_sha(body)) is False
    manifest = json.dumps({"version": 1, "entries": []}).encode()
    client.put_manifest("c/d/v1.json", manifest, sealed=False)
    listed = list(client.inventory(page=2))
    addresses = sorted(blake3.blake3(b).hexdigest() for b in bodies)
    assert [(o["kind"], o["name"]) for o in listed] == [("blob", a) for a in addresses] + [
        ("manifest", "c/d/v1.json")
    ]
    assert client.usage()["used_bytes"] == sum(map(len, bodies)) + len(manifest)
    assert client.get_manifest("c/d/v1.json") == manifest
    first = bodies[0]
    address = blake3.blake3(first).hexdigest()
    assert client.head_blob(address) == len(first)
    with client.get_blob(address, offset=10, length=20) as part:
        assert b"".join(part) == first[10:30]
    files = held(pair)[1]
    assert str(pair.partner.hot_path / "partners" / "home" / blob_key(address)) in files


def _sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def test_a_partner_streams_large_bodies_and_is_limited_by_its_key(
    client_of: Connect, make_pair: PairFactory
) -> None:
    """The partner's web app applies its limits to federation requests: a blob over the
    1 MiB limit of JSON bodies is an upload, and a proven partner key gets a rate
    bucket of its own, so many requests from its address pass where anonymous
    callers from the same address are refused with 429."""
    pair = make_pair(partner_extra={"anonymous_rate_per_second": 0.01, "anonymous_rate_burst": 3})
    client = client_of(pair)
    big = os.urandom(3 * MiB)
    address = blake3.blake3(big).hexdigest()
    assert client.put_blob(address, [big], size=len(big), sha256=_sha(big)) is True
    for _ in range(12):  # far past the address's burst of three
        assert client.usage()["used_bytes"] == len(big)
    anonymous = [
        httpx.get(f"{pair.partner.url}/federation/v1/usage", timeout=10).status_code
        for _ in range(4)
    ]
    assert anonymous[-1] == 429 and set(anonymous) <= {401, 429}
    assert client.usage()["objects"] == 1  # the partner itself is still served
    assert held(pair)[0] == [("blob", address)]
