"""Replication: policies become copies, made by leased workers, proven, and resumed."""

from __future__ import annotations

import datetime as dt
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import blake3
import pytest
from sqlmodel import col, select

from archive.catalog import models
from archive.catalog.models import ReplicaState
from archive.config import LocalTierConfig, S3TierConfig, Settings
from archive.datasets import get_dataset, get_version, parse_ref
from archive.errors import ConfigError
from archive.ingest import ingest_tree
from archive.node import ArchiveNode
from archive.packs import blob_key
from archive.policy import ReplicationPolicy, TierInfo, target_tiers
from archive.replication import drop_copies, extra_copies, plan
from archive.status import archive_status, version_status
from archive.worker import Worker
from tests.support.s3server import new_server, run_seaweedfs

MiB = 1024 * 1024


def make_tree(root: Path, small: int = 30, seed: int = 3) -> dict[str, bytes]:
    rng = random.Random(seed)
    files = {
        f"small/{i:03}.txt": f"record {i} {rng.random()}\n".encode() * 20 for i in range(small)
    }
    files["big/random.bin"] = rng.randbytes(3 * MiB)
    files["big/text.csv"] = b"".join(f"{i},{i * i}\n".encode() for i in range(400_000))
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def states(node: ArchiveNode) -> dict[tuple[str, str], int]:
    with node.session() as session:
        rows = session.exec(
            select(models.Tier.name, models.Replica.state).join(
                models.Tier, col(models.Tier.id) == col(models.Replica.tier_id)
            )
        ).all()
    counts: dict[tuple[str, str], int] = {}
    for row in rows:
        counts[(row[0], row[1])] = counts.get((row[0], row[1]), 0) + 1
    return counts


def test_policy_copies_are_made_proven_and_readable(node: ArchiveNode, tmp_path: Path) -> None:
    files = make_tree(tmp_path / "src")
    ingest_tree(node, tmp_path / "src", parse_ref("lab/rep"))
    with node.session() as session:
        version = get_version(get_dataset("lab", "rep", session=session), None, session=session)
        before = version_status(node, version, session=session)
    assert before.summary() == "hot 1/1, cold 0/1: copying"
    assert not before.preserved

    counts = Worker(node).run_once()
    assert counts["replicate"] == len(set(files.values()))
    with node.session() as session:
        version = get_version(get_dataset("lab", "rep", session=session), None, session=session)
        after = version_status(node, version, session=session)
        overall = archive_status(node, session=session)
    assert after.summary() == "hot 1/1, cold 1/1: preserved"
    assert overall["queue"]["depth"] == 0
    assert overall["datasets"]["preserved"] == 1

    cold = node.tiers["cold"]
    keys = [info.key for info in cold.list("")]
    # Large blobs are loose, the small ones travel in one tar pack with its index.
    big = blake3.blake3(files["big/random.bin"]).hexdigest()
    assert blob_key(big) in keys
    assert len([k for k in keys if k.endswith(".tar")]) == 1
    assert len([k for k in keys if k.startswith("blobs/")]) == 2
    # The cold copies are byte-identical stored blobs: read them back from cold only.
    with node.hot.open(blob_key(big)) as hot_bytes, cold.open(blob_key(big)) as cold_bytes:
        assert hot_bytes.read() == cold_bytes.read()
    # A second pass finds nothing to do (idempotent), and no replica is duplicated.
    assert Worker(node).run_once()["replicate"] == 0
    assert states(node) == {
        ("hot", "present"): 3,  # two loose blobs and one pack
        ("cold", "present"): 3,
    }


def test_content_named_twice_is_planned_once_per_tier(node: ArchiveNode, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "b").mkdir(parents=True)
    for rel in ("a.txt", "b/same.txt", "b/again.txt"):
        (src / rel).write_bytes(b"one content under three names\n" * 50)
    (src / "other.txt").write_bytes(b"another content\n")
    ingest_tree(node, src, parse_ref("lab/twice"))
    with node.session() as session:
        pending = session.exec(
            select(models.Replica.blob_b3).where(models.Replica.state == ReplicaState.PENDING)
        ).all()
        # Planning again adds nothing: every blob already has its row.
        assert plan(node, session=session, collection="lab") == 0
    assert sorted(pending) == sorted(
        {blake3.blake3(p.read_bytes()).hexdigest() for p in src.rglob("*.txt")}
    )


def test_a_damaged_source_never_becomes_a_copy(local_db_node: ArchiveNode, tmp_path: Path) -> None:
    node = local_db_node
    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(2 * MiB)
    (src / "only.bin").write_bytes(data)
    ingest_tree(node, src, parse_ref("lab/dmg"))
    b3 = blake3.blake3(data).hexdigest()
    path = Path(node.settings.tiers["hot"].path) / blob_key(b3)  # type: ignore[union-attr]
    path.chmod(0o644)
    damaged = bytearray(path.read_bytes())
    damaged[100] ^= 1
    path.write_bytes(bytes(damaged))

    Worker(node).run_once()
    assert list(node.tiers["cold"].list("blobs/")) == []  # the manifest went; the blob did not
    with node.session() as session:
        replica = session.exec(
            select(models.Replica).where(models.Replica.blob_b3 == b3, models.Replica.tier_id == 2)
        ).one()
        assert replica.state == ReplicaState.PENDING
        assert replica.failures == 1
        failure = session.exec(
            select(models.Event).where(
                models.Event.type == "replication", models.Event.outcome == "failure"
            )
        ).one()
        assert "no readable source" in failure.detail["error"]


def test_two_workers_on_sqlite_never_claim_the_same_row(
    local_node: ArchiveNode, tmp_path: Path
) -> None:
    node = local_node
    src = tmp_path / "src"
    for i in range(300):
        (src / f"d{i % 7}").mkdir(parents=True, exist_ok=True)
        (src / f"d{i % 7}" / f"{i}.bin").write_bytes(os.urandom(64) + bytes([i % 256]) * 2048)
    ingest_tree(node, src, parse_ref("lab/many"))
    claimed: dict[str, list[int]] = {}
    barrier = threading.Barrier(4)

    def claimer(name: str) -> None:
        worker = Worker(node, owner=name)
        mine: list[int] = []
        barrier.wait()
        for _ in range(40):
            mine += [row[0] for row in worker._claim(small=True, limit=7)]
        claimed[name] = mine

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [rid for ids in claimed.values() for rid in ids]
    assert len(every) == 300  # all rows were claimed ...
    assert len(set(every)) == len(every)  # ... and none twice


def test_a_tier_that_goes_down_is_retried_and_completes(
    tmp_path: Path, database_url: str | None
) -> None:
    """The cold tier's S3 server stops mid-replication and comes back: no copy is lost,
    nothing is marked present that is not, and the hot tier is not held up."""
    server, ports = new_server()
    workdir = tmp_path / "seaweedfs"
    with run_seaweedfs(workdir, server, ports):
        bucket = server.make_bucket()
    settings = Settings(
        data_dir=tmp_path / "data",
        tiers={
            "hot": LocalTierConfig(path=tmp_path / "data/hot", role="hot"),
            "cold": S3TierConfig(role="cold", **server.tier_settings(bucket)),
        },
        database_url=database_url,
        retry_base_seconds=0.05,
        retry_max_seconds=0.2,
        cold_pack_below=0,
    )
    node = ArchiveNode.open(settings)
    try:
        files = make_tree(tmp_path / "src", small=5)
        ingest_tree(node, tmp_path / "src", parse_ref("lab/down"))
        worker = Worker(node)
        worker.run_once()  # the S3 server is down: every copy fails and is retried later
        assert states(node).get(("cold", "present"), 0) == 0
        assert states(node)[("cold", "pending")] == len(set(files.values()))
        with node.session() as session:
            failed = session.exec(
                select(models.Event).where(models.Event.outcome == "failure")
            ).all()
        assert failed and all(e.tier == "cold" for e in failed)

        with run_seaweedfs(workdir, server, ports):
            for _ in range(100):
                worker.run_once()
                if states(node).get(("cold", "present"), 0) == len(set(files.values())):
                    break
                threading.Event().wait(0.1)
            assert states(node) == {("hot", "present"): 3, ("cold", "present"): 7}
            client = server.client()
            listed = client.list_objects_v2(Bucket=bucket, Prefix="blobs/")["Contents"]
            client.close()
            assert len(listed) == 7
    finally:
        node.close()


def _config(path: Path, data: Path, database_url: str | None, **extra: object) -> dict[str, str]:
    """A permafrost.toml for worker processes, and an environment naming it."""
    lines = [f'data_dir = "{data}"']
    if database_url:
        lines.append(f'database_url = "{database_url}"')
    lines += [f"{k} = {v}" for k, v in extra.items()]
    lines += [
        '[tiers.hot]\nkind = "local"\nrole = "hot"\npath = "' + str(data / "hot") + '"',
        '[tiers.cold]\nkind = "local"\nrole = "cold"\npath = "' + str(data / "cold") + '"',
    ]
    path.write_text("\n".join(lines) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERMAFROST_")}
    env["PERMAFROST_CONFIG"] = str(path)
    return env


def _start_worker(env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "archive.cli", "worker"],
        env=env,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _wait(predicate: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _partly_staged(staging: Path, size: int) -> bool:
    try:
        return any(0 < entry.stat().st_size < size for entry in staging.iterdir())
    except FileNotFoundError:  # no staging folder yet, or a file promoted meanwhile
        return False


@pytest.mark.parametrize(
    "database", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_worker_killed_mid_copy_loses_nothing(
    tmp_path: Path, database: str, request: pytest.FixtureRequest
) -> None:
    """SIGKILL while a large copy streams: nothing partial is ever present; after the
    lease expires another worker finishes the copy."""
    data = tmp_path / "data"
    database_url = (
        request.getfixturevalue("postgres_schema_url") if database == "postgres" else None
    )
    env = _config(tmp_path / "permafrost.toml", data, database_url, lease_seconds=2)
    settings = Settings(
        data_dir=data,
        database_url=database_url,
        lease_seconds=2,
        tiers={
            "hot": LocalTierConfig(path=data / "hot", role="hot"),
            "cold": LocalTierConfig(path=data / "cold", role="cold"),
        },
    )
    src = tmp_path / "src"
    src.mkdir()
    big = os.urandom(160 * MiB)
    (src / "big.bin").write_bytes(big)
    node = ArchiveNode.open(settings)
    try:
        ingest_tree(node, src, parse_ref("lab/kill"))
        b3 = blake3.blake3(big).hexdigest()
        proc = _start_worker(env, tmp_path)
        _wait(lambda: states(node).get(("cold", "copying"), 0) == 1, 60, "the copy to start")
        # Killed as soon as part of the blob is staged, not after a fixed delay: a fast
        # disk copies 160 MiB in well under a second, and the copy must be under way.
        staging = data / "cold" / ".staging"
        deadline = time.monotonic() + 60
        while not _partly_staged(staging, len(big)):
            assert time.monotonic() < deadline, "the copy never staged a byte"
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert ("cold", "present") not in states(node)
        cold = node.tiers["cold"]
        if cold.exists(blob_key(b3)):  # promoted just before the kill: it must be whole
            with cold.open(blob_key(b3)) as stored:
                assert blake3.blake3(stored.read()).hexdigest() == b3
        time.sleep(2.5)  # the dead worker's lease expires
        Worker(node).run_once()
        assert states(node)[("cold", "present")] == 1
        with cold.open(blob_key(b3)) as stored:
            assert stored.read() == big
    finally:
        node.close()


@pytest.mark.postgres
@pytest.mark.slow
def test_four_workers_on_postgres_copy_each_blob_once(
    postgres_schema_url: str, tmp_path: Path
) -> None:
    """4 worker processes, one PostgreSQL catalog, 5,000 blobs, one worker SIGKILLed."""
    data = tmp_path / "data"
    env = _config(
        tmp_path / "permafrost.toml",
        data,
        postgres_schema_url,
        lease_seconds=3,
        cold_pack_below=0,
        worker_poll_seconds=0.2,
    )
    src = tmp_path / "src"
    for i in range(5000):
        (src / f"d{i % 50}").mkdir(parents=True, exist_ok=True)
        (src / f"d{i % 50}" / f"{i}.dat").write_bytes(f"blob number {i}\n".encode() * 8)
    settings = Settings(
        data_dir=data,
        database_url=postgres_schema_url,
        tiers={
            "hot": LocalTierConfig(path=data / "hot", role="hot"),
            "cold": LocalTierConfig(path=data / "cold", role="cold"),
        },
    )
    node = ArchiveNode.open(settings)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        ingest_tree(node, src, parse_ref("lab/scale"))
        procs = [_start_worker(env, tmp_path) for _ in range(4)]
        _wait(lambda: states(node).get(("cold", "present"), 0) >= 800, 240, "some copies")
        procs[0].send_signal(signal.SIGKILL)
        _wait(lambda: states(node).get(("cold", "present"), 0) == 5000, 600, "every copy")
        for proc in procs[1:]:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=60)
        cold_objects = [info.key for info in node.tiers["cold"].list("blobs/")]
        assert len(cold_objects) == len(set(cold_objects)) == 5000
        with node.session() as session:
            events = session.exec(
                select(models.Event.object_id).where(
                    models.Event.type == "replication",
                    models.Event.object_type == "blob",
                    models.Event.outcome == "success",
                )
            ).all()
            replicas = session.exec(select(models.Replica).where(models.Replica.tier_id == 2)).all()
        assert sorted(events) == sorted({e for e in events})  # one success per blob
        assert len(events) == 5000
        assert len(replicas) == 5000
        assert {r.state for r in replicas} == {ReplicaState.PRESENT}
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        node.close()


def test_target_tiers_follow_roles_names_and_regions() -> None:
    tiers = [
        TierInfo("hot", "hot", "eu"),
        TierInfo("c1", "cold", "eu"),
        TierInfo("c2", "cold", "eu"),
        TierInfo("c3", "cold", "us"),
        TierInfo("p1", "partner", "us"),
    ]
    assert target_tiers(ReplicationPolicy(), tiers) == ["hot", "c1"]
    spread = ReplicationPolicy(copies={"hot": 1, "cold": 2}, distinct_regions=True)
    assert target_tiers(spread, tiers) == ["hot", "c1", "c3"]
    named = ReplicationPolicy(copies={"hot": 1, "cold": 1}, tiers=["c2", "p1"])
    assert target_tiers(named, tiers) == ["c2", "p1", "hot"]
    with pytest.raises(ConfigError, match="only 1 partner"):
        target_tiers(ReplicationPolicy(copies={"partner": 2}), tiers)
    with pytest.raises(ConfigError, match="not configured"):
        target_tiers(ReplicationPolicy(tiers=["nowhere"]), tiers)


def test_policy_change_adds_copies_and_drops_only_when_asked(
    tmp_path: Path, database_url: str | None
) -> None:
    data = tmp_path / "data"
    node = ArchiveNode.open(
        Settings(
            data_dir=data,
            database_url=database_url,
            tiers={
                "hot": LocalTierConfig(path=data / "hot", role="hot"),
                "cold": LocalTierConfig(path=data / "cold", role="cold"),
                "vault": LocalTierConfig(path=data / "vault", role="cold", region="elsewhere"),
            },
        )
    )
    try:
        files = make_tree(tmp_path / "src", small=3)
        ingest_tree(node, tmp_path / "src", parse_ref("lab/move"))
        Worker(node).run_once()
        assert states(node)[("cold", "present")] == 3  # two loose blobs and a pack
        with node.session() as session:
            coll = session.exec(select(models.Collection)).one()
            coll.policy = {"copies": {"hot": 1, "cold": 0}, "tiers": ["vault"]}
            session.add(coll)
            session.flush()
            assert plan(node, session=session) == len(set(files.values()))
        Worker(node).run_once()
        assert states(node)[("vault", "present")] == 3
        assert states(node)[("cold", "present")] == 3  # kept: nothing dropped silently
        with node.session() as session:
            extra = extra_copies(node, session=session)
            assert {(c.tier, c.key.split("/")[0]) for c in extra} == {
                ("cold", "blobs"),
                ("cold", "packs"),
            }
            assert len(extra) == 3  # the two loose blobs and the pack of the 3 small files
            assert [c.members for c in extra if c.pack_id] == [3]
            assert drop_copies(node, extra, session=session) == 3
        assert [i.key for i in node.tiers["cold"].list("blobs/")] == []
        assert [i.key for i in node.tiers["cold"].list("packs/")] == []  # pack and index
        assert states(node).get(("cold", "present"), 0) == 0
        assert states(node)[("vault", "present")] == 3
        with node.session() as session:
            deletions = session.exec(
                select(models.Event).where(models.Event.type == "deletion")
            ).all()
            assert sorted(e.object_type for e in deletions) == ["blob", "blob", "pack"]
    finally:
        node.close()


def test_a_pack_still_holding_a_wanted_blob_is_kept(
    local_db_node: ArchiveNode, tmp_path: Path
) -> None:
    node = local_db_node
    make_tree(tmp_path / "a", small=2, seed=1)
    make_tree(tmp_path / "b", small=2, seed=2)
    ingest_tree(node, tmp_path / "a", parse_ref("lab/a"))
    ingest_tree(node, tmp_path / "b", parse_ref("other/b"))
    Worker(node).run_once()
    cold_packs = [i.key for i in node.tiers["cold"].list("packs/") if i.key.endswith(".tar")]
    assert len(cold_packs) == 1  # the small blobs of both collections, packed together

    def drop_cold(collection: str) -> list[tuple[str, str | None]]:
        with node.session() as session:
            coll = session.exec(
                select(models.Collection).where(models.Collection.name == collection)
            ).one()
            coll.policy = {"copies": {"hot": 1, "cold": 0}}
            session.add(coll)
            session.flush()
            return [(c.key, c.pack_id) for c in extra_copies(node, session=session)]

    loose_only = drop_cold("other")
    assert all(pack is None for _, pack in loose_only)  # lab/a still wants the pack
    assert len(loose_only) == 1  # other/b's random.bin (text.csv is in lab/a too)
    both = drop_cold("lab")
    assert [key for key, pack in both if pack is not None] == cold_packs


def test_planning_costs_what_is_new(local_db_node: ArchiveNode, tmp_path: Path) -> None:
    """An ingest queues its own version's copies; the worker's plan looks at versions
    created since its last pass, and at everything when it starts or its full-sweep
    interval has passed."""
    node = local_db_node
    make_tree(tmp_path / "v1", small=3, seed=1)
    make_tree(tmp_path / "v2", small=3, seed=2)
    first = ingest_tree(node, tmp_path / "v1", parse_ref("lab/a"))
    assert states(node) == {("hot", "present"): 3, ("cold", "pending"): 5}  # 3 loose, 1 pack

    def forget_pending() -> None:  # as if the planner had not seen these versions
        with node.session() as session:
            for row in session.exec(
                select(models.Replica).where(models.Replica.state == ReplicaState.PENDING)
            ):
                session.delete(row)

    def age_versions() -> None:  # created long before the worker's last pass
        with node.session() as session:
            for version in session.exec(select(models.Version)):
                version.created_at = version.created_at - dt.timedelta(days=1)
                session.add(version)

    forget_pending()
    worker = Worker(node, loops=["plan"])
    assert worker.plan_once() == 5  # its first pass looks at everything
    forget_pending()
    age_versions()
    assert worker.plan_once() == 0  # later passes: only what is new
    second = ingest_tree(node, tmp_path / "v2", parse_ref("lab/b"))
    with node.session() as session:  # the ingest planned only its own version
        planned = session.exec(
            select(models.Replica).where(models.Replica.state == ReplicaState.PENDING)
        ).all()
    assert {r.blob_b3 for r in planned if r.blob_b3} == set(
        version_blobs(node, "b", second.version)
    )
    forget_pending()
    assert worker.plan_once() == 5  # lab/b is new to the worker: queued again
    node.settings.plan_full_every_seconds = 1e-6
    old, new = set(version_blobs(node, "a", first.version)), set(version_blobs(node, "b", 1))
    assert worker.plan_once() == len(old - new) > 0  # the full sweep finds lab/a's too
    with node.session() as session:
        pending = session.exec(
            select(models.Replica.blob_b3).where(models.Replica.state == ReplicaState.PENDING)
        ).all()
    assert sorted(pending) == sorted(old | new)


def version_blobs(node: ArchiveNode, dataset: str, number: int) -> list[str]:
    E, V, D = models.Entry, models.Version, models.Dataset
    with node.session() as session:
        return list(
            session.exec(
                select(E.blob_b3)
                .join(V, col(V.id) == col(E.version_id))
                .join(D, col(D.id) == col(V.dataset_id))
                .where(D.name == dataset, V.number == number)
            )
        )
