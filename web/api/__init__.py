"""HTTP API v1: one module per noun, all behind the bearer-token check when one is set."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from web.api import blobs, collections, datasets, files, health, versions
from web.deps import require_token
from web.schemas import ErrorPublic

API_PREFIX = "/api/v1"

_COMMON_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorPublic, "description": "Missing or wrong bearer token"},
    422: {"model": ErrorPublic, "description": "Invalid input (`errors` or `reason` say why)"},
    503: {"model": ErrorPublic, "description": "Storage or catalog unavailable; retry later"},
}


def api_router() -> APIRouter:
    router = APIRouter(
        prefix=API_PREFIX, dependencies=[Depends(require_token)], responses=_COMMON_ERRORS
    )
    for module in (collections, datasets, versions, files, blobs):
        router.include_router(module.router)
    return router


__all__ = ["API_PREFIX", "api_router", "health"]
