"""HTTP API v1: one module per noun, all behind the bearer-token check when one is set.

The check (and the security scheme it adds to the OpenAPI document) is only
installed when the server has a token, so the schema never promises a 401 that
the server would not give, nor asks clients for a header it would ignore.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from web.api import blobs, collections, datasets, events, files, health, replication, versions
from web.deps import require_token
from web.schemas import ErrorPublic

API_PREFIX = "/api/v1"

_UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorPublic, "description": "Missing or wrong bearer token"},
}
_COMMON_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorPublic, "description": "The body is not parseable (e.g. not UTF-8)"},
    422: {"model": ErrorPublic, "description": "Invalid input (`errors` or `reason` say why)"},
    503: {"model": ErrorPublic, "description": "Storage or catalog unavailable; retry later"},
}


def api_router(*, require_auth: bool) -> APIRouter:
    if require_auth:
        router = APIRouter(
            prefix=API_PREFIX,
            dependencies=[Depends(require_token)],
            responses=_UNAUTHORIZED | _COMMON_ERRORS,
        )
    else:
        router = APIRouter(prefix=API_PREFIX, responses=_COMMON_ERRORS)
    for module in (collections, datasets, versions, files, blobs, replication, events):
        router.include_router(module.router)
    return router


__all__ = ["API_PREFIX", "api_router", "health"]
