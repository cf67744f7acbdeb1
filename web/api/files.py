"""File downloads: one entry of a version, streamed, with HTTP's caching and range rules.

The body streams from the tier through a worker thread (the archive's services are
synchronous) and is never held whole. The catalog lookups, and the first read of a
copy, happen before the response starts, so a missing file is a 404 and an
unreadable blob a 503, not a broken body; the session is closed before the
first byte is sent. A path no entry could have (``a//b``, a control character)
is a 404 as well, not a 422: the schema cannot state every path rule, and no
such file exists. Header rules (ETag, ranges, names, digests) live in
:mod:`web.representation`, with the RFC sections they follow.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Response, status
from fastapi.responses import StreamingResponse

from archive.access import Principal
from archive.catalog.models import Permission
from archive.datasets import EntryView, get_entry
from archive.downloads import open_blob_stream
from archive.errors import InvalidPath, NotFound
from archive.paths import normalize_path
from web.auth import PrincipalDep
from web.deps import (
    CollectionName,
    DatasetName,
    NodeDep,
    SessionDep,
    VersionSelector,
    resolve_version,
)
from web.errors import error_response
from web.representation import (
    RangeNotSatisfiable,
    content_disposition,
    digest_headers,
    entity_tag,
    if_range_holds,
    none_match,
    select_range,
)
from web.schemas import ErrorPublic

router = APIRouter(prefix="/datasets/{collection}/{dataset}/versions", tags=["files"])

FILE_ROUTE = "/{version}/files/{path:path}"
IMMUTABLE = "private, max-age=31536000, immutable"
REVALIDATE = "private, no-cache"
_BINARY: dict[str, Any] = {
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": _BINARY, "description": "The whole file"},
    206: {"content": _BINARY, "description": "The requested byte range (RFC 9110 section 14)"},
    304: {"description": "Not modified: If-None-Match named the current ETag"},
    404: {"model": ErrorPublic, "description": "No such dataset, version or file"},
    416: {"model": ErrorPublic, "description": "Range not satisfiable"},
    503: {"model": ErrorPublic, "description": "No copy can be read now"},
}

FilePath = Annotated[str, Path(description="Path of the file inside the version")]


def _find(
    collection: str,
    dataset: str,
    version: str,
    path: str,
    session: SessionDep,
    principal: Principal,
) -> tuple[EntryView, dict[str, str]]:
    """The entry and the headers every answer about it carries."""
    principal.require(collection, Permission.READ, what=f"dataset {collection}/{dataset}")
    _, row = resolve_version(collection, dataset, version, session=session)
    assert row.id is not None
    try:
        normalized = normalize_path(path)
    except InvalidPath as exc:  # no entry can have this name: it is simply not there
        raise NotFound(f"no file {path!r} in this version ({exc.reason})") from exc
    entry = get_entry(row.id, normalized, session=session)
    headers = {
        "ETag": entity_tag(entry.b3),
        "Cache-Control": REVALIDATE if version == "latest" else IMMUTABLE,
    }
    return entry, headers


def _representation(entry: EntryView) -> dict[str, str]:
    return {
        "Accept-Ranges": "bytes",
        "Content-Disposition": content_disposition(entry.path),
        "X-Content-Type-Options": "nosniff",
        **digest_headers(entry.sha256),
    }


@router.get(FILE_ROUTE, response_class=Response, responses=_RESPONSES)
def download_file(
    collection: CollectionName,
    dataset: DatasetName,
    version: VersionSelector,
    path: FilePath,
    node: NodeDep,
    session: SessionDep,
    principal: PrincipalDep,
    range_header: Annotated[str | None, Header(alias="Range")] = None,
    if_none_match: Annotated[str | None, Header(alias="If-None-Match")] = None,
    if_range: Annotated[str | None, Header(alias="If-Range")] = None,
) -> Response:
    """The file's bytes; ``Range`` gives a part (206), ``If-None-Match`` a 304."""
    entry, headers = _find(collection, dataset, version, path, session, principal)
    if none_match(if_none_match, headers["ETag"]):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    headers |= _representation(entry)
    try:
        selected = (
            select_range(range_header, entry.size)
            if if_range_holds(if_range, headers["ETag"])
            else None
        )
    except RangeNotSatisfiable as exc:
        headers["Content-Range"] = exc.content_range
        return error_response(416, "RangeNotSatisfiable", str(exc), headers=headers)
    if selected is None:
        start, stop, code = 0, entry.size, status.HTTP_200_OK
    else:
        start, stop, code = selected.start, selected.stop, status.HTTP_206_PARTIAL_CONTENT
        headers["Content-Range"] = selected.content_range
    headers["Content-Length"] = str(stop - start)
    chunks = open_blob_stream(entry.b3, session=session, tiers=node.tiers, start=start, stop=stop)
    return StreamingResponse(
        chunks, status_code=code, headers=headers, media_type="application/octet-stream"
    )


@router.head(
    FILE_ROUTE,
    response_class=Response,
    responses={200: _RESPONSES[200], 304: _RESPONSES[304], 404: _RESPONSES[404]},
)
def file_headers(
    collection: CollectionName,
    dataset: DatasetName,
    version: VersionSelector,
    path: FilePath,
    session: SessionDep,
    principal: PrincipalDep,
    if_none_match: Annotated[str | None, Header(alias="If-None-Match")] = None,
) -> Response:
    """What a GET would answer, without the body (size, ETag, digests)."""
    entry, headers = _find(collection, dataset, version, path, session, principal)
    if none_match(if_none_match, headers["ETag"]):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    headers |= _representation(entry)
    headers["Content-Length"] = str(entry.size)
    return Response(
        status_code=status.HTTP_200_OK, headers=headers, media_type="application/octet-stream"
    )
