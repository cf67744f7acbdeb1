"""Bulk inserts through the driver store exactly what the ORM stores, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa
from sqlmodel import select

from archive.catalog import models
from archive.catalog.bulk import insert_all, insert_ignore
from archive.catalog.models import EventOutcome, EventType, ReplicaState
from archive.node import ArchiveNode

WHEN = dt.datetime(2026, 11, 27, 18, 30, 1, 123456, tzinfo=dt.UTC)


def _blob(n: int) -> dict[str, object]:
    b3 = f"{n:064x}"
    return {
        "b3": b3,
        "sha256": f"{n + 1:064x}",
        "size": 5 * 2**40 + n,  # over 32 bits
        "stored_size": n,
        "stored_b3": b3,
        "codec": "zstd",
        "created_at": WHEN,
    }


def test_rows_read_back_as_the_orm_wrote_them(node: ArchiveNode) -> None:
    detail = {"blake3": "ab", "nested": {"ü": [1, 2.5, None]}, "size": 2**40}
    with node.session() as session:
        insert_all(session, models.Blob, [_blob(1), _blob(2)])
        insert_all(
            session,
            models.Event,
            [
                {
                    "type": EventType.FIXITY_CHECK,
                    "object_type": "blob",
                    "object_id": f"{n:064x}",
                    "tier": "hot",
                    "outcome": EventOutcome.SUCCESS,
                    "detail": detail,
                    "agent": "test",
                    "created_at": WHEN + dt.timedelta(seconds=n),
                }
                for n in (1, 2)
            ],
        )
        session.add(
            models.Event(
                type=EventType.FIXITY_CHECK,
                object_type="blob",
                object_id=f"{3:064x}",
                tier="hot",
                outcome=EventOutcome.SUCCESS,
                detail=detail,
                agent="test",
                created_at=WHEN + dt.timedelta(seconds=3),
            )
        )
        tier_id = node.tier_ids(session=session)["hot"]
        # Columns left out take their scalar defaults (failures, audit_count, lease_owner).
        insert_ignore(
            session,
            models.Replica,
            [
                {
                    "blob_b3": f"{1:064x}",
                    "tier_id": tier_id,
                    "state": ReplicaState.PENDING,
                    "key": "blobs/x",
                    "created_at": WHEN,
                    "updated_at": WHEN,
                }
            ],
        )
    with node.reading() as session:
        blobs = session.exec(select(models.Blob).order_by(models.Blob.b3)).all()
        assert [(b.b3, b.size, b.created_at) for b in blobs] == [
            (f"{1:064x}", 5 * 2**40 + 1, WHEN),
            (f"{2:064x}", 5 * 2**40 + 2, WHEN),
        ]
        events = session.exec(select(models.Event).order_by(models.Event.created_at)).all()
        assert [(e.type, e.outcome, e.detail, e.created_at) for e in events] == [
            (EventType.FIXITY_CHECK, EventOutcome.SUCCESS, detail, WHEN + dt.timedelta(seconds=n))
            for n in (1, 2, 3)
        ]
        # The raw rows too: a bulk row and an ORM row are stored identically.
        raw = session.connection().execute(
            sa.text("SELECT detail, created_at FROM event ORDER BY created_at")
        )
        (bulk_detail, bulk_at), _, (orm_detail, orm_at) = raw.all()
        assert bulk_detail == orm_detail
        assert type(bulk_at) is type(orm_at)
        replica = session.exec(select(models.Replica)).one()
        assert (replica.failures, replica.audit_count, replica.lease_owner) == (0, 0, None)
        assert replica.state == ReplicaState.PENDING and replica.created_at == WHEN


def test_ignore_keeps_the_first_row_and_all_refuses_a_taken_key(node: ArchiveNode) -> None:
    first, again = _blob(7), {**_blob(7), "sha256": "f" * 64}
    with node.session() as session:
        insert_ignore(session, models.Blob, [first, _blob(8)])
        insert_ignore(session, models.Blob, [again, _blob(9)])
    with node.reading() as session:
        rows = session.exec(select(models.Blob.b3, models.Blob.sha256)).all()
    assert sorted(rows) == sorted((b["b3"], b["sha256"]) for b in (first, _blob(8), _blob(9)))
    with pytest.raises(sa.exc.IntegrityError), node.session() as session:
        insert_all(session, models.Blob, [_blob(10), again])
    with node.reading() as session:  # the failed transaction left nothing
        assert session.get(models.Blob, _blob(10)["b3"]) is None


def test_a_default_computed_per_row_is_still_computed(node: ArchiveNode) -> None:
    """Leaving out a column whose default is a function (created_at) falls back to
    SQLAlchemy, which calls it: the row gets a time, not NULL."""
    before = models.utcnow()
    with node.session() as session:
        insert_all(
            session,
            models.Event,
            [
                {
                    "type": EventType.DELETION,
                    "object_type": "blob",
                    "object_id": "x",
                    "outcome": EventOutcome.SUCCESS,
                    "detail": {},
                    "agent": "test",
                }
            ],
        )
    with node.reading() as session:
        event = session.exec(select(models.Event)).one()
    assert event.tier is None and event.created_at >= before
