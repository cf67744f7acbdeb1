"""Liveness for load balancers and orchestrators: the process answers and so does the catalog."""

from __future__ import annotations

import sqlalchemy as sa
from fastapi import APIRouter

from web.deps import SessionDep
from web.schemas import ErrorPublic, HealthPublic

router = APIRouter(tags=["health"])


@router.get(
    "/healthz",
    response_model=HealthPublic,
    responses={503: {"model": ErrorPublic, "description": "The catalog does not answer"}},
)
def healthz(session: SessionDep) -> HealthPublic:
    """200 when a query reaches the catalog; 503 (via the error handlers) when it fails."""
    session.scalar(sa.select(sa.literal(1)))
    return HealthPublic(status="ok")
