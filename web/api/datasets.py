"""Datasets: named ``collection/dataset`` for people, by persistent id for citations."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from archive.catalog.models import Permission
from archive.datasets import get_dataset, list_datasets, list_versions
from web.auth import PrincipalDep
from web.deps import CollectionName, DatasetName, SessionDep
from web.schemas import NAME_PATTERN, DatasetPublic, DatasetSummaryPublic, ErrorPublic

router = APIRouter(prefix="/datasets", tags=["datasets"])


@router.get(
    "",
    response_model=list[DatasetSummaryPublic],
    responses={404: {"model": ErrorPublic, "description": "No such collection"}},
)
def read_datasets(
    session: SessionDep,
    principal: PrincipalDep,
    collection: Annotated[
        str | None, Query(pattern=NAME_PATTERN, description="Only this collection's")
    ] = None,
) -> list[DatasetSummaryPublic]:
    """The datasets of the collections the caller may read."""
    if collection is not None:
        principal.require(collection, Permission.READ, what=f"collection {collection!r}")
    return [
        DatasetSummaryPublic.of(c, d)
        for c, d in list_datasets(collection, session=session)
        if principal.can(c, Permission.READ)
    ]


@router.get(
    "/{collection}/{dataset}",
    response_model=DatasetPublic,
    responses={404: {"model": ErrorPublic}},
)
def read_dataset(
    collection: CollectionName, dataset: DatasetName, session: SessionDep, principal: PrincipalDep
) -> DatasetPublic:
    principal.require(collection, Permission.READ, what=f"dataset {collection}/{dataset}")
    row = get_dataset(collection, dataset, session=session)
    assert row.id is not None
    return DatasetPublic.with_versions(collection, row, list_versions(row.id, session=session))
