"""How failures leave the API: one JSON shape (:class:`web.schemas.ErrorPublic`) for all.

The archive's errors already know their HTTP status (``PermafrostError.http_status``,
drawn in :mod:`archive.errors`) and carry data; here they are rendered, data
included, so a client can act on ``missing`` without parsing a sentence. Errors
from outside the archive's tree are translated at this boundary:

- ``tiers.TierError`` -> 503 with ``Retry-After``: storage could not serve now.
- ``sqlalchemy.exc.OperationalError`` -> 503: the catalog is unreachable or busy.
- ``sqlalchemy.exc.IntegrityError`` -> 409: a concurrent change won a race (retry).
- request validation and Starlette's own HTTP errors -> the same JSON shape,
  so the OpenAPI schema can promise one error body everywhere.
- a client that hangs up mid-upload -> 400, logged quietly (nobody reads it).
"""

from __future__ import annotations

import http
import logging
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match

from archive.batches import BatchDigestMismatch, BatchMemberRefused
from archive.errors import (
    BlobDigestMismatch,
    InvalidPath,
    InvalidTree,
    MissingBlobs,
    NotAuthenticated,
    PathCollision,
    PermafrostError,
    UnsupportedFile,
)
from archive.upload import UploadDigestMismatch
from tiers import TierError

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = "30"


def error_body(error: str, detail: str, **data: Any) -> dict[str, Any]:
    return {"error": error, "detail": detail, **{k: v for k, v in data.items() if v is not None}}


def error_response(
    status: int,
    error: str,
    detail: str,
    headers: Mapping[str, str] | None = None,
    **data: Any,
) -> JSONResponse:
    return JSONResponse(error_body(error, detail, **data), status_code=status, headers=headers)


def _data(exc: PermafrostError) -> dict[str, Any]:
    """The data an archive error carries, under the names of :class:`ErrorPublic`."""
    if isinstance(exc, MissingBlobs):
        return {"missing": exc.digests}
    if isinstance(exc, InvalidPath | UnsupportedFile):
        return {"path": exc.path, "reason": exc.reason}
    if isinstance(exc, PathCollision):
        return {"paths": exc.paths}
    if isinstance(exc, BatchDigestMismatch):
        found = {"algorithm": exc.algorithm, "expected": exc.expected, "found": exc.found}
        return {"blob": exc.blob, **found}
    if isinstance(exc, BatchMemberRefused):
        return {"blob": exc.blob, "reason": exc.reason}
    if isinstance(exc, UploadDigestMismatch | BlobDigestMismatch):
        return {"algorithm": exc.algorithm, "expected": exc.expected, "found": exc.found}
    if isinstance(exc, InvalidTree):
        return {"errors": [{"msg": str(p)} for p in exc.problems[:100]]}
    return {}


async def _permafrost_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, PermafrostError)
    if exc.http_status >= 500:
        log.error("%s %s failed: %s", request.method, request.url.path, exc)
    headers = (
        {"WWW-Authenticate": 'Bearer realm="permafrost"'}
        if isinstance(exc, NotAuthenticated)
        else None
    )
    return error_response(
        exc.http_status, type(exc).__name__, str(exc), headers=headers, **_data(exc)
    )


async def _tier_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, TierError)
    log.warning("%s %s: tier error: %s", request.method, request.url.path, exc)
    where = f"storage tier {exc.tier!r}" if exc.tier else "a storage tier"
    return error_response(
        503,
        type(exc).__name__,
        f"{where} could not serve the request, try again later: {exc}",
        headers={"Retry-After": RETRY_AFTER_SECONDS},
        retryable=exc.retryable,
    )


async def _catalog_unavailable(request: Request, exc: Exception) -> JSONResponse:
    log.warning("%s %s: catalog error: %s", request.method, request.url.path, exc)
    return error_response(
        503,
        "CatalogUnavailable",
        "the catalog database did not answer, try again later",
        headers={"Retry-After": RETRY_AFTER_SECONDS},
        retryable=True,
    )


async def _concurrent_change(request: Request, exc: Exception) -> JSONResponse:
    log.info("%s %s: integrity conflict: %s", request.method, request.url.path, exc)
    return error_response(
        409,
        "ConcurrentChange",
        "another request changed the same record at the same time; retry",
        retryable=True,
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # Only location, message and type: the offending input may be binary or huge.
    errors = [
        {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg")), "type": e["type"]}
        for e in exc.errors()
    ]
    summary = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors[:5])
    return error_response(422, "RequestValidationError", summary, errors=errors)


async def _client_gone(request: Request, exc: Exception) -> JSONResponse:
    log.info("%s %s: the client went away mid-request", request.method, request.url.path)
    return error_response(400, "ClientDisconnect", "the client closed the connection")


def _allowed_methods(request: Request) -> str:
    """Every method some route serves at this path (Starlette names only the first route's).

    Asks the router, through the public ``matches`` of each route, whether the same
    request with another method would be routed.
    """
    allowed = []
    for method in ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT"):
        probe = {**request.scope, "method": method}
        if any(route.matches(probe)[0] == Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return ", ".join(allowed)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    try:
        name = http.HTTPStatus(exc.status_code).phrase.title().replace(" ", "")
    except ValueError:
        name = "HTTPError"
    headers = dict(exc.headers or {})
    if exc.status_code == 405:  # RFC 9110 section 15.5.6: Allow lists what the resource supports
        headers["Allow"] = _allowed_methods(request)
    return error_response(exc.status_code, name, str(exc.detail), headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(PermafrostError, _permafrost_error)
    app.add_exception_handler(TierError, _tier_error)
    app.add_exception_handler(sa.exc.OperationalError, _catalog_unavailable)
    app.add_exception_handler(sa.exc.IntegrityError, _concurrent_change)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(ClientDisconnect, _client_gone)
