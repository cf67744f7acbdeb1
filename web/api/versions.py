"""Versions of a dataset: read one, page through its entries, commit a new one.

A commit is the last step of the client upload flow (``POST /blobs/missing``,
``PUT /blobs/{b3}`` for each missing one, then this): it names content by
BLAKE3 only, so it is cheap however large the files, and it is refused whole
(409, nothing written) if any named blob is not held.

Two forms of the same commit: a JSON document (up to 100,000 entries), and NDJSON
(``POST .../versions/stream``: a header line, then one entry per line), read as it
arrives and validated line by line, for versions of hundreds of thousands of files
without a whole-document parse in memory.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from archive.access import Principal, claimable_blobs
from archive.catalog.models import Permission
from archive.datasets import DatasetRef, NewEntry, commit_version
from archive.entry_pages import entry_page
from archive.errors import InvalidInput, MissingBlobs
from archive.node import ArchiveNode
from archive.paths import MAX_PATH_BYTES, normalize_paths
from web.auth import PrincipalDep
from web.body_limits import body_limit
from web.deps import (
    CollectionName,
    DatasetName,
    NodeDep,
    SessionDep,
    VersionSelector,
    resolve_version,
)
from web.schemas import (
    MAX_STREAM_ENTRIES,
    MAX_STREAM_LINE,
    EntryCreate,
    EntryPagePublic,
    EntryPublic,
    ErrorPublic,
    Text,
    VersionCreate,
    VersionHeader,
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
@body_limit("commit")
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
    raw = [(e.path, e.blake3, e.sha256, e.size) for e in body.entries]
    return _commit(node, principal, DatasetRef(collection, dataset), body, raw, response)


def _commit(
    node: ArchiveNode,
    principal: Principal,
    ref: DatasetRef,
    header: VersionHeader,
    raw: list[tuple[str, str, str | None, int | None]],
    response: Response,
) -> VersionPublic:
    """The commit both forms share: permission, paths, content the caller may claim."""
    if not principal.is_admin:
        principal.require(ref.collection, Permission.WRITE, what=f"collection {ref.collection!r}")
    paths = normalize_paths(path for path, *_ in raw)
    entries = [
        NewEntry(path, b3, sha256, size)
        for path, (_, b3, sha256, size) in zip(paths, raw, strict=True)
    ]
    with node.session() as session:
        wanted = [e.b3 for e in entries]
        unclaimable = set(wanted) - claimable_blobs(principal, wanted, session=session)
        if unclaimable:
            raise MissingBlobs(sorted(unclaimable))
        result = commit_version(
            ref,
            entries,
            session=session,
            tier=node.hot,
            message=header.message,
            title=header.title,
            metadata=header.metadata,
            agent=f"permafrost/api ({principal.username})",
        )
    if not result.created:
        response.status_code = status.HTTP_200_OK
    return VersionPublic.of(result.version)


NDJSON_TYPES = frozenset({"application/x-ndjson", "application/jsonl"})

_NDJSON_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/x-ndjson": {
                "schema": {
                    "description": "Line 1: a VersionHeader object. Every further line: "
                    f"one EntryCreate object (at most {MAX_STREAM_ENTRIES:,} lines of at "
                    f"most {MAX_STREAM_LINE:,} bytes). Blank lines are ignored.",
                    "type": "string",
                }
            }
        },
    }
}


@router.post(
    "/stream",
    response_model=VersionPublic,
    status_code=status.HTTP_201_CREATED,
    openapi_extra=_NDJSON_BODY,
    responses={
        200: {"model": VersionPublic, "description": "Identical to the latest: nothing new"},
        409: {"model": ErrorPublic, "description": "Blobs not held (`missing` lists them)"},
        415: {"model": ErrorPublic, "description": "The body is not NDJSON"},
        422: {"model": ErrorPublic, "description": "A line is not valid (`detail` says which)"},
    },
)
@body_limit("upload")
async def create_version_stream(
    collection: CollectionName,
    dataset: DatasetName,
    request: Request,
    node: NodeDep,
    response: Response,
    principal: PrincipalDep,
) -> VersionPublic:
    """Commit the next version from NDJSON: a header line, then one entry per line.

    The same commit as ``POST .../versions``, for any number of entries: lines are
    validated as they arrive, and only the entries' digests are kept in memory.
    """
    if not principal.is_admin:  # before a byte of the body is read
        principal.require(collection, Permission.WRITE, what=f"collection {collection!r}")
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in NDJSON_TYPES:
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            f"send NDJSON ({', '.join(sorted(NDJSON_TYPES))}), not {media or 'no type'}",
        )
    header: VersionHeader | None = None
    raw: list[tuple[str, str, str | None, int | None]] = []
    number = 0
    async for line in _lines(request):
        number += 1
        if not line.strip():
            continue
        try:
            if header is None:
                header = VersionHeader.model_validate_json(line)
                continue
            entry = EntryCreate.model_validate_json(line)
        except ValidationError as exc:
            problem = exc.errors()[0]
            where = ".".join(str(part) for part in problem["loc"])
            raise InvalidInput(
                f"line {number}: {where + ': ' if where else ''}{problem['msg']}"
            ) from None
        if len(raw) >= MAX_STREAM_ENTRIES:
            raise InvalidInput(f"more than {MAX_STREAM_ENTRIES:,} entries in one commit")
        raw.append((entry.path, entry.blake3, entry.sha256, entry.size))
    if header is None:
        raise InvalidInput("empty body: the first line must be the version header")
    ref = DatasetRef(collection, dataset)
    result: VersionPublic = await run_in_threadpool(
        _commit, node, principal, ref, header, raw, response
    )
    return result


async def _lines(request: Request) -> AsyncIterator[bytes]:
    """The body's lines as they arrive (without their newline), each capped in length."""
    pending = b""
    async for chunk in request.stream():
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if len(line) > MAX_STREAM_LINE:
                raise InvalidInput(f"a line is longer than {MAX_STREAM_LINE:,} bytes")
            yield line
        if len(pending) > MAX_STREAM_LINE:
            raise InvalidInput(f"a line is longer than {MAX_STREAM_LINE:,} bytes")
    if pending:
        yield pending
