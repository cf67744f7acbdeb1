"""Copies at a partner that are not blobs, and what a partner holds for others: manifests
sent to a partner are audited and re-sent by home (fixity.manifest_copies), and the
partner audits what it holds for home itself (fixity.held)."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path
from typing import Any

import blake3
import pytest
import sqlalchemy as sa
from sqlmodel import col, select

from archive.catalog import models
from archive.catalog.migrate import downgrade, upgrade
from archive.catalog.models import EventType, ReplicaState
from archive.packs import blob_key
from archive.worker import Worker
from fixity.audit import AuditOptions, Auditor
from fixity.repair import Repairer
from fixity.status import render_metrics
from tests.archive.conftest import Cli
from tests.federation.conftest import Connect, Pair, PairFactory
from tests.federation.test_two_nodes import FILES, audit, blobs, replicated_pair, state_of


def send_manifests(pair: Pair) -> None:
    assert Worker(pair.engine, owner="w", loops=["manifests"]).run_once() == {"manifests": 1}


def manifest_copy(pair: Pair) -> models.ManifestCopy:
    with pair.engine.session() as session:
        return session.exec(select(models.ManifestCopy)).one()


def version(pair: Pair) -> models.Version:
    with pair.engine.session() as session:
        return session.exec(select(models.Version)).one()


def held_manifest(pair: Pair) -> Path:
    [path] = (pair.partner.hot_path / "partners" / "home" / "manifests").rglob("*.json")
    return path


def audit_manifests_at_partner(pair: Pair) -> Any:
    options = AuditOptions(tiers=["partner"], due_only=False, samples=False)
    return Auditor(pair.engine, owner="auditor").audit_pass(options)


def manifest_events(pair: Pair, event_type: str) -> list[models.Event]:
    with pair.engine.session() as session:
        return list(
            session.exec(
                select(models.Event)
                .where(
                    models.Event.type == event_type,
                    models.Event.object_type == "manifest",
                    models.Event.tier == "partner",
                )
                .order_by(col(models.Event.id))
            )
        )


@pytest.mark.parametrize("encrypt", [False, True], ids=["plain", "sealed"])
@pytest.mark.parametrize("harm", ["deleted", "altered"])
def test_a_manifest_the_partner_lost_or_changed_is_found_and_sent_again(
    make_pair: PairFactory, tmp_path: Path, encrypt: bool, harm: str
) -> None:
    pair = replicated_pair(make_pair(encrypt=encrypt), tmp_path / "src")
    send_manifests(pair)
    v = version(pair)
    row = manifest_copy(pair)
    assert (row.version_id, row.key, row.state) == (v.id, v.manifest_key, ReplicaState.PRESENT)
    with pair.engine.hot.open(v.manifest_key) as f:
        manifest = f.read()
    held = held_manifest(pair)
    original = held.read_bytes()
    assert (original == manifest) is not encrypt

    first = audit_manifests_at_partner(pair)
    assert first.clean and first.tiers["partner"].checked == len(blobs(pair)) + 1
    assert manifest_copy(pair).last_verified_at is not None
    [checked] = manifest_events(pair, EventType.FIXITY_CHECK)
    assert checked.outcome == "success" and checked.detail["bytes_read"] == len(manifest)

    if harm == "deleted":
        held.unlink()
    else:
        held.write_bytes(original[:-40] + bytes(b ^ 1 for b in original[-40:]))
    found = audit_manifests_at_partner(pair)
    assert found.damage_found == 1
    assert found.failures[0]["object_type"] == "manifest"
    expected = ReplicaState.MISSING if harm == "deleted" else ReplicaState.DAMAGED
    assert manifest_copy(pair).state == expected
    assert manifest_events(pair, EventType.FIXITY_CHECK)[-1].outcome == "failure"

    outcomes = Repairer(pair.engine, owner="repairer").repair_pass()
    assert [(o.tier, o.object_type, o.result) for o in outcomes] == [
        ("partner", "manifest", "repaired")
    ]
    assert held.read_bytes() == original  # the same bytes (sealing is deterministic)
    with pair.engine.tiers["partner"].open(v.manifest_key) as f:
        assert f.read() == manifest
    assert manifest_copy(pair).state == ReplicaState.PRESENT
    [repair] = manifest_events(pair, EventType.REPAIR)
    assert repair.outcome == "success" and repair.detail["was"] == expected
    again = audit_manifests_at_partner(pair)
    assert again.clean and again.tiers["partner"].checked == len(blobs(pair)) + 1


def test_a_manifest_copy_is_repaired_even_when_the_hot_copy_is_bad_too(
    make_pair: PairFactory, tmp_path: Path
) -> None:
    """Re-rendered from the catalog (canonical JSON), as the hot tier's own repair does."""
    pair = replicated_pair(make_pair(), tmp_path / "src")
    send_manifests(pair)
    v = version(pair)
    original = held_manifest(pair).read_bytes()
    held_manifest(pair).unlink()
    (pair.home.hot_path / v.manifest_key).write_bytes(b"{}")
    assert audit_manifests_at_partner(pair).damage_found == 1
    outcomes = Repairer(pair.engine, owner="repairer").repair_pass()
    assert ("partner", "manifest", "repaired") in [
        (o.tier, o.object_type, o.result) for o in outcomes
    ]
    assert held_manifest(pair).read_bytes() == original
    assert blake3.blake3(original).hexdigest() == v.manifest_b3


def test_manifest_copies_of_an_unreachable_partner_stay_present(
    make_pair: PairFactory, tmp_path: Path
) -> None:
    pair = replicated_pair(make_pair(), tmp_path / "src")
    send_manifests(pair)
    pair.partner.stop()
    report = audit_manifests_at_partner(pair)
    assert report.unreachable > 0 and report.damage_found == 0
    assert manifest_copy(pair).state == ReplicaState.PRESENT


# -- the partner audits what it holds for home --------------------------------------------
def partner_cli(pair: Pair, cli: Cli) -> Cli:
    """The partner's own ``permafrost`` command, on its catalog and data (its server runs)."""
    settings = pair.partner.settings
    (cli.cwd / "permafrost.toml").write_text(
        f'data_dir = "{settings.data_dir}"\n'
        f'database_url = "{settings.database_url}"\n'
        f'[tiers.hot]\nkind = "local"\npath = "{pair.partner.hot_path}"\n'
    )
    return cli


def held_rows(pair: Pair) -> dict[tuple[str, str], models.HeldObject]:
    with pair.partner.node.session() as session:
        return {(h.kind, h.name): h for h in session.exec(select(models.HeldObject)).all()}


def test_bit_rot_in_what_a_partner_holds_is_found_by_the_partners_own_audit(
    make_pair: PairFactory, tmp_path: Path, cli: Cli, client_of: Connect
) -> None:
    pair = replicated_pair(make_pair(), tmp_path / "src")
    send_manifests(pair)
    partner = partner_cli(pair, cli)
    clean = partner.json("audit", "run")
    assert isinstance(clean, dict) and clean["clean"]
    assert clean["checked"] == len(blobs(pair)) + 1  # every blob and the manifest it holds
    assert all(h.last_verified_at is not None for h in held_rows(pair).values())

    victim = next(b for b in blobs(pair).values() if b.size == len(FILES["noise.bin"]))
    rotten = pair.partner.hot_path / "partners" / "home" / blob_key(victim.stored_b3)
    good = rotten.read_bytes()
    rotten.write_bytes(good[:1000] + bytes([good[1000] ^ 0x10]) + good[1001:])

    found = partner.json("audit", "run", code=1)
    assert isinstance(found, dict) and found["damaged_or_missing"] == 1
    [failure] = found["failures"]
    assert failure["object_type"] == "held blob"
    assert failure["object_id"] == f"home/{victim.stored_b3}"
    assert failure["finding"] == "damaged"
    assert held_rows(pair)[("blob", victim.stored_b3)].state == ReplicaState.DAMAGED
    with pair.partner.node.session() as session:
        [event] = session.exec(
            select(models.Event).where(
                models.Event.type == EventType.FIXITY_CHECK,
                models.Event.outcome == "failure",
                models.Event.object_type != "archive",  # not the pass's summary
            )
        ).all()
    assert (event.object_type, event.object_id, event.tier) == (
        "held blob",
        f"home/{victim.stored_b3}",
        "hot",
    )
    assert event.detail["partner"] == "home" and "blake3" in event.detail["error"]
    status = partner.json("audit", "status")
    assert isinstance(status, dict) and not status["proven"]
    assert status["held_for_partners"]["damaged"] == 1
    assert "1 damaged or missing" in partner("audit", "status").stdout
    with pair.partner.node.reading() as session:
        metrics = render_metrics(pair.partner.node, session=session)
    assert 'permafrost_held_objects{state="damaged"} 1' in metrics
    held = len(held_rows(pair))
    assert f'permafrost_held_objects{{state="all"}} {held}' in metrics

    # Home sends the blob again: what the partner found bad is replaced, not kept.
    client = client_of(pair)
    sha256 = hashlib.sha256(good).digest()
    assert client.put_blob(victim.stored_b3, [good], size=len(good), sha256=sha256)
    assert rotten.read_bytes() == good
    assert held_rows(pair)[("blob", victim.stored_b3)].state == ReplicaState.PRESENT
    again = partner.json("audit", "run")
    assert isinstance(again, dict) and again["clean"]


def test_home_finds_the_same_rot_by_proof_and_its_repair_heals_the_partner(
    make_pair: PairFactory, tmp_path: Path
) -> None:
    pair = replicated_pair(make_pair(), tmp_path / "src")
    victim = next(b for b in blobs(pair).values() if b.size == len(FILES["noise.bin"]))
    rotten = pair.partner.hot_path / "partners" / "home" / blob_key(victim.stored_b3)
    rotten.unlink()
    options = AuditOptions(tiers=["hot"], due_only=False, samples=False)
    partner_audit = Auditor(pair.partner.node, owner="partner-auditor").audit_pass(options)
    assert partner_audit.damage_found == 1
    assert held_rows(pair)[("blob", victim.stored_b3)].state == ReplicaState.MISSING

    assert audit(pair).damage_found == 1
    assert state_of(pair, victim.b3) == ReplicaState.MISSING
    outcomes = Repairer(pair.engine, owner="repairer").repair_pass()
    assert [(o.tier, o.result) for o in outcomes] == [("partner", "repaired")]
    assert blake3.blake3(rotten.read_bytes()).hexdigest() == victim.stored_b3
    assert held_rows(pair)[("blob", victim.stored_b3)].state == ReplicaState.PRESENT
    assert Auditor(pair.partner.node, owner="partner-auditor").audit_pass(options).clean


@pytest.mark.parametrize("harm", ["rotten", "deleted"])
def test_what_the_partner_finds_bad_is_proven_by_homes_next_scheduled_pass(
    make_pair: PairFactory, tmp_path: Path, harm: str
) -> None:
    pair = replicated_pair(make_pair(), tmp_path / "src")
    send_manifests(pair)
    scheduled = AuditOptions(tiers=["partner"], samples=False)  # what is due, as a worker runs
    home = Auditor(pair.engine, owner="home-auditor")
    home.audit_pass(scheduled)  # schedules every copy at the partner over its interval
    later = models.utcnow() + dt.timedelta(days=30)
    with pair.engine.session() as session:  # none due for a month: only a report can move one
        session.execute(sa.update(models.Replica).values(next_audit_at=later))
        session.execute(sa.update(models.ManifestCopy).values(next_audit_at=later))
    assert home.audit_pass(scheduled).checked == 0

    victim = next(b for b in blobs(pair).values() if b.size == len(FILES["noise.bin"]))
    held = pair.partner.hot_path / "partners" / "home" / blob_key(victim.stored_b3)
    good = held.read_bytes()
    if harm == "deleted":
        held.unlink()
    else:
        held.write_bytes(good[:5] + bytes([good[5] ^ 0x01]) + good[6:])
    own = AuditOptions(tiers=["hot"], due_only=False, samples=False)
    assert Auditor(pair.partner.node, owner="partner-auditor").audit_pass(own).damage_found == 1
    found = ReplicaState.MISSING if harm == "deleted" else ReplicaState.DAMAGED
    assert held_rows(pair)[("blob", victim.stored_b3)].state == found

    report = home.audit_pass(scheduled)
    assert (report.checked, report.damage_found) == (1, 1)  # that copy, proven now
    assert state_of(pair, victim.b3) == found
    others = [b3 for b3 in blobs(pair) if b3 != victim.b3]
    assert all(state_of(pair, b3) == ReplicaState.PRESENT for b3 in others)
    outcomes = Repairer(pair.engine, owner="repairer").repair_pass()
    assert [(o.tier, o.result) for o in outcomes] == [("partner", "repaired")]
    assert held.read_bytes() == good
    assert held_rows(pair)[("blob", victim.stored_b3)].state == ReplicaState.PRESENT
    assert home.audit_pass(scheduled).checked == 0  # nothing reported any more


def test_a_partners_report_alone_marks_nothing_bad(make_pair: PairFactory, tmp_path: Path) -> None:
    """A partner that reports a copy it still holds intact gets that copy proven early,
    and the proof, not the report, decides: the copy stays present."""
    pair = replicated_pair(make_pair(), tmp_path / "src")
    scheduled = AuditOptions(tiers=["partner"], samples=False, manifests=False)
    home = Auditor(pair.engine, owner="home-auditor")
    home.audit_pass(scheduled)
    later = models.utcnow() + dt.timedelta(days=30)
    with pair.engine.session() as session:
        session.execute(sa.update(models.Replica).values(next_audit_at=later))
    victim = next(iter(blobs(pair).values()))
    with pair.partner.node.session() as session:  # a false report: the bytes are intact
        session.execute(
            sa.update(models.HeldObject)
            .where(col(models.HeldObject.name) == victim.stored_b3)
            .values(state=ReplicaState.DAMAGED)
        )
    report = home.audit_pass(scheduled)
    assert (report.checked, report.damage_found) == (1, 0)
    assert state_of(pair, victim.b3) == ReplicaState.PRESENT


def test_the_manifest_copies_sent_before_0006_are_known_from_their_events(
    make_pair: PairFactory, tmp_path: Path
) -> None:
    """Upgrading keeps what the manifest loop remembered by replication events."""
    pair = replicated_pair(make_pair(), tmp_path / "src")
    send_manifests(pair)
    url = pair.engine.settings.catalog_url
    with pair.engine.session() as session:
        session.execute(sa.delete(models.ManifestCopy))
    downgrade(url, "0005")
    upgrade(url, "head")
    row = manifest_copy(pair)
    assert (row.key, row.state) == (version(pair).manifest_key, ReplicaState.PRESENT)
    assert Worker(pair.engine, owner="w", loops=["manifests"]).run_once() == {"manifests": 0}
