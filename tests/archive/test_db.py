"""Engines and sessions behave as the archive relies on, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlmodel import Session, func, select

from archive.blobstore import GroupRecorder
from archive.catalog.db import make_engine, read_scope, session_scope
from archive.catalog.models import (
    Blob,
    Collection,
    Dataset,
    Entry,
    Event,
    Pack,
    Replica,
    Tier,
    Version,
)
from archive.encoding import BlobDigest
from archive.paths import MAX_PATH_BYTES, normalize_path

B3 = "b3" * 32
PACK_ID = "9a" * 32


def _count(engine: sa.Engine, model: type[Collection] | type[Replica]) -> int:
    with Session(engine) as session:
        return session.exec(select(func.count()).select_from(model)).one()


def _blob_pack_and_tier(engine: sa.Engine) -> int:
    """A blob, a pack and a tier to hang replicas on; returns the tier's id."""
    with session_scope(engine) as session:
        session.add(Blob(b3=B3, sha256="5" * 64, size=1, stored_size=1, stored_b3=B3, codec="raw"))
        session.add(Pack(id=PACK_ID, size=10, member_count=1))
        tier = Tier(name="hot", kind="local", role="hot")
        session.add(tier)
        session.flush()
        assert tier.id is not None
        return tier.id


def test_sqlite_engine_settings(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/catalog.db")
    try:
        with engine.connect() as connection:
            pragma = {
                name: connection.exec_driver_sql(f"PRAGMA {name}").scalar()
                for name in ("journal_mode", "foreign_keys", "synchronous", "busy_timeout")
            }
    finally:
        engine.dispose()
    assert pragma == {
        "journal_mode": "wal",
        "foreign_keys": 1,
        "synchronous": 2,
        "busy_timeout": 60000,
    }


def test_sqlite_engine_creates_the_parent_folder(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/new/folder/catalog.db")
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql("CREATE TABLE t (x INTEGER)")
    finally:
        engine.dispose()


def test_sqlite_engines_opening_a_new_file_together_all_connect(tmp_path: Path) -> None:
    """Processes starting together on a fresh data folder all switch the file to WAL."""
    errors: list[BaseException] = []
    for attempt in range(30):
        url = f"sqlite:///{tmp_path}/{attempt}/catalog.db"
        barrier = threading.Barrier(6)

        def connect(url: str = url, barrier: threading.Barrier = barrier) -> None:
            engine = make_engine(url)
            try:
                barrier.wait()
                with engine.connect() as connection:
                    connection.exec_driver_sql("SELECT 1")
            except BaseException as exc:
                errors.append(exc)
            finally:
                engine.dispose()

        threads = [threading.Thread(target=connect) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []


def test_a_dangling_foreign_key_is_refused(catalog_engine: sa.Engine) -> None:
    with pytest.raises(sa.exc.IntegrityError), session_scope(catalog_engine) as session:
        session.add(Entry(version_id=12345, path="data/a.txt", blob_b3=B3))


@pytest.mark.parametrize(
    "written",
    [
        dt.datetime(2024, 2, 29, 23, 30, 1, 123456, tzinfo=dt.UTC),
        dt.datetime(2024, 3, 1, 1, 30, 1, 123456, tzinfo=dt.timezone(dt.timedelta(hours=2))),
    ],
    ids=["utc", "utc+2"],
)
def test_times_round_trip_as_aware_utc(catalog_engine: sa.Engine, written: dt.datetime) -> None:
    with session_scope(catalog_engine) as session:
        session.add(Collection(name="c", created_at=written))

    with Session(catalog_engine) as session:
        read = session.exec(select(Collection.created_at)).one()
        found = session.exec(select(Collection).where(Collection.created_at == written)).all()
    assert read == written
    assert read.tzinfo == dt.UTC
    assert len(found) == 1


def test_a_naive_time_is_refused(catalog_engine: sa.Engine) -> None:
    with (
        pytest.raises(sa.exc.StatementError, match="naive datetime") as raised,
        session_scope(catalog_engine) as session,
    ):
        session.add(Collection(name="c", created_at=dt.datetime(2024, 1, 1)))
    assert isinstance(raised.value.orig, ValueError)
    assert _count(catalog_engine, Collection) == 0


def test_session_scope_commits_on_success(catalog_engine: sa.Engine) -> None:
    with session_scope(catalog_engine) as session:
        session.add(Collection(name="kept"))
    assert _count(catalog_engine, Collection) == 1


def test_session_scope_rolls_back_on_error(catalog_engine: sa.Engine) -> None:
    def add_then_fail() -> None:
        with session_scope(catalog_engine) as session:
            session.add(Collection(name="dropped"))
            session.flush()
            raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        add_then_fail()
    assert _count(catalog_engine, Collection) == 0


def test_a_read_session_never_waits_for_a_writer(catalog_engine: sa.Engine) -> None:
    """While a write transaction is open, a read session sees the last commit at once
    (on SQLite it begins with a plain BEGIN, not BEGIN IMMEDIATE)."""
    seen: list[list[str]] = []
    with session_scope(catalog_engine) as writer:
        writer.add(Collection(name="uncommitted"))
        writer.flush()

        def read() -> None:
            with read_scope(catalog_engine) as session:
                seen.append(list(session.exec(select(Collection.name))))

        reader = threading.Thread(target=read)
        reader.start()
        reader.join(timeout=30)
        assert not reader.is_alive() and seen == [[]]  # done while the writer still holds
    with read_scope(catalog_engine) as session:
        row = session.exec(select(Collection)).one()
    assert row.name == "uncommitted"  # loaded attributes outlive the read session


def _digest(i: int) -> BlobDigest:
    b3 = hashlib.sha256(b"blob %d" % i).hexdigest()
    return BlobDigest(b3, "5" * 64, i, i, b3, "raw")


def test_group_recorder_commits_every_caller_and_reports_failures(
    catalog_engine: sa.Engine,
) -> None:
    """Sixteen threads record loose blobs at once: each returns only once its rows are
    committed; a batch that fails raises in every caller whose blob it held."""
    tier_id = _blob_pack_and_tier(catalog_engine)
    recorder = GroupRecorder(catalog_engine)

    def record(i: int) -> None:
        recorder.record(_digest(i), tier="hot", tier_id=tier_id)

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(record, range(64)))
    with Session(catalog_engine) as session:
        rows = session.exec(select(Replica.blob_b3).where(Replica.tier_id == tier_id)).all()
        events = session.exec(select(func.count()).select_from(Event)).one()
    assert sorted(r for r in rows if r != B3) == sorted(_digest(i).b3 for i in range(64))
    assert events == 64
    with pytest.raises(sa.exc.IntegrityError):  # no such tier: the foreign key refuses
        recorder.record(_digest(99), tier="gone", tier_id=tier_id + 1000)
    assert _count(catalog_engine, Replica) == 64
    recorder.record(_digest(100), tier="hot", tier_id=tier_id)  # the recorder goes on
    assert _count(catalog_engine, Replica) == 65


@pytest.mark.parametrize(
    ("blob_b3", "pack_id"),
    [(B3, None), (None, PACK_ID)],
    ids=["blob", "pack"],
)
def test_a_replica_of_a_blob_or_of_a_pack_is_accepted(
    catalog_engine: sa.Engine, blob_b3: str | None, pack_id: str | None
) -> None:
    tier_id = _blob_pack_and_tier(catalog_engine)
    with session_scope(catalog_engine) as session:
        session.add(Replica(blob_b3=blob_b3, pack_id=pack_id, tier_id=tier_id, key="k"))
    assert _count(catalog_engine, Replica) == 1


@pytest.mark.parametrize(
    ("blob_b3", "pack_id"),
    [(None, None), (B3, PACK_ID)],
    ids=["neither", "both"],
)
def test_a_replica_must_be_of_a_blob_xor_a_pack(
    catalog_engine: sa.Engine, blob_b3: str | None, pack_id: str | None
) -> None:
    tier_id = _blob_pack_and_tier(catalog_engine)
    with (
        pytest.raises(sa.exc.IntegrityError, match="replica_blob_xor_pack"),
        session_scope(catalog_engine) as session,
    ):
        session.add(Replica(blob_b3=blob_b3, pack_id=pack_id, tier_id=tier_id, key="k"))
    assert _count(catalog_engine, Replica) == 0


def test_an_entry_path_of_the_longest_allowed_length_is_stored(
    catalog_engine: sa.Engine,
) -> None:
    """The longest path ``archive.paths`` admits fits PostgreSQL's B-tree row limit (2704
    bytes) behind the unique (version_id, path) constraint."""
    # Hex digests: nothing for the index's compression to shrink.
    path = "/".join(hashlib.sha256(str(i).encode()).hexdigest() for i in range(40))
    path = path[:MAX_PATH_BYTES].rstrip("/")
    assert normalize_path(path) == path
    assert len(path.encode()) >= MAX_PATH_BYTES - 1
    _blob_pack_and_tier(catalog_engine)
    with session_scope(catalog_engine) as session:
        collection = Collection(name="c")
        session.add(collection)
        session.flush()
        assert collection.id is not None
        dataset = Dataset(pid="urn:uuid:1", collection_id=collection.id, name="d")
        session.add(dataset)
        session.flush()
        assert dataset.id is not None
        version = Version(dataset_id=dataset.id, number=1, manifest_b3=B3, manifest_key="m")
        session.add(version)
        session.flush()
        assert version.id is not None
        session.add(Entry(version_id=version.id, path=path, blob_b3=B3))
