"""Resumable uploads (tus 1.0 core, tus.io/protocols/resumable-upload), for the portal.

``POST /uploads`` with ``Upload-Length`` creates one (201, ``Location``); ``PATCH``
with ``Upload-Offset`` and ``Content-Type: application/offset+octet-stream``
appends (204, the new ``Upload-Offset``); ``HEAD`` says where to resume. When the
last byte arrives the server hashes and stores the file as a blob and answers
its digests in ``Upload-Blake3`` and ``Upload-Sha256`` (also on ``GET``, as
JSON), which the client then names in ``POST /datasets/{c}/{d}/versions``. Only
the uploader sees an upload; it also gains the right to commit that content
(:func:`archive.access.grant_upload`).
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Iterator
from typing import Annotated

import anyio
import anyio.from_thread
import anyio.to_thread
from fastapi import APIRouter, Header, Request, Response, status
from pydantic import BaseModel
from starlette.requests import ClientDisconnect

from archive.access import Principal, grant_upload
from archive.errors import Forbidden, InvalidInput, TooLarge
from archive.node import ArchiveNode
from archive.resumable import UploadArea, UploadState
from web.api.blobs import upload_limiter, upload_slot
from web.auth import PrincipalDep
from web.body_limits import body_limit
from web.deps import NodeDep

router = APIRouter(prefix="/uploads", tags=["uploads"])

TUS_VERSION = "1.0.0"
OFFSET_TYPE = "application/offset+octet-stream"
PIECE = 1024 * 1024


class UploadPublic(BaseModel):
    id: str
    length: int
    offset: int
    complete: bool
    blake3: str | None
    sha256: str | None


def _headers(state: UploadState) -> dict[str, str]:
    headers = {
        "Tus-Resumable": TUS_VERSION,
        "Upload-Offset": str(state.offset),
        "Upload-Length": str(state.length),
        "Cache-Control": "no-store",
    }
    if state.b3 is not None and state.sha256 is not None:
        headers["Upload-Blake3"] = state.b3
        headers["Upload-Sha256"] = state.sha256
    return headers


def _owner(principal: Principal) -> str:
    if not principal.may_upload:
        raise Forbidden("uploading needs write permission on a collection")
    return principal.username


@router.options("", response_class=Response)
def tus_options() -> Response:
    return Response(
        status_code=status.HTTP_204_NO_CONTENT,
        headers={"Tus-Resumable": TUS_VERSION, "Tus-Version": TUS_VERSION},
    )


@router.post("", status_code=status.HTTP_201_CREATED, response_class=Response)
def create_upload(
    request: Request,
    node: NodeDep,
    principal: PrincipalDep,
    upload_length: Annotated[int, Header(alias="Upload-Length", ge=0)],
) -> Response:
    """Start an upload of ``Upload-Length`` bytes; ``Location`` names it."""
    owner = _owner(principal)
    if upload_length > node.settings.max_upload_bytes:  # before any byte reaches the disk
        raise TooLarge(node.settings.max_upload_bytes)
    area = UploadArea.of(node)
    state = area.create(owner, upload_length)
    if upload_length == 0:  # nothing will be appended: store the empty file now
        state = _append_and_finish(node, principal, state, 0, iter(()))
    return Response(
        status_code=status.HTTP_201_CREATED,
        headers={**_headers(state), "Location": f"{request.url.path.rstrip('/')}/{state.id}"},
    )


@router.head("/{upload_id}", response_class=Response)
def upload_offset(upload_id: str, node: NodeDep, principal: PrincipalDep) -> Response:
    """Where to resume: ``Upload-Offset``."""
    state = UploadArea.of(node).get(upload_id, _owner(principal))
    return Response(status_code=status.HTTP_200_OK, headers=_headers(state))


@router.get("/{upload_id}", response_model=UploadPublic)
def read_upload(upload_id: str, node: NodeDep, principal: PrincipalDep) -> UploadPublic:
    state = UploadArea.of(node).get(upload_id, _owner(principal))
    return UploadPublic(
        id=state.id,
        length=state.length,
        offset=state.offset,
        complete=state.complete,
        blake3=state.b3,
        sha256=state.sha256,
    )


def _pieces(stream: AsyncIterator[bytes]) -> Iterator[bytes]:
    """The body as pieces of about 1 MiB, for the worker thread; ends quietly on a hang-up."""

    async def next_piece() -> bytes:
        piece = bytearray()
        while len(piece) < PIECE:
            try:
                piece += await stream.__anext__()
            except (StopAsyncIteration, ClientDisconnect):
                break
        return bytes(piece)

    while piece := anyio.from_thread.run(next_piece):
        yield piece


def _append_and_finish(
    node: ArchiveNode,
    principal: Principal,
    state: UploadState,
    offset: int,
    pieces: Iterator[bytes],
) -> UploadState:
    area = UploadArea.of(node)
    area.append(state, offset, pieces)
    if state.offset == state.length:
        area.finish(node, state)
        assert state.b3 is not None
        with node.session() as session:
            grant_upload(principal, state.b3, session=session)
    return state


def _locks(request: Request) -> dict[str, anyio.Lock]:
    state = request.app.state
    if getattr(state, "upload_locks", None) is None:
        state.upload_locks = {}
    locks: dict[str, anyio.Lock] = state.upload_locks
    return locks


@router.patch("/{upload_id}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response)
@body_limit("upload")
async def append_upload(
    upload_id: str,
    request: Request,
    node: NodeDep,
    principal: PrincipalDep,
    upload_offset: Annotated[int, Header(alias="Upload-Offset", ge=0)],
    content_type: Annotated[str, Header(alias="Content-Type")] = "",
) -> Response:
    """Append the body at ``Upload-Offset``; 409 if that is not where the upload stands."""
    if content_type.split(";")[0].strip() != OFFSET_TYPE:
        raise InvalidInput(f"Content-Type must be {OFFSET_TYPE}")
    owner = _owner(principal)
    await anyio.to_thread.run_sync(UploadArea.of(node).get, upload_id, owner)  # 404 if not theirs
    locks = _locks(request)
    lock = locks.setdefault(upload_id, anyio.Lock())
    async with upload_slot(request), lock:  # one append at a time per upload
        state = await anyio.to_thread.run_sync(UploadArea.of(node).get, upload_id, owner)
        run = functools.partial(
            _append_and_finish, node, principal, state, upload_offset, _pieces(request.stream())
        )
        state = await anyio.to_thread.run_sync(run, limiter=upload_limiter(request))
    if state.complete:
        locks.pop(upload_id, None)
    return Response(status_code=status.HTTP_204_NO_CONTENT, headers=_headers(state))
