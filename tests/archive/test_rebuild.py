"""Disaster recovery: the catalog is lost, storage is not; rebuild it and compare."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlmodel import col, select

from archive.catalog import models
from archive.config import LocalTierConfig, Settings
from archive.datasets import parse_ref
from archive.errors import InvalidInput
from archive.ingest import ingest_tree
from archive.node import ArchiveNode
from archive.packs import blob_key
from archive.rebuild import rebuild_catalog
from archive.worker import Worker
from tests.archive.conftest import Cli

MiB = 1024 * 1024


def settings_for(data: Path, database_url: str | None = None, cold: str = "local") -> Settings:
    return Settings(
        data_dir=data,
        database_url=database_url,
        tiers={
            "hot": LocalTierConfig(path=data / "hot", role="hot"),
            "cold": {"kind": cold, "path": str(data / "cold"), "role": "cold"},  # type: ignore[dict-item]
        },
    )


def write_tree(root: Path, seed: int, *, small: int = 12) -> None:
    rng = random.Random(seed)
    for i in range(small):
        path = root / f"small/{i:02}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"row {i} of tree {seed} {rng.random()}\n".encode() * rng.randint(1, 40))
    (root / "big").mkdir(exist_ok=True)
    (root / "big/random.bin").write_bytes(rng.randbytes(2 * MiB))
    (root / "big/shared.csv").write_bytes(b"".join(b"%d,%d\n" % (i, i * i) for i in range(150_000)))


def populate(node: ArchiveNode, tmp_path: Path) -> None:
    """Two collections, three datasets, up to three versions each, replicated."""
    for collection, dataset, seeds in [
        ("lab", "alpha", [1, 2, 3]),
        ("lab", "beta", [4]),
        ("field", "gamma", [5, 6]),
    ]:
        src = tmp_path / "src" / dataset
        for seed in seeds:
            write_tree(src, seed)
            (src / f"notes-{seed}.md").write_text(f"version from seed {seed}\n")
            ingest_tree(node, src, parse_ref(f"{collection}/{dataset}"), message=f"seed {seed}")
    Worker(node).run_once()


def snapshot(node: ArchiveNode) -> dict[str, Any]:
    """Every row a rebuild must give back, keyed without database ids."""
    with node.session() as session:
        colls = {c.id: c.name for c in session.exec(select(models.Collection)).all()}
        dsets = {
            d.id: (colls[d.collection_id], d.name, d.pid, d.title, json.dumps(d.metadata_))
            for d in session.exec(select(models.Dataset)).all()
        }
        versions = {
            v.id: (
                dsets[v.dataset_id][:2],
                v.number,
                v.manifest_b3,
                v.manifest_key,
                v.previous_b3,
                v.message,
                v.file_count,
                v.total_size,
                v.created_at.isoformat(),
            )
            for v in session.exec(select(models.Version)).all()
        }
        entries = sorted(
            (versions[e.version_id][:2], e.path, e.blob_b3)
            for e in session.exec(select(models.Entry)).all()
        )
        blobs = sorted(
            (b.b3, b.sha256, b.size, b.stored_size, b.stored_b3, b.codec)
            for b in session.exec(select(models.Blob)).all()
        )
        members = sorted(
            (m.pack_id, m.blob_b3, m.offset, m.length)
            for m in session.exec(select(models.PackMember)).all()
        )
        tiers = {t.id: t.name for t in session.exec(select(models.Tier)).all()}
        copies = sorted(
            (tiers[r.tier_id], r.key, r.state, r.blob_b3, r.pack_id)
            for r in session.exec(select(models.Replica)).all()
        )
    return {
        "datasets": sorted(dsets.values()),
        "versions": sorted(versions.values(), key=lambda v: (v[0], v[1])),
        "entries": entries,
        "blobs": blobs,
        "members": members,
        "copies": copies,
    }


def lose_catalog(settings: Settings) -> None:
    catalog = settings.data_dir / "catalog.db"
    for path in catalog.parent.glob("catalog.db*"):
        path.unlink()
    assert not catalog.exists()


@pytest.mark.parametrize("into", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_rebuild_gives_back_every_row(
    tmp_path: Path, into: str, request: pytest.FixtureRequest
) -> None:
    settings = settings_for(tmp_path / "data")
    node = ArchiveNode.open(settings)
    try:
        populate(node, tmp_path)
        before = snapshot(node)
    finally:
        node.close()
    assert len(before["versions"]) == 6 and before["members"] and before["copies"]
    assert {c[0] for c in before["copies"]} == {"hot", "cold"}
    lose_catalog(settings)

    if into == "postgres":
        settings = settings.model_copy(
            update={"database_url": request.getfixturevalue("postgres_schema_url")}
        )
    node = ArchiveNode.open(settings)
    try:
        report = rebuild_catalog(node, "hot")
        after = snapshot(node)
        with node.session() as session:
            due = session.exec(
                select(models.Replica).where(col(models.Replica.next_audit_at).is_(None))
            ).all()
    finally:
        node.close()
    assert report.ok, report.as_dict()
    assert (report.collections, report.datasets, report.versions) == (2, 3, 6)
    assert report.entries == sum(v[6] for v in before["versions"])
    assert report.unproven == [] and report.unindexed_packs == []
    assert due == []  # every recreated copy is due for audit
    for table in before:
        assert after[table] == before[table], table


def test_rebuild_through_the_cli_into_another_database(cli: Cli, tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_tree(src, 7)
    cli("ingest", str(src), "--collection", "lab", "--dataset", "d")
    (src / "small/00.txt").write_text("changed\n")
    cli("ingest", str(src), "--collection", "lab", "--dataset", "d")
    original = json.loads(cli("show", "lab/d", "--json").stdout)
    into = f"sqlite:///{tmp_path / 'rebuilt.db'}"

    report = cli.json("catalog", "rebuild", "--from", "hot", "--into", into)
    assert report["ok"] is True and report["versions"] == 2

    cli.env["PERMAFROST_DATABASE_URL"] = into
    rebuilt = json.loads(cli("show", "lab/d", "--json").stdout)
    assert [v["number"] for v in rebuilt["versions"]] == [1, 2]
    files = {f["path"]: (f["blake3"], f["sha256"], f["size"]) for f in rebuilt["files"]}
    assert files == {f["path"]: (f["blake3"], f["sha256"], f["size"]) for f in original["files"]}
    out = tmp_path / "out"
    cli("get", "lab/d@v1", "-o", str(out))
    assert (out / "big/random.bin").read_bytes() == (src / "big/random.bin").read_bytes()
    cli("verify", "lab/d")

    # A second rebuild into the now full catalog is refused, and changes nothing.
    refused = cli("catalog", "rebuild", "--from", "hot", "--into", into, code=2)
    assert "already holds 2 versions" in refused.stderr


def test_a_tampered_manifest_is_named_exactly(tmp_path: Path) -> None:
    settings = settings_for(tmp_path / "data")
    node = ArchiveNode.open(settings)
    src = tmp_path / "src"
    try:
        for seed in (1, 2, 3):
            write_tree(src, seed, small=3)
            ingest_tree(node, src, parse_ref("lab/chain"), message=f"run {seed}")
    finally:
        node.close()
    v2 = settings.data_dir / "hot" / "manifests/lab/chain/v2.json"
    os.chmod(v2, 0o644)
    doc = json.loads(v2.read_bytes())
    doc["message"] = "run 2 (rewritten)"  # still a valid manifest, just not the one committed
    v2.write_text(json.dumps(doc, sort_keys=True, separators=(",", ":")))
    lose_catalog(settings)

    node = ArchiveNode.open(settings)
    try:
        report = rebuild_catalog(node, "hot")
    finally:
        node.close()
    assert not report.ok
    assert len(report.chain_breaks) == 1
    assert report.chain_breaks[0].startswith("lab/chain@v2: ")
    assert "altered or replaced after v3" in report.chain_breaks[0]


def test_a_blob_on_no_tier_is_reported_lost(tmp_path: Path) -> None:
    settings = settings_for(tmp_path / "data")
    node = ArchiveNode.open(settings)
    src = tmp_path / "src"
    try:
        write_tree(src, 9, small=2)
        ingest_tree(node, src, parse_ref("lab/lost"))
        Worker(node).run_once()
        with node.session() as session:
            victim = session.exec(select(models.Blob).where(models.Blob.size == 2 * MiB)).one()
    finally:
        node.close()
    for tier in ("hot", "cold"):
        stored = settings.data_dir / tier / blob_key(victim.b3)
        os.chmod(stored, 0o644)
        data = bytearray(stored.read_bytes())
        data[1000] ^= 1
        stored.write_bytes(bytes(data))  # bit rot on both copies
    lose_catalog(settings)

    node = ArchiveNode.open(settings)
    try:
        report = rebuild_catalog(node, "hot")
        with node.session() as session:
            copies = session.exec(
                select(models.Replica).where(models.Replica.blob_b3 == victim.b3)
            ).all()
    finally:
        node.close()
    assert report.lost_blobs == [victim.b3]
    assert not report.ok
    assert sorted(p.split(":")[0] for p in report.unproven) == ["cold", "hot"]
    assert copies == []  # damaged bytes are never recorded as a copy


def test_cold_copies_that_need_a_restore(tmp_path: Path) -> None:
    """On a Glacier-like tier only listings are free: loose copies are recreated when a
    readable copy proves the blob and the sizes agree; cold packs are named, not guessed."""
    settings = settings_for(tmp_path / "data", cold="local-cold")
    node = ArchiveNode.open(settings)
    try:
        populate(node, tmp_path)
        before = snapshot(node)
    finally:
        node.close()
    lose_catalog(settings)
    node = ArchiveNode.open(settings)
    try:
        report = rebuild_catalog(node, "hot")
        after = snapshot(node)
    finally:
        node.close()
    assert report.ok
    cold_loose = [c for c in before["copies"] if c[0] == "cold" and c[3] is not None]
    cold_packs = [c for c in before["copies"] if c[0] == "cold" and c[4] is not None]
    assert cold_loose and cold_packs
    assert [c for c in after["copies"] if c[0] == "cold"] == cold_loose
    assert sorted(p.split(":", 1)[1] for p in report.unindexed_packs) == sorted(
        c[1] for c in cold_packs
    )


def test_rebuild_refuses_an_unknown_tier_and_a_full_catalog(tmp_path: Path) -> None:
    settings = settings_for(tmp_path / "data")
    node = ArchiveNode.open(settings)
    try:
        write_tree(tmp_path / "src", 3, small=2)
        ingest_tree(node, tmp_path / "src", parse_ref("lab/full"))
        before = snapshot(node)
        with pytest.raises(InvalidInput, match="no tier named 'nope'"):
            rebuild_catalog(node, "nope")
        with pytest.raises(InvalidInput, match="already holds 1 versions"):
            rebuild_catalog(node, "hot")
        assert snapshot(node) == before
        with node.session() as session:
            assert session.scalar(sa.select(sa.func.count()).select_from(models.Event)) > 0
    finally:
        node.close()


def test_the_cold_tier_alone_rebuilds_the_catalog(tmp_path: Path) -> None:
    """Manifests go to every tier a collection targets, so losing the hot tier and the
    catalog together loses nothing: the cold tier alone gives every version back."""
    settings = settings_for(tmp_path / "data")
    node = ArchiveNode.open(settings)
    try:
        populate(node, tmp_path)
        before = snapshot(node)
        with node.reading() as session:
            copies = session.exec(select(models.ManifestCopy)).all()
    finally:
        node.close()
    cold = tmp_path / "data" / "cold"
    sent = sorted(p.relative_to(cold).as_posix() for p in (cold / "manifests").rglob("*.json"))
    assert sent == sorted(v[3] for v in before["versions"])
    assert sorted(c.key for c in copies) == sent
    shutil.rmtree(tmp_path / "data" / "hot")
    lose_catalog(settings)

    node = ArchiveNode.open(settings)
    try:
        report = rebuild_catalog(node, "cold")
        after = snapshot(node)
    finally:
        node.close()
    assert (report.collections, report.datasets, report.versions) == (2, 3, 6)
    assert report.chain_breaks == [] and report.unreadable == []
    for table in ("datasets", "versions", "entries", "blobs"):
        assert after[table] == before[table], table
    assert after["copies"] == [c for c in before["copies"] if c[0] == "cold"]
    cold_packs = {c[4] for c in after["copies"] if c[4] is not None}
    assert cold_packs and after["members"] == [m for m in before["members"] if m[0] in cold_packs]
