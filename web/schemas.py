"""Request and response bodies of the HTTP API, precise enough to fuzz the server by.

Each catalog entity has a ``...Public`` model (what a client sees) and, where
clients create it, a ``...Create`` model (what they may send), as in the
full-stack-fastapi-template. Every bound here (lengths, list sizes, patterns) is
in the OpenAPI schema, so a schema-driven fuzzer and a real client hit the same
walls, and text that no catalog or manifest can store (NUL, lone surrogates,
NaN) is refused at the door with 422 rather than failing deeper with 500.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field

from archive.catalog import models
from archive.catalog.models import Codec, ReplicaState
from archive.datasets import NAME_RE, EntryView
from archive.entry_pages import ReplicaView
from archive.paths import MAX_PATH_BYTES

HEX64 = r"^[0-9a-f]{64}$"
NAME_PATTERN = NAME_RE.pattern
MAX_MISSING_QUERY = 10_000
MAX_COMMIT_ENTRIES = 100_000
"""Entries of one JSON commit; larger versions are sent as NDJSON (``POST .../versions/stream``)."""
MAX_STREAM_ENTRIES = 1_000_000
MAX_STREAM_LINE = 32 * 1024
MAX_METADATA_DEPTH = 32
#: 8 PiB: exact as a JSON number in every client (IEEE doubles hold integers up to 2**53).
MAX_SIZE = 2**53


def storable_text(value: str) -> str:
    """Refuse what PostgreSQL text and UTF-8 manifests cannot hold (NUL, lone surrogates)."""
    if "\x00" in value:
        raise ValueError("text may not contain NUL")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text is not valid Unicode (lone surrogate)") from None
    return value


def storable_json(value: Any, depth: int = 0) -> Any:
    """Refuse JSON values the catalog or a strict JSON reader cannot take back."""
    if depth > MAX_METADATA_DEPTH:
        raise ValueError(f"metadata nested deeper than {MAX_METADATA_DEPTH} levels")
    if isinstance(value, str):
        storable_text(value)
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError("metadata numbers must be finite (no NaN or Infinity)")
    elif isinstance(value, dict):
        for key, item in value.items():
            storable_text(key)
            storable_json(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            storable_json(item, depth + 1)
    return value


Text = Annotated[str, AfterValidator(storable_text)]
Metadata = Annotated[dict[str, Any], AfterValidator(storable_json)]
B3 = Annotated[str, Field(pattern=HEX64, description="BLAKE3 of the content, 64 lowercase hex")]
Sha256 = Annotated[str, Field(pattern=HEX64, description="SHA-256 of the content, lowercase hex")]


class ErrorPublic(BaseModel):
    """Every error the API returns: the error's class, a sentence, and its data."""

    error: str = Field(description="Class of the error, e.g. NotFound, MissingBlobs")
    detail: str
    missing: list[str] | None = Field(default=None, description="MissingBlobs: absent BLAKE3s")
    path: str | None = None
    blob: str | None = Field(default=None, description="The BLAKE3 of a refused batch member")
    reason: str | None = None
    paths: list[str] | None = Field(default=None, description="PathCollision: colliding names")
    algorithm: str | None = None
    expected: str | None = None
    found: str | None = None
    retryable: bool | None = None
    errors: list[dict[str, Any]] | None = Field(
        default=None, description="Request validation: where and why, one item per problem"
    )


class HealthPublic(BaseModel):
    status: Literal["ok"]


class CollectionCreate(BaseModel):
    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    title: Annotated[Text, Field(max_length=500)] = ""


class CollectionPublic(BaseModel):
    name: str
    title: str
    created: dt.datetime

    @classmethod
    def of(cls, row: models.Collection) -> CollectionPublic:
        return cls(name=row.name, title=row.title, created=row.created_at)


class DatasetSummaryPublic(BaseModel):
    collection: str
    name: str
    pid: str = Field(description="Persistent identifier (urn:uuid:...), for citations")
    title: str

    @classmethod
    def of(cls, collection: str, row: models.Dataset) -> DatasetSummaryPublic:
        return cls(collection=collection, name=row.name, pid=row.pid, title=row.title)


class CollectionDetailPublic(CollectionPublic):
    datasets: list[DatasetSummaryPublic]

    @classmethod
    def with_datasets(
        cls, row: models.Collection, datasets: list[tuple[str, models.Dataset]]
    ) -> CollectionDetailPublic:
        return cls(
            name=row.name,
            title=row.title,
            created=row.created_at,
            datasets=[DatasetSummaryPublic.of(c, d) for c, d in datasets],
        )


class VersionPublic(BaseModel):
    number: int
    files: int
    bytes: int
    manifest_b3: str
    previous_b3: str | None = Field(description="BLAKE3 of the previous version's manifest")
    created: dt.datetime
    message: str

    @classmethod
    def of(cls, row: models.Version) -> VersionPublic:
        return cls(
            number=row.number,
            files=row.file_count,
            bytes=row.total_size,
            manifest_b3=row.manifest_b3,
            previous_b3=row.previous_b3,
            created=row.created_at,
            message=row.message,
        )


class DatasetPublic(DatasetSummaryPublic):
    metadata: dict[str, Any]
    created: dt.datetime
    versions: list[VersionPublic]

    @classmethod
    def with_versions(
        cls, collection: str, row: models.Dataset, versions: list[models.Version]
    ) -> DatasetPublic:
        return cls(
            collection=collection,
            name=row.name,
            pid=row.pid,
            title=row.title,
            metadata=row.metadata_,
            created=row.created_at,
            versions=[VersionPublic.of(v) for v in versions],
        )


class ReplicaPublic(BaseModel):
    tier: str
    state: ReplicaState
    last_verified_at: dt.datetime | None


class EntryPublic(BaseModel):
    path: str
    size: int
    blake3: str
    sha256: str
    replicas: list[ReplicaPublic]

    @classmethod
    def of(cls, entry: EntryView, replicas: list[ReplicaView]) -> EntryPublic:
        return cls(
            path=entry.path,
            size=entry.size,
            blake3=entry.b3,
            sha256=entry.sha256,
            replicas=[
                ReplicaPublic(
                    tier=r.tier, state=ReplicaState(r.state), last_verified_at=r.last_verified_at
                )
                for r in replicas
            ],
        )


class EntryPagePublic(BaseModel):
    items: list[EntryPublic]
    next: str | None = Field(description="Pass as ?after= for the next page; null on the last")


class BlobQuery(BaseModel):
    blobs: Annotated[list[B3], Field(max_length=MAX_MISSING_QUERY)]


class MissingPublic(BaseModel):
    missing: list[str] = Field(description="The BLAKE3s the archive lacks, sorted")


class BlobPublic(BaseModel):
    blake3: str
    sha256: str
    size: int
    stored_size: int
    codec: Codec
    created: bool = Field(description="False when the archive already held this blob")


class BatchPublic(BaseModel):
    created: list[str] = Field(description="BLAKE3s stored by this batch, all in `pack`")
    held: list[str] = Field(description="BLAKE3s already held (their bytes were still checked)")
    pack: str | None = Field(description="The pack that holds the created blobs, if any")


class BatchLimitsPublic(BaseModel):
    member_below: int = Field(description="Each blob of a batch is smaller (0: no batches)")
    max_members: int = Field(description="Blobs one batch may carry")
    max_bytes: int = Field(description="Largest batch body, in bytes; 413 beyond")


class EntryCreate(BaseModel):
    path: Annotated[str, Field(min_length=1, max_length=MAX_PATH_BYTES)]
    blake3: B3
    sha256: Sha256 | None = None
    size: Annotated[int, Field(ge=0, le=MAX_SIZE)] | None = None


class VersionHeader(BaseModel):
    """What a commit says about itself besides its entries (the first NDJSON line)."""

    message: Annotated[Text, Field(max_length=4000)] = ""
    title: Annotated[Text, Field(max_length=1000)] | None = Field(
        default=None, description="New title for the dataset; null keeps the current one"
    )
    metadata: Metadata | None = Field(
        default=None, description="New metadata for the dataset; null keeps the current one"
    )


class VersionCreate(VersionHeader):
    entries: Annotated[list[EntryCreate], Field(max_length=MAX_COMMIT_ENTRIES)]
