"""Copies and restores: archive status, collection policies, restore requests (issue 3).

A restore is asked for in two steps, so the cost is always seen first: a POST
without ``confirm`` answers the plan (what is cold, how many bytes, the price and
typical delay of each retrieval speed); the same POST with ``confirm: true`` asks
the tiers and answers 202 with when the bytes should be readable.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from fastapi import APIRouter, Response, status
from pydantic import BaseModel, Field
from sqlmodel import col, select

from archive.catalog import models
from archive.catalog.models import Permission, Role
from archive.datasets import get_collection, get_dataset, get_version, parse_ref
from archive.errors import ConfigError, InvalidInput
from archive.policy import ReplicationPolicy, parse_policy
from archive.replication import plan, targets_of
from archive.restore import latest_ready_at, plan_restore, request_restore
from archive.status import archive_status, version_status
from web.auth import PrincipalDep
from web.deps import CollectionName, DatasetName, NodeDep, SessionDep, VersionSelector
from web.schemas import ErrorPublic

router = APIRouter(tags=["replication"])


class PolicyPublic(BaseModel):
    collection: str
    policy: ReplicationPolicy
    own: bool = Field(description="False when the collection follows the default policy")
    targets: list[str]


class RestoreCreate(BaseModel):
    dataset: str = Field(pattern=r"^[^/@]+/[^/@]+(@v?\d+)?$", examples=["lab/run42@v2"])
    path: str | None = Field(default=None, max_length=2048)
    speed: str = Field(default="standard", max_length=20)
    days: int | None = Field(default=None, ge=1, le=365)
    confirm: bool = False


class RestorePublic(BaseModel):
    id: int
    tier: str
    key: str
    dataset: str
    path: str
    speed: str
    days: int
    state: str
    ready_at: dt.datetime | None
    expires_at: dt.datetime | None
    created_at: dt.datetime


class RestoreAnswer(BaseModel):
    plan: dict[str, Any]
    requests: list[RestorePublic] = []
    ready_at: dt.datetime | None = None


def _public(row: models.RestoreRequest, tiers: dict[int, str]) -> RestorePublic:
    assert row.id is not None
    return RestorePublic(
        id=row.id,
        tier=tiers.get(row.tier_id, "?"),
        key=row.key,
        dataset=row.dataset,
        path=row.path,
        speed=row.speed,
        days=row.days,
        state=row.state,
        ready_at=row.ready_at,
        expires_at=row.expires_at,
        created_at=row.created_at,
    )


@router.get("/status", response_model=dict[str, Any])
def read_status(node: NodeDep, session: SessionDep, principal: PrincipalDep) -> dict[str, Any]:
    """Replicas by tier and state, queue depth, oldest pending work, datasets preserved.

    The whole archive's state: for curators and administrators.
    """
    principal.require_role(Role.CURATOR, what="archive status")
    return archive_status(node, session=session)


@router.get(
    "/datasets/{collection}/{dataset}/versions/{version}/status",
    response_model=dict[str, Any],
    responses={404: {"model": ErrorPublic}},
)
def read_version_status(
    collection: CollectionName,
    dataset: DatasetName,
    version: VersionSelector,
    node: NodeDep,
    session: SessionDep,
    principal: PrincipalDep,
) -> dict[str, Any]:
    """Copies per target tier for one version, e.g. ``hot 1/1, cold 0/1: copying``."""
    principal.require(collection, Permission.READ, what=f"dataset {collection}/{dataset}")
    row = get_version(
        get_dataset(collection, dataset, session=session),
        None if version == "latest" else int(version),
        session=session,
    )
    return version_status(node, row, session=session).as_dict()


@router.get(
    "/collections/{collection}/policy",
    response_model=PolicyPublic,
    responses={404: {"model": ErrorPublic}},
)
def read_policy(
    collection: CollectionName, node: NodeDep, session: SessionDep, principal: PrincipalDep
) -> PolicyPublic:
    principal.require(collection, Permission.READ, what=f"collection {collection!r}")
    row = get_collection(collection, session=session)
    return PolicyPublic(
        collection=collection,
        policy=parse_policy(row.policy, node.settings.policy),
        own=bool(row.policy),
        targets=targets_of(node, row),
    )


@router.put(
    "/collections/{collection}/policy",
    response_model=PolicyPublic,
    responses={404: {"model": ErrorPublic}},
)
def update_policy(
    collection: CollectionName, body: ReplicationPolicy, node: NodeDep, principal: PrincipalDep
) -> PolicyPublic:
    """Set the policy (``manage`` permission); missing copies are planned at once, extra
    ones are kept (never dropped silently)."""
    principal.require(collection, Permission.MANAGE, what=f"collection {collection!r}")
    parse_policy(json.loads(body.model_dump_json()), node.settings.policy)  # validates roles
    with node.session() as session:
        row = get_collection(collection, session=session)
        row.policy = json.loads(body.model_dump_json())
        try:
            targets = targets_of(node, row)
        except ConfigError as exc:  # the policy cannot be met with these tiers
            raise InvalidInput(str(exc)) from exc
        session.add(row)
        session.flush()
        plan(node, session=session, collection=collection)
    return PolicyPublic(collection=collection, policy=body, own=True, targets=targets)


@router.get("/restores", response_model=list[RestorePublic])
def read_restores(
    node: NodeDep,
    session: SessionDep,
    principal: PrincipalDep,
    state: str | None = None,
    limit: int = 100,
) -> list[RestorePublic]:
    """Recent restore requests of datasets the caller may read, newest first."""
    stmt = select(models.RestoreRequest).order_by(col(models.RestoreRequest.id).desc())
    if state is not None:
        stmt = stmt.where(models.RestoreRequest.state == state)
    tiers = {tid: name for name, tid in node.tier_ids(session=session).items()}
    rows = session.exec(stmt.limit(max(1, min(limit, 1000)))).all()
    return [
        _public(r, tiers)
        for r in rows
        if principal.can(r.dataset.split("/", 1)[0], Permission.READ)
    ]


@router.post(
    "/restores",
    response_model=RestoreAnswer,
    responses={
        202: {"model": RestoreAnswer, "description": "Requested"},
        404: {"model": ErrorPublic},
    },
)
def create_restore(
    body: RestoreCreate, node: NodeDep, response: Response, principal: PrincipalDep
) -> RestoreAnswer:
    """Plan (and with ``confirm``, request) a restore of cold copies (``read`` permission)."""
    ref = parse_ref(body.dataset)
    principal.require(
        ref.collection, Permission.READ, what=f"dataset {ref.collection}/{ref.dataset}"
    )
    with node.session() as session:
        version = get_version(
            get_dataset(ref.collection, ref.dataset, session=session),
            ref.version,
            session=session,
        )
        restore_plan = plan_restore(node, version, body.path, session=session)
        answer = RestoreAnswer(plan=restore_plan.as_dict(node))
        if body.confirm and restore_plan.objects:
            rows = request_restore(
                node,
                restore_plan,
                session=session,
                speed=body.speed,
                days=body.days,
                dataset=str(ref),
                path=body.path or "",
                requested_by=principal.username,
            )
            tiers = {tid: name for name, tid in node.tier_ids(session=session).items()}
            answer.requests = [_public(r, tiers) for r in rows]
            answer.ready_at = latest_ready_at(rows)
            response.status_code = status.HTTP_202_ACCEPTED
    return answer
