"""A plain S3 bucket at another institution as a partner (``kind = "s3"``, role partner):
its copies are audited by reading them back and hashing, and repaired like any other."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest
from sqlmodel import select

from archive.catalog import models
from archive.catalog.models import ReplicaState
from archive.config import LocalTierConfig, S3TierConfig, Settings
from archive.datasets import parse_ref
from archive.ingest import ingest_tree
from archive.node import ArchiveNode
from archive.worker import Worker
from fixity.audit import AuditOptions, Auditor
from fixity.repair import Repairer
from tests.support.s3server import S3Server

pytestmark = pytest.mark.s3


@pytest.fixture
def node(tmp_path: Path, s3_server: S3Server) -> Iterator[ArchiveNode]:
    bucket = s3_server.make_bucket()
    settings = Settings(
        data_dir=tmp_path / "data",
        tiers={
            "hot": LocalTierConfig(path=tmp_path / "data" / "hot", fsync=False),
            "uni-b": S3TierConfig(role="partner", **s3_server.tier_settings(bucket)),
        },
    )
    opened = ArchiveNode.open(settings)
    yield opened
    opened.close()


def partner_rows(node: ArchiveNode) -> list[models.Replica]:
    with node.session() as session:
        tier_id = node.tier_ids(session=session)["uni-b"]
        return list(session.exec(select(models.Replica).where(models.Replica.tier_id == tier_id)))


def test_an_s3_partner_is_audited_by_reading_back_and_repaired(
    node: ArchiveNode, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(2 * 1024 * 1024)
    (src / "noise.bin").write_bytes(data)
    ingest_tree(node, src, parse_ref("c/d"))
    worker = Worker(node, owner="w")
    worker.plan_once()
    worker.replicate_once()
    [row] = partner_rows(node)
    assert row.state == ReplicaState.PRESENT
    options = AuditOptions(tiers=["uni-b"], due_only=False, manifests=False)
    assert node.settings.audit_policy("uni-b").level == "stored"
    clean = Auditor(node, owner="a").audit_pass(options)
    assert clean.checked == 1 and clean.clean
    with node.session() as session:
        event = session.exec(
            select(models.Event).where(
                models.Event.type == "fixity check", models.Event.object_type == "blob"
            )
        ).one()
    assert event.detail["level"] == "stored" and event.detail["bytes_read"] == len(data)

    node.tiers["uni-b"].delete(row.key)
    found = Auditor(node, owner="a").audit_pass(options)
    assert found.damage_found == 1
    assert partner_rows(node)[0].state == ReplicaState.MISSING
    outcomes = Repairer(node, owner="r").repair_pass()
    assert [(o.tier, o.result) for o in outcomes] == [("uni-b", "repaired")]
    with node.tiers["uni-b"].open(row.key) as f:
        assert blake3.blake3(f.read()).hexdigest() == blake3.blake3(data).hexdigest()
