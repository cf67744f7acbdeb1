"""A dataset's preservation history (PREMIS events) and the audit metrics (issue 4)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel

from archive.catalog.models import Permission
from archive.datasets import get_dataset
from archive.events import dataset_events, event_dict
from fixity.status import render_metrics
from web.auth import PrincipalDep
from web.deps import CollectionName, DatasetName, NodeDep, SessionDep
from web.schemas import ErrorPublic

router = APIRouter(tags=["events"])
metrics_router = APIRouter(tags=["health"])


class EventPublic(BaseModel):
    """One PREMIS event: eventType, outcome, the object, the agent, the time."""

    id: int
    type: str
    object_type: str
    object_id: str
    tier: str | None
    outcome: str
    detail: dict[str, Any]
    agent: str
    time: dt.datetime


@router.get(
    "/datasets/{collection}/{dataset}/events",
    response_model=list[EventPublic],
    responses={404: {"model": ErrorPublic}},
)
def read_events(
    collection: CollectionName,
    dataset: DatasetName,
    session: SessionDep,
    principal: PrincipalDep,
) -> list[EventPublic]:
    """Everything that happened to the dataset's versions, manifests and blobs, oldest
    first: ingestion, digests, replication, fixity checks, repairs, restores, deletions."""
    principal.require(collection, Permission.READ, what=f"dataset {collection}/{dataset}")
    row = get_dataset(collection, dataset, session=session)
    return [EventPublic(**event_dict(e)) for e in dataset_events(row, session=session)]


@metrics_router.get("/metrics", response_class=PlainTextResponse)
def metrics(node: NodeDep, session: SessionDep) -> PlainTextResponse:
    """Prometheus metrics: audits done, bytes verified, failures, coverage, queue depth."""
    return PlainTextResponse(
        render_metrics(node, session=session),
        media_type="text/plain; version=0.0.4; charset=utf-8",
    )
