"""Catalog tables (DESIGN section 4).

The catalog says what the archive holds and where; the bytes live in tiers.
Timestamps are timezone-aware UTC. Digests are lowercase hex. Every table that
later issues extend (Replica leases, audit times) already has its columns so the
catalog is also the work queue (DESIGN section 5).
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(sa.types.TypeDecorator[dt.datetime]):
    """Store UTC; give back aware datetimes on every database (SQLite drops the zone)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: sa.Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the catalog; use UTC-aware times")
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> dt.datetime | None:
        if value is None:
            return None
        assert isinstance(value, dt.datetime)
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def _time(*, nullable: bool = False, index: bool = False) -> Any:
    return Field(
        default_factory=utcnow if not nullable else None,
        sa_type=UTCDateTime,
        nullable=nullable,
        index=index,
    )


def _json() -> Any:
    return Field(default_factory=dict, sa_type=sa.JSON, nullable=False)


class Codec(enum.StrEnum):
    ZSTD = "zstd"
    RAW = "raw"


class TierRole(enum.StrEnum):
    HOT = "hot"
    COLD = "cold"
    PARTNER = "partner"


class ReplicaState(enum.StrEnum):
    PENDING = "pending"
    COPYING = "copying"
    PRESENT = "present"
    DAMAGED = "damaged"
    MISSING = "missing"
    REPAIRING = "repairing"


class EventOutcome(enum.StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"
    WARNING = "warning"


class EventType(enum.StrEnum):
    """PREMIS 3 eventType values (id.loc.gov/vocabulary/preservation/eventType)."""

    INGESTION = "ingestion"
    MESSAGE_DIGEST_CALCULATION = "message digest calculation"
    REPLICATION = "replication"
    FIXITY_CHECK = "fixity check"
    REPAIR = "repair"
    RESTORE = "restore"
    DELETION = "deletion"
    VALIDATION = "validation"


class Collection(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=100, unique=True)
    title: str = Field(default="", max_length=500)
    policy: dict[str, Any] = _json()
    created_at: dt.datetime = _time()


class Dataset(SQLModel, table=True):
    __table_args__ = (sa.UniqueConstraint("collection_id", "name"),)

    id: int | None = Field(default=None, primary_key=True)
    pid: str = Field(max_length=100, unique=True)
    """Persistent identifier (``urn:uuid:...``): never changes, even if renamed."""
    collection_id: int = Field(foreign_key="collection.id", index=True)
    name: str = Field(max_length=100)
    title: str = Field(default="", max_length=1000)
    metadata_: dict[str, Any] = Field(
        default_factory=dict, sa_column_kwargs={"name": "metadata"}, sa_type=sa.JSON
    )
    state: str = Field(default="active", max_length=20)
    created_at: dt.datetime = _time()


class Version(SQLModel, table=True):
    __table_args__ = (sa.UniqueConstraint("dataset_id", "number"),)

    id: int | None = Field(default=None, primary_key=True)
    dataset_id: int = Field(foreign_key="dataset.id", index=True)
    number: int
    manifest_b3: str = Field(max_length=64)
    manifest_key: str = Field(max_length=1024)
    previous_b3: str | None = Field(default=None, max_length=64)
    message: str = Field(default="", max_length=4000)
    file_count: int = 0
    total_size: int = Field(default=0, sa_type=sa.BigInteger)
    created_at: dt.datetime = _time()


class Blob(SQLModel, table=True):
    b3: str = Field(primary_key=True, max_length=64)
    sha256: str = Field(max_length=64, index=True)
    size: int = Field(sa_type=sa.BigInteger)
    stored_size: int = Field(sa_type=sa.BigInteger)
    stored_b3: str = Field(max_length=64)
    codec: str = Field(max_length=10)
    created_at: dt.datetime = _time()


class Entry(SQLModel, table=True):
    __table_args__ = (sa.UniqueConstraint("version_id", "path"),)

    id: int | None = Field(default=None, primary_key=True)
    version_id: int = Field(foreign_key="version.id")
    path: str = Field(max_length=4096)
    blob_b3: str = Field(foreign_key="blob.b3", max_length=64, index=True)


class Pack(SQLModel, table=True):
    """Many small blobs in one tar object (DESIGN section 3); named by its own BLAKE3."""

    id: str = Field(primary_key=True, max_length=64)
    size: int = Field(sa_type=sa.BigInteger)
    member_count: int
    created_at: dt.datetime = _time()


class PackMember(SQLModel, table=True):
    pack_id: str = Field(foreign_key="pack.id", primary_key=True, max_length=64)
    blob_b3: str = Field(foreign_key="blob.b3", primary_key=True, max_length=64, index=True)
    offset: int = Field(sa_type=sa.BigInteger)
    """Where the blob's stored bytes start inside the pack (after its tar header)."""
    length: int = Field(sa_type=sa.BigInteger)


class Tier(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=100, unique=True)
    kind: str = Field(max_length=20)
    role: str = Field(max_length=20)
    region: str | None = Field(default=None, max_length=100)
    settings: dict[str, Any] = _json()
    created_at: dt.datetime = _time()


class Replica(SQLModel, table=True):
    """One copy of a blob (stored loose) or of a pack, on one tier; a row of the work queue."""

    __table_args__ = (
        sa.UniqueConstraint("blob_b3", "tier_id"),
        sa.UniqueConstraint("pack_id", "tier_id"),
        sa.CheckConstraint("(blob_b3 IS NULL) <> (pack_id IS NULL)", name="replica_blob_xor_pack"),
        sa.Index("ix_replica_state_next_audit", "state", "next_audit_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    blob_b3: str | None = Field(default=None, foreign_key="blob.b3", max_length=64)
    pack_id: str | None = Field(default=None, foreign_key="pack.id", max_length=64)
    tier_id: int = Field(foreign_key="tier.id", index=True)
    state: str = Field(default=ReplicaState.PENDING, max_length=20)
    key: str = Field(max_length=1024)
    last_verified_at: dt.datetime | None = _time(nullable=True)
    next_audit_at: dt.datetime | None = _time(nullable=True)
    failures: int = 0
    lease_owner: str | None = Field(default=None, max_length=100)
    lease_expires_at: dt.datetime | None = _time(nullable=True)
    created_at: dt.datetime = _time()
    updated_at: dt.datetime = _time()


class Event(SQLModel, table=True):
    """A PREMIS-style preservation event: what happened to which object, where, with what result."""

    __table_args__ = (sa.Index("ix_event_object", "object_type", "object_id"),)

    id: int | None = Field(default=None, primary_key=True)
    type: str = Field(max_length=50)
    object_type: str = Field(max_length=20)
    """``blob``, ``pack``, ``version``, ``dataset``, ``tier``."""
    object_id: str = Field(max_length=200)
    tier: str | None = Field(default=None, max_length=100)
    outcome: str = Field(max_length=20)
    detail: dict[str, Any] = _json()
    agent: str = Field(max_length=200)
    created_at: dt.datetime = _time(index=True)
