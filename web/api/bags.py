"""BagIt bags (RFC 8493) uploaded whole: ``POST /api/v1/bags?collection=C&dataset=D``.

The body is a zip or a tar (plain, gzip, bzip2 or xz), recognised by its first
bytes. It is streamed to a temporary file beside the archive's data (never held in
memory) and refused with 413 as soon as it passes the size limit; then the service
``permafrost import-bag`` calls (:func:`archive.bag_import.import_bag`: safe
extraction, strict validation, ingest) runs in a worker thread. The answer is 201
with the new version and the validator's warnings (200 if identical to the
latest), or 422 with every reason (``errors``) when the bag is invalid or the
archive unsafe; nothing is stored then.

Limits come from the :func:`get_bag_limits` dependency, which a deployment (or a
test) overrides with ``app.dependency_overrides``.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import Annotated

import anyio.to_thread
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from pydantic import BaseModel

from archive.bag_import import import_bag
from archive.catalog.models import Permission
from archive.safe_extract import ExtractLimits
from web.api import API_PREFIX
from web.api.blobs import upload_slot
from web.auth import PrincipalDep
from web.body_limits import body_limit
from web.deps import NodeDep, resolve_version
from web.schemas import NAME_PATTERN, ErrorPublic, VersionPublic

PIECE = 1024 * 1024
MEDIA_TYPES = ("application/zip", "application/x-tar", "application/gzip")

router = APIRouter(prefix="/bags", tags=["bags"])


def get_bag_limits() -> ExtractLimits:
    """How large an uploaded bag may be, packed and unpacked."""
    return ExtractLimits()


BagLimits = Annotated[ExtractLimits, Depends(get_bag_limits)]


class BagImportPublic(BaseModel):
    dataset: str
    version: VersionPublic
    created: bool
    bag_version: str
    algorithms: list[str]
    files: int
    bytes: int
    sha256_checked: int
    warnings: list[str]


async def _receive(request: Request, target: Path, limit: int) -> int:
    """Stream the body to ``target`` in pieces of about 1 MiB; 413 past ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"the bag is larger than the limit of {limit} bytes")
    received = 0
    with open(target, "wb") as sink:
        piece = bytearray()
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise HTTPException(413, f"the bag is larger than the limit of {limit} bytes")
            piece += chunk
            if len(piece) >= PIECE:
                await anyio.to_thread.run_sync(sink.write, bytes(piece))
                piece.clear()
        await anyio.to_thread.run_sync(sink.write, bytes(piece))
    return received


@router.post(
    "",
    response_model=BagImportPublic,
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {"model": BagImportPublic, "description": "Identical to the latest version"},
        413: {"model": ErrorPublic, "description": "Larger than the size limit"},
        422: {"model": ErrorPublic, "description": "Invalid bag or unsafe archive (`errors`)"},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {t: {"schema": {"type": "string", "format": "binary"}} for t in MEDIA_TYPES},
        }
    },
)
@body_limit("upload")
async def upload_bag(
    request: Request,
    node: NodeDep,
    limits: BagLimits,
    response: Response,
    principal: PrincipalDep,
    collection: Annotated[str, Query(pattern=NAME_PATTERN, description="Collection name")],
    dataset: Annotated[str, Query(pattern=NAME_PATTERN, description="Dataset name")],
) -> BagImportPublic:
    """Validate a bag strictly (bagit-python plus RFC 8493 checks) and ingest its payload.

    Needs ``write`` on the collection (administrators may name a new one).
    """
    if not principal.is_admin:
        principal.require(collection, Permission.WRITE, what=f"collection {collection!r}")
    async with upload_slot(request):  # the bag's bytes and its whole import
        scratch = node.settings.data_dir / "tmp"
        scratch.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="permafrost-upload-", dir=scratch) as folder:
            upload = Path(folder) / "bag"
            await _receive(request, upload, limits.max_bytes)
            run = functools.partial(
                import_bag,
                node,
                upload,
                collection,
                dataset,
                limits=limits,
                tmp_dir=scratch,
                agent=f"permafrost/api ({principal.username})",
            )
            report = await anyio.to_thread.run_sync(run)
    if not report.created:
        response.status_code = status.HTTP_200_OK
    with node.session() as session:
        _, version = resolve_version(collection, dataset, str(report.version), session=session)
        public = VersionPublic.of(version)
    return BagImportPublic(
        dataset=report.dataset,
        version=public,
        created=report.created,
        bag_version=report.bag_version,
        algorithms=report.algorithms,
        files=report.files,
        bytes=report.bytes,
        sha256_checked=report.sha256_checked,
        warnings=report.warnings,
    )


def bags_router() -> APIRouter:
    """The bags route under ``/api/v1``."""
    outer = APIRouter(prefix=API_PREFIX)
    outer.include_router(router)
    return outer
