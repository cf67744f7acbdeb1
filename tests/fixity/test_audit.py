"""Scheduling, leases, unreachable tiers, the CLI and the API of the fixity audits."""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import blake3
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlmodel import col, select

from archive.catalog import models
from archive.catalog.models import ReplicaState, utcnow
from archive.config import AuditPolicy, LocalColdTierConfig, LocalTierConfig, S3TierConfig, Settings
from archive.datasets import parse_ref
from archive.ingest import ingest_tree
from archive.node import ArchiveNode
from archive.packs import blob_key
from archive.worker import Worker
from fixity.audit import AuditOptions, Auditor
from fixity.ratelimit import ByteRate
from fixity.repair import Repairer
from fixity.report import daily_summary, record_daily_summary
from fixity.schedule import claim_due, spread
from fixity.status import audit_status, render_metrics
from tests.fixity.faults import Raw
from tests.support.s3server import new_server, run_seaweedfs
from web.app import create_app

MiB = 1024 * 1024


def _tree(root: Path, seed: int = 1) -> dict[str, bytes]:
    rng = random.Random(seed)
    files = {f"s/{i}.txt": f"{i} {rng.random()}\n".encode() * 20 for i in range(8)}
    files["big/a.bin"] = rng.randbytes(2 * MiB)
    files["big/b.bin"] = rng.randbytes(3 * MiB)
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def test_spread_is_even_over_the_interval() -> None:
    """10,000 copies ingested at once come due evenly: no day of the 90 holds more than
    a fair share (plus jitter), none falls outside the interval."""
    now = utcnow()
    interval = dt.timedelta(days=90)
    times = spread(now, interval, 10_000, random.Random(1))
    assert all(now < t <= now + interval for t in times)
    per_day = [0] * 90
    for t in times:
        per_day[min(89, int((t - now) / dt.timedelta(days=1)))] += 1
    assert max(per_day) <= 10_000 / 90 + 3
    assert min(per_day) >= 10_000 / 90 - 3


def test_rate_limit_sleeps_for_what_was_read_ahead() -> None:
    clock = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock[0] += seconds

    rate = ByteRate(1000, clock=lambda: clock[0], sleep=sleep)
    for _ in range(5):
        rate.spend(1000)
    assert round(sum(slept), 6) == 4.0  # 5,000 bytes at 1,000/s, after one second of burst


def test_workers_auditing_one_tier_share_its_read_budget(tmp_path: Path) -> None:
    """Three workers on one tier: each reads at a third of the tier's rate while the
    others hold leases, and at the whole rate once it audits alone."""
    settings = Settings(
        data_dir=tmp_path / "data",
        tiers={"hot": LocalTierConfig(path=tmp_path / "hot", role="hot")},
        audit={"hot": AuditPolicy(level="stored", deep_every=0, bytes_per_second=900 * MiB)},
        audit_batch=2,
    )
    node = ArchiveNode.open(settings)
    try:
        (tmp_path / "src").mkdir()
        for i in range(6):  # six loose copies: two leased by each worker
            (tmp_path / "src" / f"{i}.bin").write_bytes(random.randbytes(2 * MiB))
        ingest_tree(node, tmp_path / "src", parse_ref("lab/rate"))
        with node.session() as session:
            hot_id = node.tier_ids(session=session)["hot"]
            rows = session.exec(select(models.Replica)).all()
            for r in rows:
                r.next_audit_at = utcnow() - dt.timedelta(seconds=1)
                session.add(r)
        others = [Auditor(node, owner=name) for name in ("w1", "w2")]
        for other in others:  # two workers mid-batch: they hold leases on two copies each
            with node.session() as session:
                claims = claim_due(
                    session=session,
                    owner=other.owner,
                    tier_ids=[hot_id],
                    limit=2,
                    now=utcnow(),
                    lease=other.lease,
                )
            assert len(claims) == 2
        third = Auditor(node, owner="w3")
        report = third.audit_pass(AuditOptions(limit=2))
        assert report.checked == 2 and report.clean
        assert third.rate("hot").rate == 300 * MiB
        with node.session() as session:  # the others finish; their leases end
            for r in session.exec(select(models.Replica)).all():
                if r.lease_owner in ("w1", "w2"):
                    r.lease_owner, r.lease_expires_at = None, None
                    r.next_audit_at = utcnow() - dt.timedelta(seconds=1)
                    session.add(r)
        alone = third.audit_pass(AuditOptions(limit=2))
        assert alone.checked == 2
        assert third.rate("hot").rate == 900 * MiB
    finally:
        node.close()


def test_audits_come_due_and_are_claimed_once(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        tiers={
            "hot": LocalTierConfig(path=tmp_path / "hot", role="hot"),
            "cold": LocalTierConfig(path=tmp_path / "cold", role="cold"),
        },
        audit={"hot": AuditPolicy(interval_days=1, level="stored", deep_every=2)},
    )
    node = ArchiveNode.open(settings)
    try:
        _tree(tmp_path / "src")
        ingest_tree(node, tmp_path / "src", parse_ref("lab/due"))
        Worker(node, loops=["plan", "replicate"]).run_once()
        first = Auditor(node, owner="a").audit_pass()
        assert first.checked == 0  # scheduled over the next day, nothing due yet
        with node.session() as session:
            rows = session.exec(select(models.Replica)).all()
            assert all(r.next_audit_at is not None for r in rows)
            for r in rows:  # a day passes
                r.next_audit_at = utcnow() - dt.timedelta(seconds=1)
                session.add(r)
        a = Auditor(node, owner="a").audit_pass()
        b = Auditor(node, owner="b").audit_pass()
        assert a.checked == len(rows) and b.checked == 0  # each copy audited once
        assert a.clean
        with node.session() as session:
            rows = session.exec(select(models.Replica)).all()
            hot_id = node.tier_ids(session=session)["hot"]
        now = utcnow()
        for r in rows:  # due again within the tier's interval: 1 day hot, 180 days cold
            days = 1 if r.tier_id == hot_id else 180
            assert r.next_audit_at is not None
            assert now + dt.timedelta(days=0.89 * days) < r.next_audit_at
            assert r.next_audit_at <= now + dt.timedelta(days=days)
        assert all(r.audit_count == 1 for r in rows)
        levels = {
            (r.tier_id == hot_id, r.last_audit_level, r.last_read_at is not None) for r in rows
        }
        assert levels == {(True, "stored", True), (False, "light", False)}  # cold: no read
    finally:
        node.close()


def test_an_unreachable_tier_is_not_damage_and_is_retried(tmp_path: Path) -> None:
    """The cold tier's S3 server is stopped: its copies stay present, nothing is marked
    damaged, and once it is back the same copies are audited and found good."""
    server, ports = new_server()
    workdir = tmp_path / "seaweedfs"
    with run_seaweedfs(workdir, server, ports):
        bucket = server.make_bucket()
        settings = Settings(
            data_dir=tmp_path / "data",
            tiers={
                "hot": LocalTierConfig(path=tmp_path / "hot", role="hot"),
                "cold": S3TierConfig(role="cold", **server.tier_settings(bucket)),
            },
            audit={"cold": AuditPolicy(level="stored")},
            retry_base_seconds=0.05,
            retry_max_seconds=0.2,
            cold_pack_below=0,
        )
        node = ArchiveNode.open(settings)
        _tree(tmp_path / "src")
        ingest_tree(node, tmp_path / "src", parse_ref("lab/down"))
        Worker(node, loops=["plan", "replicate"]).run_once()
    try:
        with node.session() as session:
            cold_id = node.tier_ids(session=session)["cold"]
            cold_rows = session.exec(
                select(models.Replica).where(models.Replica.tier_id == cold_id)
            ).all()
        assert cold_rows and all(r.state == ReplicaState.PRESENT for r in cold_rows)

        down = Auditor(node, owner="t").audit_pass(AuditOptions(tiers=["cold"], due_only=False))
        assert down.unreachable >= 1 and down.damage_found == 0 and down.clean
        with node.session() as session:
            after = session.exec(
                select(models.Replica).where(models.Replica.tier_id == cold_id)
            ).all()
            fixity_failures = session.exec(
                select(models.Event).where(
                    models.Event.type == "fixity check", models.Event.outcome == "failure"
                )
            ).all()
        assert all(r.state == ReplicaState.PRESENT for r in after)  # nothing called damaged
        assert [e for e in fixity_failures if e.object_type != "archive"] == []
        assert any(r.next_audit_at is not None and r.failures > 0 for r in after)

        with run_seaweedfs(workdir, server, ports):
            time.sleep(0.3)  # past the backoff
            report = Auditor(node, owner="t").audit_pass(AuditOptions(tiers=["cold"]))
            assert report.unreachable == 0 and report.clean
            assert report.checked == len(cold_rows)  # the same copies, retried
        with node.session() as session:
            done = session.exec(
                select(models.Replica).where(models.Replica.tier_id == cold_id)
            ).all()
        assert all(r.last_read_at is not None and r.failures == 0 for r in done)
    finally:
        node.close()


def _config(path: Path, data: Path, **extra: object) -> dict[str, str]:
    lines = [f'data_dir = "{data}"'] + [f"{k} = {v}" for k, v in extra.items()]
    lines += [
        f'[tiers.hot]\nkind = "local"\nrole = "hot"\npath = "{data / "hot"}"',
        f'[tiers.cold]\nkind = "local"\nrole = "cold"\npath = "{data / "cold"}"',
        '[audit.hot]\nlevel = "deep"\ninterval_days = 1',
        '[audit.cold]\nlevel = "deep"\ninterval_days = 1',
    ]
    path.write_text("\n".join(lines) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERMAFROST_")}
    env["PERMAFROST_CONFIG"] = str(path)
    return env


def _cli(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "archive.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )


def test_an_audit_killed_mid_read_resumes(tmp_path: Path) -> None:
    """SIGKILL while a worker audits a large copy: the copy keeps its state, and once
    the lease runs out another worker audits it."""
    data = tmp_path / "data"
    env = _config(tmp_path / "permafrost.toml", data, lease_seconds=2)
    settings = Settings(
        data_dir=data,
        lease_seconds=2,
        tiers={
            "hot": LocalTierConfig(path=data / "hot", role="hot"),
            "cold": LocalTierConfig(path=data / "cold", role="cold"),
        },
        audit={"hot": AuditPolicy(level="deep"), "cold": AuditPolicy(level="deep")},
    )
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(os.urandom(200 * MiB))
    node = ArchiveNode.open(settings)
    try:
        ingest_tree(node, src, parse_ref("lab/kill"))
        Worker(node, loops=["plan", "replicate"]).run_once()
        with node.session() as session:
            for r in session.exec(select(models.Replica)).all():
                r.next_audit_at = utcnow() - dt.timedelta(seconds=1)
                session.add(r)
        proc = subprocess.Popen(
            [sys.executable, "-m", "archive.cli", "worker", "--loops", "audit"],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def leased() -> bool:
            with node.session() as session:
                return (
                    session.exec(
                        select(models.Replica).where(col(models.Replica.lease_owner).is_not(None))
                    ).first()
                    is not None
                )

        deadline = time.monotonic() + 60
        while not leased():
            assert time.monotonic() < deadline, "the audit never started"
            time.sleep(0.02)
        time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with node.session() as session:
            rows = session.exec(select(models.Replica)).all()
        assert all(r.state == ReplicaState.PRESENT for r in rows)  # nothing half-recorded
        killed = [r.id for r in rows if r.lease_owner is not None and r.audit_count == 0]
        assert killed, "the killed worker finished its audit; make the copy larger"

        Auditor(node, owner="next").audit_pass()  # audits the rest, not the leased copy
        with node.session() as session:
            rows = session.exec(select(models.Replica)).all()
        assert {r.id for r in rows if r.audit_count == 0} == set(killed)
        time.sleep(2.2)  # the dead worker's lease runs out
        resumed = Auditor(node, owner="next").audit_pass()
        assert resumed.checked == len(killed) and resumed.clean
        with node.session() as session:
            rows = session.exec(select(models.Replica)).all()
        assert all(r.audit_count == 1 and r.lease_owner is None for r in rows)
    finally:
        node.close()


def test_cli_audit_run_status_events_and_api(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = _config(tmp_path / "permafrost.toml", data)
    files = _tree(tmp_path / "src")
    assert (
        _cli(env, tmp_path, "ingest", str(tmp_path / "src"), "-C", "lab", "-D", "cli").returncode
        == 0
    )
    assert _cli(env, tmp_path, "worker", "--once", "--loops", "plan,replicate").returncode == 0

    clean = _cli(env, tmp_path, "audit", "run", "--json")
    assert clean.returncode == 0, clean.stderr
    report = json.loads(clean.stdout)
    assert report["clean"] and report["checked"] >= 6  # loose copies and packs, both tiers

    b3 = blake3.blake3(files["big/a.bin"]).hexdigest()
    settings = Settings(
        data_dir=data,
        tiers={
            "hot": LocalTierConfig(path=data / "hot", role="hot"),
            "cold": LocalTierConfig(path=data / "cold", role="cold"),
        },
    )
    node = ArchiveNode.open(settings)
    try:
        hot = Raw(node, "hot", None)
        good = hot.read(blob_key(b3))
        hot.flip_bit(blob_key(b3))
        damaged = _cli(env, tmp_path, "audit", "run", "--tier", "hot", "--json")
        assert damaged.returncode == 1
        found = json.loads(damaged.stdout)
        assert found["damaged_or_missing"] == 1
        assert [(r["object_id"], r["result"]) for r in found["repairs"]] == [(b3, "repaired")]
        assert hot.read(blob_key(b3)) == good

        status = json.loads(_cli(env, tmp_path, "audit", "status", "--json").stdout)
        assert status["tiers"]["hot"]["damaged"] == 0
        assert status["tiers"]["hot"]["overdue"] == 0 and status["proven"]

        history = json.loads(_cli(env, tmp_path, "events", "lab/cli", "--json").stdout)
        mine = [(e["type"], e["outcome"]) for e in history if e["object_id"] == b3]
        assert ("fixity check", "failure") in mine and ("repair", "success") in mine
        assert history[0]["type"] == "message digest calculation"

        # Every copy of one blob damaged: lost, and `permafrost status` exits 1 naming it.
        Raw(node, "hot", None).flip_bit(blob_key(b3))
        Raw(node, "cold", None).flip_bit(blob_key(b3))
        assert _cli(env, tmp_path, "audit", "run").returncode == 1
        status_run = _cli(env, tmp_path, "status")
        assert status_run.returncode == 1
        assert b3 in status_run.stdout and "lab/cli@v1" in status_run.stdout

        guarded = settings.model_copy(update={"api_token": SecretStr("events-reader")})
        with TestClient(create_app(guarded)) as client:
            assert client.get("/api/v1/datasets/lab/cli/events").status_code == 401
            client.headers["Authorization"] = "Bearer events-reader"
            answer = client.get("/api/v1/datasets/lab/cli/events")
            assert answer.status_code == 200
            assert any(e["type"] == "repair" and e["object_id"] == b3 for e in answer.json())
            assert client.get("/api/v1/datasets/lab/nope/events").status_code == 404
            metrics = client.get("/metrics")
            assert metrics.status_code == 200
            assert 'permafrost_audits_total{tier="hot",outcome="failure"}' in metrics.text
            assert 'permafrost_audit_failures{tier="hot"} 1' in metrics.text
    finally:
        node.close()


def test_cold_copies_are_sampled_within_the_restore_budget(tmp_path: Path) -> None:
    """A cold tier gets light audits on schedule; its bytes are read only by sampled
    audits whose restores stay within the budget per interval, least recently read
    first, so successive periods cover every copy, and damage the light audit cannot
    see (a flipped bit keeps the size) is found when the sample reaches it."""
    budget = 4 * MiB
    settings = Settings(
        data_dir=tmp_path / "data",
        tiers={
            "hot": LocalTierConfig(path=tmp_path / "hot", role="hot"),
            "cold": LocalColdTierConfig(path=tmp_path / "cold"),
        },
        audit={"cold": AuditPolicy(interval_days=30, level="light", restore_budget_bytes=budget)},
        retry_base_seconds=0.01,
    )
    node = ArchiveNode.open(settings)
    try:
        files = _tree(tmp_path / "src")
        ingest_tree(node, tmp_path / "src", parse_ref("lab/cold"))
        Worker(node, loops=["plan", "replicate"]).run_once()
        b3 = blake3.blake3(files["big/b.bin"]).hexdigest()
        Raw(node, "cold", None).flip_bit(blob_key(b3))  # 3 MiB, same size: light cannot see

        light = Auditor(node, owner="t").audit_pass(
            AuditOptions(tiers=["cold"], due_only=False, samples=False)
        )
        assert light.clean and light.tiers["cold"].levels == {"light": 3}
        assert light.tiers["cold"].bytes_read == 0

        coverage: list[float] = []
        found = False
        for _period in range(3):
            report = Auditor(node, owner="t").audit_pass(AuditOptions(tiers=["cold"]))
            assert report.tiers["cold"].bytes_read <= budget
            found = found or report.damage_found == 1
            with node.session() as session:
                coverage.append(
                    audit_status(node, session=session)["tiers"]["cold"]["sample_coverage"]
                )
                for r in session.exec(select(models.Replica)).all():  # the period passes
                    if r.last_read_at is not None:
                        r.last_read_at -= dt.timedelta(days=31)
                        session.add(r)
        assert found, "the sampled deep audit never reached the damaged copy"
        assert coverage[0] < 1.0 and coverage[-1] == 1.0
        with node.session() as session:
            cold_id = node.tier_ids(session=session)["cold"]
            bad = session.exec(
                select(models.Replica).where(
                    models.Replica.tier_id == cold_id, models.Replica.blob_b3 == b3
                )
            ).one()
        assert bad.state == ReplicaState.DAMAGED
    finally:
        node.close()


def test_one_daily_summary_per_day(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        tiers={"hot": LocalTierConfig(path=tmp_path / "hot", role="hot")},
    )
    node = ArchiveNode.open(settings)
    try:
        _tree(tmp_path / "src")
        ingest_tree(node, tmp_path / "src", parse_ref("lab/day"))
        report = Auditor(node, owner="t").audit_pass(AuditOptions(due_only=False))
        today = utcnow().date()
        with node.session() as session:
            summary = daily_summary(session, today)
            assert summary["tiers"]["hot"]["checked success"] == report.checked
            assert record_daily_summary(session, today, agent="test")
            assert not record_daily_summary(session, today, agent="test")  # once a day
        Auditor(node, owner="t").audit_pass()  # yesterday's summary, written once
        Auditor(node, owner="t").audit_pass()
        with node.session() as session:
            daily = session.exec(
                select(models.Event).where(col(models.Event.object_id).startswith("day:"))
            ).all()
        assert sorted(e.object_id for e in daily) == sorted(
            [f"day:{today}", f"day:{today - dt.timedelta(days=1)}"]
        )
    finally:
        node.close()


def test_a_folder_tier_that_vanished_is_unreachable_not_missing(tmp_path: Path) -> None:
    """An unmounted disk answers "no such object" for every key: that is the tier, not
    damage to each copy, so nothing is marked missing and nothing is repaired."""
    settings = Settings(
        data_dir=tmp_path / "data",
        tiers={
            "hot": LocalTierConfig(path=tmp_path / "hot", role="hot"),
            "cold": LocalTierConfig(path=tmp_path / "cold", role="cold"),
        },
        audit={"cold": AuditPolicy(level="stored")},
    )
    node = ArchiveNode.open(settings)
    try:
        _tree(tmp_path / "src")
        ingest_tree(node, tmp_path / "src", parse_ref("lab/gone"))
        Worker(node, loops=["plan", "replicate"]).run_once()
        (tmp_path / "cold").rename(tmp_path / "cold-unmounted")
        (tmp_path / "cold").mkdir()
        report = Auditor(node, owner="t").audit_pass(AuditOptions(tiers=["cold"], due_only=False))
        assert report.damage_found == 0 and report.unreachable == 3
        with node.session() as session:
            states = {r.state for r in session.exec(select(models.Replica)).all()}
        assert states == {ReplicaState.PRESENT}
    finally:
        node.close()


def test_a_manifest_lost_from_a_cold_tier_is_found_and_sent_again(tmp_path: Path) -> None:
    """Manifests go to cold tiers too (a cold tier alone can rebuild the catalog); there
    a copy gets the light audit, with no restore, and a lost one is sent again."""
    settings = Settings(
        data_dir=tmp_path / "data",
        tiers={
            "hot": LocalTierConfig(path=tmp_path / "hot", role="hot"),
            "cold": LocalColdTierConfig(path=tmp_path / "cold"),
        },
        retry_base_seconds=0.01,
    )
    node = ArchiveNode.open(settings)
    try:
        _tree(tmp_path / "src")
        ingest_tree(node, tmp_path / "src", parse_ref("lab/cold"))
        assert Worker(node, loops=["manifests"]).run_once() == {"manifests": 1}
        assert Worker(node, loops=["manifests"]).run_once() == {"manifests": 0}
        with node.session() as session:
            version = session.exec(select(models.Version)).one()
        cold = Raw(node, "cold", None)
        sent = cold.read(version.manifest_key)
        assert sent is not None and blake3.blake3(sent).hexdigest() == version.manifest_b3

        options = AuditOptions(tiers=["cold"], due_only=False, samples=False)
        first = Auditor(node, owner="t").audit_pass(options)
        assert first.clean and first.tiers["cold"].bytes_read == 0  # no restore asked
        cold.delete(version.manifest_key)
        found = Auditor(node, owner="t").audit_pass(options)
        assert found.damage_found == 1
        with node.session() as session:
            copy = session.exec(select(models.ManifestCopy)).one()
            metrics = render_metrics(node, session=session)
        assert copy.state == ReplicaState.MISSING
        assert 'permafrost_manifest_copies{copy="elsewhere"} 1' in metrics
        assert 'permafrost_manifest_failures{copy="elsewhere"} 1' in metrics
        assert 'permafrost_manifest_failures{copy="hot"} 0' in metrics

        outcomes = Repairer(node, owner="t").repair_pass()
        assert [(o.object_type, o.result) for o in outcomes] == [("manifest", "repaired")]
        assert cold.read(version.manifest_key) == sent
        assert Auditor(node, owner="t").audit_pass(options).clean
        with node.session() as session:
            assert session.exec(select(models.ManifestCopy)).one().state == ReplicaState.PRESENT
            metrics = render_metrics(node, session=session)
        assert 'permafrost_manifest_failures{copy="elsewhere"} 0' in metrics
    finally:
        node.close()
