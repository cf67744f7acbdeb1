"""permafrost gc: what crashes leave behind goes, and nothing the catalog names."""

from __future__ import annotations

import datetime as dt
import io
import os
import random
from pathlib import Path

import blake3
import pytest
import sqlalchemy as sa
from sqlmodel import col, select

from archive.catalog import models
from archive.config import Settings
from archive.datasets import parse_ref
from archive.encoding import Encoder
from archive.errors import ConfigError
from archive.gc import collect_garbage
from archive.ingest import ingest_tree
from archive.node import ArchiveNode
from archive.packs import PackWriter, blob_key
from archive.verify import verify_version
from tests.archive.conftest import Cli, NodeFactory
from tiers.local import LocalTier
from tiers.s3 import S3Tier

NOW = dt.timedelta(0)  # grace 0: everything written before the call counts as old


def tree(root: Path, seed: int) -> dict[str, bytes]:
    rng = random.Random(seed)
    files = {f"s/{i}.txt": f"{seed} {i} {rng.random()}\n".encode() * 30 for i in range(5)}
    files["big.bin"] = rng.randbytes(1536 * 1024)
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def crash_leftovers(node: ArchiveNode) -> set[str]:
    """Bytes an ingest killed at the wrong moment leaves in the hot tier; their keys."""
    hot = node.hot
    if isinstance(hot, S3Tier):  # killed mid-write: a multipart upload never completed
        started = hot.client.create_multipart_upload(
            Bucket=hot.bucket, Key=f"{hot.staging_prefix}crashed"
        )
        hot.client.upload_part(
            Bucket=hot.bucket,
            Key=f"{hot.staging_prefix}crashed",
            UploadId=started["UploadId"],
            PartNumber=1,
            Body=os.urandom(4096),
        )
    else:  # killed mid-write: a staging file never promoted
        assert isinstance(hot, LocalTier)
        (hot.staging / "upload-crashed").write_bytes(os.urandom(4096))
    writer = PackWriter(hot)  # killed between promoting a pack and recording it
    encoder = Encoder(3, threads=0)
    for i in range(3):
        digest, stored = encoder.encode_bytes(b"orphan member %d\n" % i * 50)
        writer.add(digest, stored)
    pack = writer.seal()
    assert pack is not None
    data = os.urandom(3000)  # killed between promoting a loose blob and recording it
    b3 = blake3.blake3(data).hexdigest()
    hot.put(blob_key(b3), io.BytesIO(data), expect_b3=b3)
    manifest = "manifests/lab/ghost/v1.json"  # killed between manifest write and commit
    hot.put(manifest, io.BytesIO(b'{"format":"permafrost-manifest/1"}'))
    return {f"packs/{pack.id}.tar", f"packs/{pack.id}.json", blob_key(b3), manifest}


def all_keys(node: ArchiveNode) -> dict[str, set[str]]:
    return {name: {i.key for i in tier.list("")} for name, tier in node.tiers.items()}


def test_gc_removes_crash_leftovers_and_keeps_every_named_object(
    make_node: NodeFactory, tmp_path: Path
) -> None:
    node = make_node()
    files = tree(tmp_path / "src", 1)
    ingest_tree(node, tmp_path / "src", parse_ref("lab/kept"))
    tree(tmp_path / "src", 2)
    ingest_tree(node, tmp_path / "src", parse_ref("lab/kept"))
    before = all_keys(node)
    leftovers = crash_leftovers(node)
    assert leftovers <= all_keys(node)["hot"]

    dry = collect_garbage(node, grace=NOW, dry_run=True)
    assert {r.split(":", 1)[1] for r in dry.removed} == leftovers
    assert all_keys(node)["hot"] >= leftovers  # a dry run deletes nothing

    report = collect_garbage(node, grace=NOW)
    assert {r.split(":", 1)[1] for r in report.removed} == leftovers
    assert report.staging["hot"] >= 1  # the abandoned staged write
    assert report.kept_unrecorded == []
    assert all_keys(node) == before  # exactly the named objects remain
    with node.session() as session:
        versions = session.exec(select(models.Version)).all()
        assert len(versions) == 2
        for v in versions:
            checked = verify_version(v, session=session, tiers=node.tiers)
            assert checked.failures == [] and checked.copies >= checked.blobs > 0
        gc_events = select(models.Event).where(models.Event.agent == "permafrost/gc")
        assert session.exec(gc_events).one().detail["removed"] == 4
    assert files


def test_young_leftovers_are_left_alone(tmp_path: Path) -> None:
    node = ArchiveNode.open(Settings(data_dir=tmp_path / "data"))
    try:
        tree(tmp_path / "src", 3)
        ingest_tree(node, tmp_path / "src", parse_ref("lab/young"))
        leftovers = crash_leftovers(node)
        report = collect_garbage(node)  # default grace: 24 hours
        assert report.removed == [] and report.staging == {"hot": 0, "cold": 0}
        assert leftovers <= all_keys(node)["hot"]
        staged = list((tmp_path / "data/tiers/hot/.staging").iterdir())
        old = (dt.datetime.now() - dt.timedelta(days=2)).timestamp()
        for path in [*staged, tmp_path / "data/tiers/hot" / sorted(leftovers)[0]]:
            os.utime(path, (old, old))
        report = collect_garbage(node)
        assert len(report.removed) == 1 and report.staging["hot"] == len(staged)
    finally:
        node.close()


def test_a_blob_the_catalog_names_is_kept_even_without_a_copy_row(tmp_path: Path) -> None:
    node = ArchiveNode.open(Settings(data_dir=tmp_path / "data"))
    try:
        tree(tmp_path / "src", 4)
        ingest_tree(node, tmp_path / "src", parse_ref("lab/named"))
        with node.session() as session:
            big = session.exec(select(models.Blob).where(models.Blob.size == 1536 * 1024)).one()
            session.execute(sa.delete(models.Replica).where(col(models.Replica.blob_b3) == big.b3))
        report = collect_garbage(node, grace=NOW)
        assert report.removed == []
        assert report.kept_unrecorded == [f"hot:{blob_key(big.b3)}"]
        assert node.hot.exists(blob_key(big.b3))
    finally:
        node.close()


def test_gc_with_the_wrong_catalog_deletes_nothing(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    node = ArchiveNode.open(settings)
    try:
        tree(tmp_path / "src", 5)
        ingest_tree(node, tmp_path / "src", parse_ref("lab/precious"))
        before = all_keys(node)
    finally:
        node.close()
    other = settings.model_copy(update={"database_url": f"sqlite:///{tmp_path / 'empty.db'}"})
    node = ArchiveNode.open(other)
    try:
        with pytest.raises(ConfigError, match="catalog rebuild"):
            collect_garbage(node, grace=NOW)
        assert all_keys(node) == before
    finally:
        node.close()


def test_gc_from_the_cli(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERMAFROST_")}
    (tmp_path / "work").mkdir()
    cli = Cli(tmp_path / "work", env)
    tree(tmp_path / "src", 6)
    cli("ingest", str(tmp_path / "src"), "--collection", "lab", "--dataset", "d")
    hot = tmp_path / "work/permafrost-data/tiers/hot"
    stray = hot / ".staging" / "upload-crashed"
    stray.write_bytes(b"half a blob")
    report = cli.json("gc", "--grace-hours", "0")
    assert report["staging"]["hot"] == 1 and report["removed"] == []
    assert not stray.exists()
    cli("verify", "lab/d")
