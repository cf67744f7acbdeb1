"""``POST /blobs/batch``: many small blobs in one tar stream, stored as one pack.

On a local hot tier and on an S3 hot tier (SeaweedFS). Every refusal is checked for
its status, the blob it names, and that the catalog and every tier are unchanged.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import blake3
import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import select

from archive.batch_format import (
    TAR_END,
    BatchClaim,
    index_member,
    member_header,
    padding,
)
from archive.catalog import models
from archive.config import Settings
from archive.node import ArchiveNode
from tests.support.accounts import add_people
from tests.support.archive_state import snapshot
from tests.web.conftest import ADMIN_TOKEN, AUTH, Content, content
from tests.web.test_limits import _finish, _held_upload, _wait_for
from web.app import create_app

API = "/api/v1"
BATCH = f"{API}/blobs/batch"
KiB = 1024
MiB = 1024 * KiB
TAR = {"Content-Type": "application/x-tar"}


def claim(blob: Content) -> BatchClaim:
    return BatchClaim(blob.b3, blob.sha256, len(blob.data))


def batch_body(
    blobs: Sequence[Content],
    *,
    claims: Sequence[BatchClaim] | None = None,
    members: Sequence[tuple[str, bytes]] | None = None,
) -> bytes:
    """A batch as the client sends it; ``claims`` and ``members`` override what is
    claimed and what is sent, to make wrong batches."""
    index = index_member(claims if claims is not None else [claim(b) for b in blobs])
    sent = members if members is not None else [(b.b3, b.data) for b in blobs]
    body = b"".join(
        member_header(name, len(data)) + data + padding(len(data)) for name, data in sent
    )
    return index + body + TAR_END


def sample_blobs() -> list[Content]:
    """Compressible and not, empty, one byte, and one just under 1 MiB."""
    blobs = [content(b"row %d,%d\n" % (i, i * i) * 50) for i in range(12)]
    blobs += [content(os.urandom(n)) for n in (1, 700, 4096, 33 * KiB)]
    blobs += [content(b""), content(os.urandom(MiB - 1))]
    return blobs


@pytest.fixture(
    params=[
        "local",
        pytest.param("s3", marks=pytest.mark.s3),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
def batch_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """An archive whose hot tier is a local folder or an S3 bucket on SeaweedFS; its
    catalog SQLite, or PostgreSQL (with the local tier)."""
    tiers: dict[str, Any] = {}
    database_url = None
    if request.param == "s3":
        server = request.getfixturevalue("s3_server")
        tiers = {"hot": {"kind": "s3", "role": "hot", **server.tier_settings(server.make_bucket())}}
    if request.param == "postgres":
        database_url = request.getfixturevalue("postgres_schema_url")
    return Settings(
        data_dir=tmp_path / "data", api_token=ADMIN_TOKEN, tiers=tiers, database_url=database_url
    )


@pytest.fixture
def batch_client(batch_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(batch_settings), headers=AUTH) as test_client:
        yield test_client


def node_of(client: TestClient) -> ArchiveNode:
    node: ArchiveNode = client.app.state.node  # type: ignore[attr-defined]
    return node


def test_a_batch_is_stored_as_one_pack_and_every_member_reads_back(
    batch_client: TestClient,
) -> None:
    blobs = sample_blobs()
    node = node_of(batch_client)
    before = {info.key for info in node.hot.list("")}
    answer = batch_client.post(BATCH, content=batch_body(blobs), headers=TAR)
    assert answer.status_code == 201, answer.text
    assert answer.json()["created"] == [b.b3 for b in blobs] and answer.json()["held"] == []
    pack_id = answer.json()["pack"]

    with node.reading() as session:
        packs = session.exec(select(models.Pack)).all()
        assert [(p.id, p.member_count) for p in packs] == [(pack_id, len(blobs))]
        members = session.exec(select(models.PackMember)).all()
        assert sorted(m.blob_b3 for m in members) == sorted(b.b3 for b in blobs)
        replicas = session.exec(select(models.Replica)).all()
        assert [(r.pack_id, r.blob_b3, r.state) for r in replicas] == [
            (pack_id, None, models.ReplicaState.PRESENT)
        ]
        rows = {b.b3: b for b in session.exec(select(models.Blob)).all()}
        assert {b3: (r.sha256, r.size) for b3, r in rows.items()} == {
            b.b3: (b.sha256, len(b.data)) for b in blobs
        }
    # One object and its sidecar index, a plain tar of the stored bytes.
    added = {info.key for info in node.hot.list("")} - before
    assert added == {f"packs/{pack_id}.tar", f"packs/{pack_id}.json"}
    with node.hot.open(f"packs/{pack_id}.tar") as stream:
        pack_bytes = stream.read()
    assert blake3.blake3(pack_bytes).hexdigest() == pack_id
    with tarfile.open(fileobj=io.BytesIO(pack_bytes)) as tar:
        assert len(tar.getnames()) == len(blobs)

    # Named in a version, each reads back byte for byte through the download route.
    entries = [
        {"path": f"f{i:02}", "blake3": b.b3, "sha256": b.sha256, "size": len(b.data)}
        for i, b in enumerate(blobs)
    ]
    committed = batch_client.post(f"{API}/datasets/lab/run/versions", json={"entries": entries})
    assert committed.status_code == 201, committed.text
    for i, blob in enumerate(blobs):
        got = batch_client.get(f"{API}/datasets/lab/run/versions/1/files/f{i:02}")
        assert got.status_code == 200
        assert got.content == blob.data
        assert hashlib.sha256(got.content).hexdigest() == blob.sha256


def _wrong_batches() -> dict[str, Callable[[list[Content]], tuple[bytes, str]]]:
    """Wrong batches of good blobs, each with the BLAKE3 the refusal must name."""

    def wrong_bytes(blobs: list[Content]) -> tuple[bytes, str]:
        members = [(b.b3, b.data) for b in blobs]
        members[3] = (blobs[3].b3, b"X" + blobs[3].data[1:])  # same size, other bytes
        return batch_body(blobs, members=members), blobs[3].b3

    def wrong_sha256(blobs: list[Content]) -> tuple[bytes, str]:
        claims = [claim(b) for b in blobs]
        claims[5] = BatchClaim(blobs[5].b3, hashlib.sha256(b"other").hexdigest(), claims[5].size)
        return batch_body(blobs, claims=claims), blobs[5].b3

    def wrong_size(blobs: list[Content]) -> tuple[bytes, str]:
        claims = [claim(b) for b in blobs]
        claims[-3] = BatchClaim(claims[-3].b3, claims[-3].sha256, claims[-3].size + 1)
        return batch_body(blobs, claims=claims), claims[-3].b3

    def wrong_order(blobs: list[Content]) -> tuple[bytes, str]:
        members = [(b.b3, b.data) for b in blobs]
        members[1], members[2] = members[2], members[1]
        return batch_body(blobs, members=members), blobs[1].b3

    def member_missing(blobs: list[Content]) -> tuple[bytes, str]:
        return batch_body(blobs, members=[(b.b3, b.data) for b in blobs[:-1]]), blobs[-1].b3

    def last_member_cut(blobs: list[Content]) -> tuple[bytes, str]:
        whole = batch_body(blobs)
        return whole[: -len(TAR_END) - 5000], ""

    return {
        "wrong-bytes": wrong_bytes,
        "wrong-sha256": wrong_sha256,
        "wrong-size": wrong_size,
        "wrong-order": wrong_order,
        "member-missing": member_missing,
        "last-member-cut": last_member_cut,
    }


@pytest.mark.parametrize("wrong", list(_wrong_batches()))
def test_a_batch_with_one_wrong_member_is_refused_and_nothing_changes(
    batch_client: TestClient, wrong: str
) -> None:
    node = node_of(batch_client)
    held = content(b"already held before the batch\n")
    assert batch_client.put(f"{API}/blobs/{held.b3}", content=held.data).status_code == 201
    blobs = [held, *sample_blobs()]
    body, culprit = _wrong_batches()[wrong](blobs)
    before = snapshot(node)
    answer = batch_client.post(BATCH, content=body, headers=TAR)
    assert answer.status_code == 422, answer.text
    if culprit:
        assert answer.json()["blob"] == culprit and culprit in answer.json()["detail"]
    assert "nothing of this batch was stored" in answer.json()["detail"] or not culprit
    assert snapshot(node) == before
    missing = batch_client.post(f"{API}/blobs/missing", json={"blobs": [b.b3 for b in blobs]})
    assert missing.json()["missing"] == sorted(b.b3 for b in blobs[1:])
    staging = node.settings.data_dir / "tiers" / "hot" / ".staging"  # the local tier's
    assert not staging.exists() or list(staging.iterdir()) == []


def test_members_already_held_are_checked_and_skipped(batch_client: TestClient) -> None:
    node = node_of(batch_client)
    first, second, third = (content(os.urandom(3000 + n)) for n in range(3))
    assert batch_client.put(f"{API}/blobs/{second.b3}", content=second.data).status_code == 201
    answer = batch_client.post(BATCH, content=batch_body([first, second, third]), headers=TAR)
    assert answer.status_code == 201
    assert answer.json()["created"] == [first.b3, third.b3]
    assert answer.json()["held"] == [second.b3]
    with node.reading() as session:
        assert [p.member_count for p in session.exec(select(models.Pack)).all()] == [2]

    # Everything held: 200, no new pack, and a held member is still proven.
    before = snapshot(node)
    again = batch_client.post(BATCH, content=batch_body([third, first]), headers=TAR)
    assert again.status_code == 200
    assert again.json() == {"created": [], "held": [third.b3, first.b3], "pack": None}
    assert snapshot(node) == before
    lying = batch_body([first], members=[(first.b3, os.urandom(len(first.data)))])
    refused = batch_client.post(BATCH, content=lying, headers=TAR)
    assert refused.status_code == 422 and refused.json()["blob"] == first.b3
    assert snapshot(node) == before


def test_batches_need_a_writer(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    with TestClient(create_app(settings)) as client:
        people = add_people(node_of(client))
        node = node_of(client)
        body = batch_body([content(b"some bytes\n")])
        before = snapshot(node)
        assert client.post(BATCH, content=body, headers=TAR).status_code == 401
        assert client.get(BATCH).status_code == 401
        wrong = {"Authorization": "Bearer not-a-token", **TAR}
        assert client.post(BATCH, content=body, headers=wrong).status_code == 401
        for reader in ("reader", "nobody"):
            refused = client.post(BATCH, content=body, headers={**people[reader].auth, **TAR})
            assert refused.status_code == 403, reader
        assert snapshot(node) == before
        # A writer may: and it may then name the blob in a version of its collection.
        writer = people["writer"].auth
        assert client.post(BATCH, content=body, headers={**writer, **TAR}).status_code == 201
        blob = content(b"some bytes\n")
        entry = {"path": "a.txt", "blake3": blob.b3, "sha256": blob.sha256, "size": 11}
        committed = client.post(
            f"{API}/datasets/lab/run/versions", json={"entries": [entry]}, headers=writer
        )
        assert committed.status_code == 201, committed.text


def test_batch_limits_are_told_and_enforced(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        api_token=ADMIN_TOKEN,
        pack_below=64 * KiB,
        batch_max_members=4,
        max_batch_bytes=128 * KiB,
    )
    with TestClient(create_app(settings), headers=AUTH) as client:
        node = node_of(client)
        told = client.get(BATCH).json()
        assert told == {"member_below": 64 * KiB, "max_members": 4, "max_bytes": 128 * KiB}
        before = snapshot(node)
        five = [content(os.urandom(100 + n)) for n in range(5)]
        too_many = client.post(BATCH, content=batch_body(five), headers=TAR)
        assert too_many.status_code == 422 and "at most 4" in too_many.json()["detail"]
        large = content(os.urandom(64 * KiB))
        not_small = client.post(BATCH, content=batch_body([large]), headers=TAR)
        assert not_small.status_code == 422 and not_small.json()["blob"] == large.b3
        big = [content(os.urandom(60 * KiB)) for _ in range(3)]
        over = client.post(BATCH, content=batch_body(big), headers=TAR)
        assert over.status_code == 413 and over.json()["error"] == "TooLarge"
        not_tar = client.post(BATCH, content=b"{}" * 1000, headers=TAR)
        assert not_tar.status_code == 422
        assert snapshot(node) == before
        assert client.post(BATCH, content=batch_body(five[:4]), headers=TAR).status_code == 201


def test_batches_are_rate_limited(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path / "data", api_token=ADMIN_TOKEN, rate_per_second=0.01, rate_burst=2
    )
    with TestClient(create_app(settings), headers=AUTH) as client:
        answers = [
            client.post(BATCH, content=batch_body([content(b"blob %d\n" % n)]), headers=TAR)
            for n in range(6)
        ]
        codes = [a.status_code for a in answers]
        assert 429 in codes and set(codes) == {201, 429}
        limited = answers[codes.index(429)]
        assert int(limited.headers["retry-after"]) > 0
        with node_of(client).reading() as session:
            assert session.scalar(
                sa.select(sa.func.count()).select_from(models.Blob)
            ) == codes.count(201)


def test_a_batch_takes_an_upload_slot(
    tmp_path: Path, live_server: Callable[[FastAPI], str]
) -> None:
    settings = Settings(data_dir=tmp_path / "data", api_token=ADMIN_TOKEN, max_concurrent_uploads=1)
    app = create_app(settings)
    base = live_server(app)
    data = os.urandom(2 * MiB)
    body = batch_body([content(b"small\n")])
    with httpx.Client(base_url=base, headers=AUTH, timeout=30) as http:
        raw = _held_upload(base, data)
        _wait_for(lambda: getattr(app.state, "uploads_in_progress", 0) == 1)
        busy = http.post(BATCH, content=body, headers=TAR)
        assert busy.status_code == 503 and busy.headers["retry-after"] == "2"
        assert _finish(raw, data) == 201
        assert http.post(BATCH, content=body, headers=TAR).status_code == 201
    assert app.state.uploads_in_progress == 0


def test_a_large_batch_is_streamed_in_bounded_memory(
    tmp_path: Path, live_server: Callable[[FastAPI], str]
) -> None:
    """48 MiB of members over a real socket: neither side holds the body whole."""
    settings = Settings(data_dir=tmp_path / "data", api_token=ADMIN_TOKEN)
    app = create_app(settings)
    base = live_server(app)
    seeds = [os.urandom(32) for _ in range(64)]

    def member(seed: bytes) -> bytes:  # 768 KiB, made again when needed, never all kept
        return blake3.blake3(seed).digest(length=768 * KiB)

    claims = [
        BatchClaim(
            blake3.blake3(member(s)).hexdigest(), hashlib.sha256(member(s)).hexdigest(), 768 * KiB
        )
        for s in seeds
    ]

    def body() -> Iterator[bytes]:
        yield index_member(claims)
        for c, s in zip(claims, seeds, strict=True):
            yield member_header(c.b3, c.size) + member(s)
        yield TAR_END

    tracemalloc.start()
    try:
        with httpx.Client(base_url=base, headers=AUTH, timeout=120) as http:
            answer = http.post(BATCH, content=body(), headers=TAR)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert answer.status_code == 201, answer.text
    assert len(answer.json()["created"]) == 64
    assert peak < 16 * MiB, f"peak {peak / MiB:.1f} MiB for a 48 MiB batch"
