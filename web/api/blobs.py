"""Blobs sent by clients, each proven against its address before it counts.

``PUT /blobs/{b3}`` takes one blob; ``POST /blobs/batch`` takes many small ones in
one tar stream and stores the new ones as one pack (:mod:`archive.batches`), which
spares the server a request, an object and a catalog record per small file.

The body of ``PUT /blobs/{b3}`` is never held whole: the async request stream is
bridged to the synchronous :func:`archive.upload.store_stream`, which runs in a
worker thread and pulls each chunk from the event loop as it needs it, so memory
stays at a few chunks whatever the size, and a slow client only slows its own
upload. Uploads take their threads from a limiter of their own, so many slow
uploads cannot starve the thread pool that serves every other route.

Only callers who may write to some collection upload. What the archive holds is
answered per caller (:func:`archive.access.claimable_blobs`): content the caller
cannot read is reported missing, so it must send the bytes (which proves it has
them) before it can name them in a version.

Back-pressure: one process takes at most ``max_concurrent_uploads`` uploads at
once (these routes, resumable appends, bags), counting those that wait for one of the
``upload_threads``; one more is refused with 503 and ``Retry-After`` before its
body is read, rather than queued without bound.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Annotated

import anyio
import anyio.from_thread
import anyio.to_thread
from fastapi import APIRouter, Header, HTTPException, Request, Response, status

from archive.access import Principal, claimable_blobs, grant_upload, needs_grant
from archive.batches import batch_limits, store_batch
from archive.datasets import blobs_missing
from archive.errors import Forbidden
from archive.node import ArchiveNode
from archive.upload import store_stream
from web.auth import PrincipalDep
from web.body_limits import body_limit
from web.deps import BlobAddress, NodeDep, SessionDep
from web.schemas import (
    BatchLimitsPublic,
    BatchPublic,
    BlobPublic,
    BlobQuery,
    ErrorPublic,
    MissingPublic,
)

router = APIRouter(prefix="/blobs", tags=["blobs"])

#: Seconds a client refused for lack of an upload slot is asked to wait.
BUSY_RETRY_AFTER = "2"
#: Body bytes gathered in the event loop before the worker thread takes them.
PIECE = 1024 * 1024


@router.post("/missing", response_model=MissingPublic)
def find_missing(body: BlobQuery, session: SessionDep, principal: PrincipalDep) -> MissingPublic:
    """Which of these addresses the archive lacks: upload those, then commit."""
    _require_uploader(principal)
    return MissingPublic(missing=_missing_for(principal, body.blobs, session))


@router.get("/batch", response_model=BatchLimitsPublic)
def batch_upload_limits(node: NodeDep, principal: PrincipalDep) -> BatchLimitsPublic:
    """What one ``POST /blobs/batch`` may carry here; a client sizes its batches by it."""
    _require_uploader(principal)
    limits = batch_limits(node)
    return BatchLimitsPublic(
        member_below=limits.member_below,
        max_members=limits.max_members,
        max_bytes=limits.max_bytes,
    )


@router.post(
    "/batch",
    response_model=BatchPublic,
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {"model": BatchPublic, "description": "Every blob was already held (all checked)"},
        413: {"model": ErrorPublic, "description": "The body is over `max_batch_bytes`"},
        422: {
            "model": ErrorPublic,
            "description": "A member is wrong (`blob` names it) or the body is not a batch; "
            "nothing of the batch was stored",
        },
        503: {"model": ErrorPublic, "description": "Too many uploads at once (`Retry-After`)"},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/x-tar": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
@body_limit("batch")
async def post_batch(
    request: Request, node: NodeDep, response: Response, principal: PrincipalDep
) -> BatchPublic:
    """Store many small blobs sent as one tar stream (format: :mod:`archive.batches`):
    201 with the pack that holds the new ones, 200 if all were held; one wrong member
    refuses the whole batch and keeps nothing."""
    _require_uploader(principal)
    async with upload_slot(request):
        store = functools.partial(
            store_batch, node, _chunks_from_loop(request.stream()), principal=principal
        )
        result = await anyio.to_thread.run_sync(store, limiter=upload_limiter(request))
    if not result.created:
        response.status_code = status.HTTP_200_OK
    return BatchPublic(
        created=[d.b3 for d in result.created], held=result.held, pack=result.pack_id
    )


@router.head(
    "/{b3}",
    response_class=Response,
    responses={200: {"description": "Held"}, 404: {"description": "Not held"}},
)
def blob_held(b3: BlobAddress, session: SessionDep, principal: PrincipalDep) -> Response:
    _require_uploader(principal)
    held = not _missing_for(principal, [b3], session)
    return Response(status_code=status.HTTP_200_OK if held else status.HTTP_404_NOT_FOUND)


def _require_uploader(principal: Principal) -> None:
    if not principal.may_upload:
        raise Forbidden("uploading needs write permission on a collection")


def _missing_for(principal: Principal, b3s: list[str], session: SessionDep) -> list[str]:
    visible = claimable_blobs(principal, b3s, session=session)
    return sorted(set(blobs_missing(b3s, session=session)) | (set(b3s) - visible))


def _record_grant(node: ArchiveNode, principal: Principal, b3: str) -> None:
    with node.session() as session:
        grant_upload(principal, b3, session=session)


def _chunks_from_loop(stream: AsyncIterator[bytes]) -> Iterator[bytes]:
    """The request body as a plain iterator, for code running in a worker thread.

    The server hands the body over in small pieces (often 64 KiB); they are
    gathered into pieces of about :data:`PIECE` bytes inside the event loop, so the
    worker thread crosses into the loop once per piece rather than once per packet
    and the consumer's buffering stays cheap. Memory stays bounded by one piece.
    """

    async def next_piece() -> bytes:
        piece = bytearray()
        while len(piece) < PIECE:
            try:
                piece += await stream.__anext__()
            except StopAsyncIteration:
                break
        return bytes(piece)

    while piece := anyio.from_thread.run(next_piece):
        yield piece


def upload_limiter(request: Request) -> anyio.CapacityLimiter:
    """The app's upload limiter, made on first use (inside the event loop, as anyio wants)."""
    state = request.app.state
    if getattr(state, "upload_limiter", None) is None:
        node: ArchiveNode = state.node
        state.upload_limiter = anyio.CapacityLimiter(node.settings.upload_threads)
    limiter: anyio.CapacityLimiter = state.upload_limiter
    return limiter


@asynccontextmanager
async def upload_slot(request: Request) -> AsyncIterator[None]:
    """Hold one of the process's upload slots for the block; 503 when none is free.

    The count lives in the app's state and changes only on the event loop (never in
    a worker thread), so it needs no lock.
    """
    state = request.app.state
    node: ArchiveNode = state.node
    taken: int = getattr(state, "uploads_in_progress", 0)
    if taken >= node.settings.max_concurrent_uploads:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"{taken} uploads are in progress, the most this server takes at once; "
            "try again shortly",
            headers={"Retry-After": BUSY_RETRY_AFTER},
        )
    state.uploads_in_progress = taken + 1
    try:
        yield
    finally:
        state.uploads_in_progress -= 1


@router.put(
    "/{b3}",
    response_model=BlobPublic,
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {"model": BlobPublic, "description": "Already held (the body was still checked)"},
        422: {"model": ErrorPublic, "description": "The body does not hash to the address"},
        503: {"model": ErrorPublic, "description": "Too many uploads at once (`Retry-After`)"},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        }
    },
)
@body_limit("upload")
async def put_blob(
    b3: BlobAddress,
    request: Request,
    node: NodeDep,
    response: Response,
    principal: PrincipalDep,
    sha256: Annotated[
        str | None,
        Header(
            alias="X-Permafrost-Sha256",
            pattern=r"^[0-9a-fA-F]{64}$",
            description="SHA-256 of the body, checked too when given",
        ),
    ] = None,
) -> BlobPublic:
    """Store the body as the blob ``b3``: 201 if new, 200 if held; a wrong body keeps nothing."""
    _require_uploader(principal)
    declared = request.headers.get("content-length")
    size = int(declared) if declared is not None and declared.isdigit() else None
    async with upload_slot(request):
        chunks: Iterator[bytes]
        if size is not None and size <= PIECE:  # most uploads: one piece, read right here
            chunks = iter([await request.body()])
        else:
            chunks = _chunks_from_loop(request.stream())
        store = functools.partial(
            store_stream,
            node,
            chunks,
            expect_b3=b3,
            expect_sha256=sha256.lower() if sha256 else None,
            size=size,
        )
        digest, created = await anyio.to_thread.run_sync(store, limiter=upload_limiter(request))
    if needs_grant(principal):
        await anyio.to_thread.run_sync(_record_grant, node, principal, digest.b3)
    if not created:
        response.status_code = status.HTTP_200_OK
    return BlobPublic(
        blake3=digest.b3,
        sha256=digest.sha256,
        size=digest.size,
        stored_size=digest.stored_size,
        codec=digest.codec,
        created=created,
    )
