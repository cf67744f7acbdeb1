"""Datasets: named ``collection/dataset`` for people, by persistent id for citations."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from archive.datasets import get_dataset, list_datasets, list_versions
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
    collection: Annotated[
        str | None, Query(pattern=NAME_PATTERN, description="Only this collection's")
    ] = None,
) -> list[DatasetSummaryPublic]:
    return [DatasetSummaryPublic.of(c, d) for c, d in list_datasets(collection, session=session)]


@router.get(
    "/{collection}/{dataset}",
    response_model=DatasetPublic,
    responses={404: {"model": ErrorPublic}},
)
def read_dataset(
    collection: CollectionName, dataset: DatasetName, session: SessionDep
) -> DatasetPublic:
    row = get_dataset(collection, dataset, session=session)
    assert row.id is not None
    return DatasetPublic.with_versions(collection, row, list_versions(row.id, session=session))
