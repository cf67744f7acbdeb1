"""Fault injection: damage one stored object, audit, repair; on local and S3 tiers.

Each fault must be found by the first audit that reaches it, recorded as a PREMIS
``fixity check`` failure, repaired from a good copy (whose bytes are proven), and
no other object may change. When every copy of a blob is bad, it is lost, said so,
and never "repaired" from bad data.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import blake3
import pytest
from sqlmodel import col, select

from archive.catalog import models
from archive.catalog.models import ReplicaState
from archive.config import AuditPolicy, S3TierConfig
from archive.datasets import parse_ref
from archive.ingest import ingest_tree
from archive.node import ArchiveNode
from archive.packs import blob_key, pack_key
from archive.status import archive_status, blobs_at_risk
from archive.worker import Worker
from fixity.audit import AuditOptions, Auditor
from fixity.checks import Level
from fixity.repair import Repairer
from tests.archive.conftest import NodeFactory
from tests.fixity.faults import Raw, snapshot

MiB = 1024 * 1024
STORED = {"hot": AuditPolicy(level="stored", deep_every=0), "cold": AuditPolicy(level="stored")}


def build(make_node: NodeFactory, tmp_path: Path) -> tuple[ArchiveNode, dict[str, bytes]]:
    """Ingest a tree (two large loose blobs, small ones packed) and copy it to cold."""
    node = make_node(audit=STORED, audit_threads=2)  # two copies at once, as a worker may
    rng = random.Random(7)
    files = {f"small/{i:02}.txt": f"row {i} {rng.random()}\n".encode() * 30 for i in range(12)}
    files["big/a.bin"] = rng.randbytes(2 * MiB)
    files["big/b.csv"] = b"".join(f"{i},{i * 3}\n".encode() for i in range(200_000))
    files["big/c.bin"] = rng.randbytes(2 * MiB)  # stored raw, as large as a.bin
    src = tmp_path / "src"
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    ingest_tree(node, src, parse_ref("lab/fix"))
    Worker(node, loops=["plan", "replicate"]).run_once()
    return node, files


def raw(node: ArchiveNode, tier: str, request: pytest.FixtureRequest) -> Raw:
    s3 = (
        request.getfixturevalue("s3_server")
        if isinstance(node.settings.tiers[tier], S3TierConfig)
        else None
    )
    return Raw(node, tier, s3)


def audit_all(node: ArchiveNode, level: Level | None = Level.STORED) -> dict[str, object]:
    report = Auditor(node, owner="test").audit_pass(AuditOptions(due_only=False, level=level))
    return report.as_dict()


def replica_of(node: ArchiveNode, tier: str, *, b3: str | None = None, pack: str | None = None):
    with node.session() as session:
        tier_id = node.tier_ids(session=session)[tier]
        stmt = select(models.Replica).where(models.Replica.tier_id == tier_id)
        stmt = stmt.where(models.Replica.blob_b3 == b3 if b3 else models.Replica.pack_id == pack)
        return session.exec(stmt).one()


def at_risk(node: ArchiveNode) -> list[dict[str, object]]:
    with node.session() as session:
        return blobs_at_risk(session=session)


def events(node: ArchiveNode, object_id: str) -> list[models.Event]:
    with node.session() as session:
        return list(
            session.exec(
                select(models.Event)
                .where(models.Event.object_id == object_id)
                .order_by(col(models.Event.id))
            ).all()
        )


def other_states(node: ArchiveNode, but: int) -> dict[int, str]:
    with node.session() as session:
        return {
            r.id: r.state
            for r in session.exec(select(models.Replica)).all()
            if r.id != but and r.id is not None
        }


Fault = Callable[[Raw, str, ArchiveNode, dict[str, bytes]], None]


def _flip(raw: Raw, key: str, node: ArchiveNode, files: dict[str, bytes]) -> None:
    raw.flip_bit(key)


def _truncate(raw: Raw, key: str, node: ArchiveNode, files: dict[str, bytes]) -> None:
    raw.truncate(key)


def _delete(raw: Raw, key: str, node: ArchiveNode, files: dict[str, bytes]) -> None:
    raw.delete(key)


def _swap(raw: Raw, key: str, node: ArchiveNode, files: dict[str, bytes]) -> None:
    """Another blob's valid stored bytes (of the same size) under this blob's name."""
    other = blake3.blake3(files["big/c.bin"]).hexdigest()
    data = raw.read(blob_key(other))
    assert data is not None
    raw.write(key, data)


@pytest.mark.parametrize(
    ("fault", "found_as"),
    [
        pytest.param(_flip, ReplicaState.DAMAGED, id="flip-bit"),
        pytest.param(_truncate, ReplicaState.DAMAGED, id="truncate"),
        pytest.param(_delete, ReplicaState.MISSING, id="delete"),
        pytest.param(_swap, ReplicaState.DAMAGED, id="other-blob"),
    ],
)
@pytest.mark.parametrize("tier", ["hot", "cold"])
def test_a_damaged_loose_copy_is_found_and_repaired(
    make_node: NodeFactory,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    fault: Fault,
    found_as: str,
    tier: str,
) -> None:
    node, files = build(make_node, tmp_path)
    b3 = blake3.blake3(files["big/a.bin"]).hexdigest()
    key = blob_key(b3)
    target = raw(node, tier, request)
    good = target.read(key)
    assert good is not None
    before = snapshot(node)
    replica = replica_of(node, tier, b3=b3)
    assert replica.id is not None
    states_before = other_states(node, replica.id)

    fault(target, key, node, files)
    report = audit_all(node)

    assert report["damaged_or_missing"] == 1
    assert not report["clean"]
    assert replica_of(node, tier, b3=b3).state == found_as
    failed = [e for e in events(node, b3) if e.type == "fixity check" and e.outcome == "failure"]
    assert len(failed) == 1 and failed[0].tier == tier
    risk = at_risk(node)
    assert [r["b3"] for r in risk] == [b3] and risk[0]["state"] == "degraded"

    outcomes = Repairer(node, owner="test").repair_pass()
    assert [(o.object_id, o.result) for o in outcomes] == [(b3, "repaired")]
    assert target.read(key) == good  # the repaired bytes are the original stored bytes
    repaired = replica_of(node, tier, b3=b3)
    assert repaired.state == ReplicaState.PRESENT and repaired.last_verified_at is not None
    kinds = [(e.type, e.outcome) for e in events(node, b3)]
    assert ("repair", "success") in kinds and ("replication", "success") in kinds
    assert snapshot(node) == before  # every other object untouched, this one restored
    assert other_states(node, replica.id) == states_before
    assert at_risk(node) == []
    assert audit_all(node)["clean"]


@pytest.mark.parametrize("fault", [_flip, _truncate, _delete], ids=["flip", "truncate", "delete"])
def test_a_damaged_pack_is_rebuilt_from_member_copies(
    make_node: NodeFactory, tmp_path: Path, request: pytest.FixtureRequest, fault: Fault
) -> None:
    node, files = build(make_node, tmp_path)
    with node.session() as session:
        hot_id = node.tier_ids(session=session)["hot"]
        pack = session.exec(
            select(models.Replica).where(
                models.Replica.tier_id == hot_id, col(models.Replica.pack_id).is_not(None)
            )
        ).one()
    assert pack.pack_id is not None
    target = raw(node, "hot", request)
    good = target.read(pack_key(pack.pack_id))
    before = snapshot(node)

    fault(target, pack_key(pack.pack_id), node, files)
    assert audit_all(node)["damaged_or_missing"] == 1
    assert replica_of(node, "hot", pack=pack.pack_id).state != ReplicaState.PRESENT

    outcomes = Repairer(node, owner="test").repair_pass()
    assert [(o.object_id, o.result) for o in outcomes] == [(pack.pack_id, "repaired")]
    assert target.read(pack_key(pack.pack_id)) == good
    assert snapshot(node) == before
    assert audit_all(node, Level.DEEP)["clean"]


def test_a_corrupt_manifest_is_found_and_rewritten(
    make_node: NodeFactory, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    node, _ = build(make_node, tmp_path)
    with node.session() as session:
        version = session.exec(select(models.Version)).one()
    target = raw(node, "hot", request)
    good = target.read(version.manifest_key)
    assert good is not None and blake3.blake3(good).hexdigest() == version.manifest_b3
    target.write(version.manifest_key, good.replace(b'"size":', b'"size" :', 1))

    report = audit_all(node)
    assert report["damaged_or_missing"] == 1
    assert report["failures"][0]["object_type"] == "manifest"
    with node.session() as session:
        assert session.get(models.Version, version.id).manifest_state == "damaged"

    outcomes = Repairer(node, owner="test").repair_pass()
    assert [o.result for o in outcomes] == ["repaired"]
    assert target.read(version.manifest_key) == good
    assert audit_all(node)["clean"]


def test_when_every_copy_is_bad_the_blob_is_lost_and_said_so(
    make_node: NodeFactory, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    node, files = build(make_node, tmp_path)
    b3 = blake3.blake3(files["big/a.bin"]).hexdigest()
    key = blob_key(b3)
    bad = {}
    for tier in ("hot", "cold"):
        raw(node, tier, request).flip_bit(key, at=500)
        bad[tier] = raw(node, tier, request).read(key)

    assert audit_all(node)["damaged_or_missing"] == 2
    outcomes = Repairer(node, owner="test").repair_pass()
    assert sorted(o.result for o in outcomes) == ["lost", "lost"]
    for tier in ("hot", "cold"):  # nothing was "repaired" from bad data
        assert raw(node, tier, request).read(key) == bad[tier]
        assert replica_of(node, tier, b3=b3).state == ReplicaState.DAMAGED
    lost = [e for e in events(node, b3) if e.type == "repair" and e.detail.get("lost")]
    assert lost
    risk = at_risk(node)
    assert [(r["b3"], r["state"]) for r in risk] == [(b3, "lost")]
    assert risk[0]["versions"] == ["lab/fix@v1"]
    with node.session() as session:
        status = archive_status(node, session=session)
    assert status["integrity"]["lost"] == [{"b3": b3, "versions": ["lab/fix@v1"]}]
