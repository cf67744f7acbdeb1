"""HTTP API v1: one module per noun, every route behind :mod:`web.auth`.

Each route names the permission it needs (:class:`archive.access.Principal`);
what the caller may not read answers 404, as if it did not exist.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from web.api import (
    blobs,
    collections,
    datasets,
    events,
    files,
    health,
    replication,
    uploads,
    versions,
)
from web.schemas import ErrorPublic

API_PREFIX = "/api/v1"

_COMMON_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorPublic, "description": "The body is not parseable (e.g. not UTF-8)"},
    401: {"model": ErrorPublic, "description": "No valid bearer token or session"},
    403: {"model": ErrorPublic, "description": "Visible, but this change is not allowed"},
    422: {"model": ErrorPublic, "description": "Invalid input (`errors` or `reason` say why)"},
    503: {"model": ErrorPublic, "description": "Storage or catalog unavailable; retry later"},
}


def api_router() -> APIRouter:
    router = APIRouter(prefix=API_PREFIX, responses=_COMMON_ERRORS)
    for module in (collections, datasets, versions, files, blobs, uploads, replication, events):
        router.include_router(module.router)
    return router


__all__ = ["API_PREFIX", "api_router", "health"]
