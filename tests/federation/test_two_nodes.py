"""Two real nodes: copies replicated to a partner, proven, audited, repaired, sealed."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import blake3
import pytest
from sqlmodel import col, select

from archive.catalog import models
from archive.catalog.models import EventType, ReplicaState
from archive.datasets import parse_ref
from archive.ingest import ingest_tree
from archive.packs import blob_key
from archive.retrieval import iter_verified, locate
from archive.status import archive_status
from archive.worker import Worker
from federation.partners import usage
from fixity.audit import AuditOptions, Auditor
from fixity.repair import Repairer
from tests.federation.conftest import MiB, Pair, PairFactory

FILES: dict[str, bytes] = {
    "text/table.csv": b"".join(b"%d,%d\n" % (i, i * i) for i in range(300_000)),
    "noise.bin": os.urandom(2 * MiB + 5),
    "small/one.txt": b"a small file, packed at home\n" * 3,
    "small/noise.bin": os.urandom(5000),
}


def ingest(pair: Pair, root: Path, files: dict[str, bytes] = FILES) -> None:
    for rel, data in files.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    ingest_tree(pair.engine, root, parse_ref("c/d"), message="first")


def replicate(pair: Pair) -> None:
    worker = Worker(pair.engine, owner="test")
    worker.plan_once()
    for _ in range(5):
        if not worker.replicate_once():
            break


def replicated_pair(pair: Pair, root: Path, files: dict[str, bytes] = FILES) -> Pair:
    """``pair`` once ``files`` were ingested at home and replicated to the partner."""
    ingest(pair, root, files)
    replicate(pair)
    return pair


@pytest.fixture
def replicated(make_pair: PairFactory, tmp_path: Path) -> Pair:
    return replicated_pair(make_pair(), tmp_path / "src")


def partner_rows(pair: Pair) -> dict[str, models.Replica]:
    """Blob -> its replica row on the partner tier."""
    with pair.engine.session() as session:
        tier_id = pair.engine.tier_ids(session=session)["partner"]
        rows = session.exec(select(models.Replica).where(models.Replica.tier_id == tier_id)).all()
        return {r.blob_b3: r for r in rows if r.blob_b3 is not None}


def blobs(pair: Pair) -> dict[str, models.Blob]:
    with pair.engine.session() as session:
        return {b.b3: b for b in session.exec(select(models.Blob)).all()}


def held_files(pair: Pair) -> dict[str, bytes]:
    """Every file the partner keeps for us in its own tier, by path below the tier."""
    root = pair.partner.hot_path
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in (root / "partners").rglob("*")
        if p.is_file()
    }


def audit(pair: Pair, tier: str = "partner") -> Any:
    options = AuditOptions(tiers=[tier], due_only=False, manifests=False, samples=False)
    return Auditor(pair.engine, owner="auditor").audit_pass(options)


def state_of(pair: Pair, b3: str) -> str:
    return partner_rows(pair)[b3].state


def test_copies_reach_the_partner_and_are_proven(replicated: Pair) -> None:
    pair = replicated
    held = blobs(pair)
    rows = partner_rows(pair)
    assert set(rows) == set(held)
    for b3, row in rows.items():
        assert row.state == ReplicaState.PRESENT
        assert row.key == blob_key(held[b3].stored_b3)  # named by what the partner holds
    files = held_files(pair)
    assert len(files) == len(held)
    for path, data in files.items():
        address = path.rsplit("/", 1)[-1]
        assert path == f"partners/home/{blob_key(address)}"
        assert blake3.blake3(data).hexdigest() == address
    assert {p.rsplit("/", 1)[-1] for p in files} == {b.stored_b3 for b in held.values()}
    with pair.partner.node.session() as session:
        used, count = usage(1, session=session)
    assert (used, count) == (sum(b.stored_size for b in held.values()), len(held))

    report = audit(pair)
    assert report.checked == len(held) and report.clean
    with pair.engine.session() as session:
        events = session.exec(
            select(models.Event).where(
                models.Event.type == EventType.FIXITY_CHECK, models.Event.tier == "partner"
            )
        ).all()
    assert len(events) == len(held)
    assert all(e.outcome == "success" and e.detail["note"] == "proof of possession" for e in events)


def test_a_partner_that_deleted_a_blob_is_caught_and_the_copy_resent(replicated: Pair) -> None:
    pair = replicated
    victim = next(b for b in blobs(pair).values() if b.size == len(FILES["noise.bin"]))
    gone = pair.partner.hot_path / "partners" / "home" / blob_key(victim.stored_b3)
    gone.unlink()

    report = audit(pair)
    assert report.damage_found == 1
    assert state_of(pair, victim.b3) == ReplicaState.MISSING
    assert all(state_of(pair, b) == ReplicaState.PRESENT for b in blobs(pair) if b != victim.b3)

    outcomes = Repairer(pair.engine, owner="repairer").repair_pass()
    assert [(o.tier, o.result) for o in outcomes] == [("partner", "repaired")]
    assert state_of(pair, victim.b3) == ReplicaState.PRESENT
    assert blake3.blake3(gone.read_bytes()).hexdigest() == victim.stored_b3
    assert audit(pair).clean


class AnswersStoredDigests:
    """A dishonest partner: once ``cheating``, it answers proofs with the digest it
    kept instead of reading the bytes (here: the address itself)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.cheating = False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if not (self.cheating and scope["type"] == "http" and scope["path"].endswith("/proofs")):
            await self.app(scope, receive, send)
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        proofs = [{"address": a, "proof": a} for a in json.loads(body)["addresses"]]
        payload = json.dumps({"proofs": proofs}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(payload)),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


def test_a_partner_answering_stored_digests_instead_of_reading_is_caught(
    make_pair: PairFactory, tmp_path: Path
) -> None:
    cheat: list[AnswersStoredDigests] = []

    def wrap(app: Any) -> AnswersStoredDigests:
        cheat.append(AnswersStoredDigests(app))
        return cheat[0]

    pair = replicated_pair(make_pair(partner_wrap=wrap), tmp_path / "src")
    assert all(r.state == ReplicaState.PRESENT for r in partner_rows(pair).values())
    cheat[0].cheating = True

    report = audit(pair)
    assert report.damage_found == len(blobs(pair))
    assert {r.state for r in partner_rows(pair).values()} == {ReplicaState.DAMAGED}
    with pair.engine.session() as session:
        failed = session.exec(
            select(models.Event).where(
                models.Event.type == EventType.FIXITY_CHECK,
                models.Event.outcome == "failure",
                models.Event.object_type == "blob",
            )
        ).all()
    assert len(failed) == len(blobs(pair))
    assert all("proof of possession" in e.detail["error"] for e in failed)


def test_a_local_copy_is_repaired_from_the_partner(replicated: Pair) -> None:
    pair = replicated
    noise = next(b for b in blobs(pair).values() if b.size == len(FILES["noise.bin"]))
    local = pair.home.hot_path / blob_key(noise.b3)
    local.write_bytes(b"bit rot" + local.read_bytes()[7:])

    assert audit(pair, "hot").damage_found == 1
    outcomes = Repairer(pair.engine, owner="repairer").repair_pass()
    assert [(o.tier, o.result) for o in outcomes] == [("hot", "repaired")]
    with pair.engine.session() as session:
        repair = session.exec(
            select(models.Event).where(models.Event.type == EventType.REPLICATION)
        ).all()[-1]
    assert repair.detail["from"] == "partner" and repair.detail["purpose"] == "repair"
    assert blake3.blake3(local.read_bytes()).hexdigest() == noise.stored_b3
    with pair.engine.session() as session:
        loc = next(loc for loc in locate(noise.b3, session=session) if loc.tier == "hot")
    assert b"".join(iter_verified(pair.engine.tiers["hot"], loc, noise)) == FILES["noise.bin"]


def test_sealed_copies_restore_the_original_and_the_partner_never_sees_plaintext(
    make_pair: PairFactory, tmp_path: Path
) -> None:
    pair = replicated_pair(make_pair(encrypt=True), tmp_path / "src")
    held = blobs(pair)
    rows = partner_rows(pair)
    assert {r.state for r in rows.values()} == {ReplicaState.PRESENT}
    files = held_files(pair)
    assert len(files) == len(held)
    stored_b3s = {b.stored_b3 for b in held.values()}
    for path, data in files.items():
        address = path.rsplit("/", 1)[-1]
        assert blake3.blake3(data).hexdigest() == address  # the address: BLAKE3 of the ciphertext
        assert address not in stored_b3s and address not in held
        for original in FILES.values():
            assert original[:64] not in data and original[-64:] not in data
    for b3, row in rows.items():
        assert row.key.rsplit("/", 1)[-1] != held[b3].stored_b3  # the catalog names the ciphertext
    everything = b"".join(files.values())
    table = next(b for b in held.values() if b.size == len(FILES["text/table.csv"]))
    assert table.codec == "zstd"  # its stored (compressed) bytes never left home either
    stored = (pair.home.hot_path / blob_key(table.b3)).read_bytes()
    assert stored[100:164] not in everything and stored[-64:] not in everything

    assert audit(pair).clean  # proofs over the ciphertext, computed from home's plaintext

    partner = pair.engine.tiers["partner"]
    for b3, row in rows.items():
        with pair.engine.session() as session:
            loc = next(loc for loc in locate(b3, session=session) if loc.tier == "partner")
        assert loc.key == row.key
        restored = b"".join(iter_verified(partner, loc, held[b3]))
        assert restored in FILES.values()
    # Repair of home's copy from the sealed partner copy gives back the original bytes.
    noise = next(b for b in held.values() if b.size == len(FILES["noise.bin"]))
    (pair.home.hot_path / blob_key(noise.b3)).unlink()
    assert audit(pair, "hot").damage_found == 1
    assert [o.result for o in Repairer(pair.engine, owner="r").repair_pass()] == ["repaired"]
    assert (pair.home.hot_path / blob_key(noise.b3)).read_bytes() == FILES["noise.bin"]


def test_an_unreachable_partner_is_unreachable_not_damaged(replicated: Pair) -> None:
    pair = replicated
    pair.partner.stop()

    report = audit(pair)
    assert report.unreachable > 0 and report.damage_found == 0
    assert {r.state for r in partner_rows(pair).values()} == {ReplicaState.PRESENT}
    with pair.engine.session() as session:
        status = archive_status(pair.engine, session=session)
        tier = session.exec(select(models.Tier).where(col(models.Tier.name) == "partner")).one()
    assert tier.unreachable_since is not None
    assert status["unreachable"] == {"partner": tier.unreachable_since.isoformat()}


@pytest.mark.parametrize("encrypt", [False, True], ids=["plain", "sealed"])
def test_manifests_and_inventory_through_the_tier(
    make_pair: PairFactory, tmp_path: Path, encrypt: bool
) -> None:
    pair = replicated_pair(make_pair(encrypt=encrypt), tmp_path / "src")
    partner = pair.engine.tiers["partner"]
    with pair.engine.session() as session:
        version = session.exec(select(models.Version)).one()
    with pair.engine.hot.open(version.manifest_key) as f:
        manifest = f.read()
    info = partner.put(version.manifest_key, io.BytesIO(manifest), expect_b3=version.manifest_b3)
    assert info.key == version.manifest_key
    with partner.open(version.manifest_key) as f:
        assert f.read() == manifest
    listed = list(partner.list())
    assert {i.key for i in listed} == {r.key for r in partner_rows(pair).values()} | {
        version.manifest_key
    }
    assert [i.key for i in listed] == sorted(i.key for i in listed)
    at_partner = [f for p, f in held_files(pair).items() if "/manifests/" in p]
    assert len(at_partner) == 1 and (at_partner[0] == manifest) is not encrypt


def test_the_worker_sends_manifests_to_the_partner(replicated: Pair) -> None:
    pair = replicated
    worker = Worker(pair.engine, owner="w", loops=["manifests"])
    assert worker.run_once() == {"manifests": 1}
    assert worker.run_once() == {"manifests": 0}  # sent once, remembered by its event
    with pair.engine.session() as session:
        version = session.exec(select(models.Version)).one()
    with pair.engine.hot.open(version.manifest_key) as f:
        manifest = f.read()
    at_partner = [f for p, f in held_files(pair).items() if "/manifests/" in p]
    assert at_partner == [manifest]


def test_replicating_to_a_partner_that_is_down_waits_and_says_since_when(
    make_pair: PairFactory, tmp_path: Path
) -> None:
    pair = make_pair()
    pair.partner.stop()
    pair = replicated_pair(pair, tmp_path / "src")
    assert {r.state for r in partner_rows(pair).values()} == {ReplicaState.PENDING}
    assert any(r.failures >= 1 for r in partner_rows(pair).values())  # then it backs off
    with pair.engine.session() as session:
        status = archive_status(pair.engine, session=session)
    assert set(status["unreachable"]) == {"partner"}
