"""Versions of a dataset: read one, page through its entries, commit a new one.

A commit is the last step of the client upload flow (``POST /blobs/missing``,
``PUT /blobs/{b3}`` for each missing one, then this): it names content by
BLAKE3 only, so it is cheap however large the files, and it is refused whole
(409, nothing written) if any named blob is not held.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from archive.access import claimable_blobs
from archive.catalog.models import Permission
from archive.datasets import DatasetRef, NewEntry, commit_version
from archive.entry_pages import entry_page
from archive.errors import MissingBlobs
from archive.paths import MAX_PATH_BYTES, normalize_paths
from web.auth import PrincipalDep
from web.deps import (
    CollectionName,
    DatasetName,
    NodeDep,
    SessionDep,
    VersionSelector,
    resolve_version,
)
from web.schemas import (
    EntryPagePublic,
    EntryPublic,
    ErrorPublic,
    Text,
    VersionCreate,
    VersionPublic,
)

router = APIRouter(prefix="/datasets/{collection}/{dataset}/versions", tags=["versions"])

MAX_PAGE = 1000


@router.get("/{version}", response_model=VersionPublic, responses={404: {"model": ErrorPublic}})
def read_version(
    collection: CollectionName,
    dataset: DatasetName,
    version: VersionSelector,
    session: SessionDep,
    principal: PrincipalDep,
) -> VersionPublic:
    principal.require(collection, Permission.READ, what=f"dataset {collection}/{dataset}")
    _, row = resolve_version(collection, dataset, version, session=session)
    return VersionPublic.of(row)


@router.get(
    "/{version}/entries",
    response_model=EntryPagePublic,
    responses={404: {"model": ErrorPublic}},
)
def read_entries(
    collection: CollectionName,
    dataset: DatasetName,
    version: VersionSelector,
    session: SessionDep,
    principal: PrincipalDep,
    after: Annotated[
        Text | None,
        Query(max_length=MAX_PATH_BYTES, description="Start after this path (the `next` cursor)"),
    ] = None,
    prefix: Annotated[
        Text, Query(max_length=MAX_PATH_BYTES, description="Only paths starting with this")
    ] = "",
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
) -> EntryPagePublic:
    """Entries in path order, ``limit`` at a time; follow ``next`` until it is null."""
    principal.require(collection, Permission.READ, what=f"dataset {collection}/{dataset}")
    _, row = resolve_version(collection, dataset, version, session=session)
    assert row.id is not None
    page = entry_page(row.id, session=session, after=after, prefix=prefix, limit=limit)
    return EntryPagePublic(
        items=[EntryPublic.of(e, page.replicas.get(e.b3, [])) for e in page.entries],
        next=page.next_after,
    )


@router.post(
    "",
    response_model=VersionPublic,
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {"model": VersionPublic, "description": "Identical to the latest: nothing new"},
        409: {"model": ErrorPublic, "description": "Blobs not held (`missing` lists them)"},
    },
)
def create_version(
    collection: CollectionName,
    dataset: DatasetName,
    body: VersionCreate,
    node: NodeDep,
    response: Response,
    principal: PrincipalDep,
) -> VersionPublic:
    """Commit the next version of a dataset (created with its collection if new).

    Paths must be relative, ``/``-separated and unique after NFC normalisation
    (422 says which and why); claimed SHA-256s and sizes must match the blobs.
    Only administrators create collections this way; others need ``write`` on an
    existing one, and may name only content they can read or have uploaded (else
    409 lists it as missing).
    """
    if not principal.is_admin:
        principal.require(collection, Permission.WRITE, what=f"collection {collection!r}")
    paths = normalize_paths(e.path for e in body.entries)
    entries = [
        NewEntry(path, e.blake3, e.sha256, e.size)
        for path, e in zip(paths, body.entries, strict=True)
    ]
    with node.session() as session:
        wanted = [e.b3 for e in entries]
        unclaimable = set(wanted) - claimable_blobs(principal, wanted, session=session)
        if unclaimable:
            raise MissingBlobs(sorted(unclaimable))
        result = commit_version(
            DatasetRef(collection, dataset),
            entries,
            session=session,
            tier=node.hot,
            message=body.message,
            title=body.title,
            metadata=body.metadata,
            agent=f"permafrost/api ({principal.username})",
        )
    if not result.created:
        response.status_code = status.HTTP_200_OK
    return VersionPublic.of(result.version)
