"""Collections: the top level of the archive, each with its own replication policy."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from archive.datasets import ensure_collection, get_collection, list_collections, list_datasets
from archive.errors import NotFound
from web.deps import CollectionName, NodeDep, SessionDep
from web.schemas import CollectionCreate, CollectionDetailPublic, CollectionPublic, ErrorPublic

router = APIRouter(prefix="/collections", tags=["collections"])


@router.get("", response_model=list[CollectionPublic])
def read_collections(session: SessionDep) -> list[CollectionPublic]:
    return [CollectionPublic.of(c) for c in list_collections(session=session)]


@router.post(
    "",
    response_model=CollectionPublic,
    status_code=status.HTTP_201_CREATED,
    responses={200: {"model": CollectionPublic, "description": "It existed already"}},
)
def create_collection(
    body: CollectionCreate, node: NodeDep, response: Response
) -> CollectionPublic:
    """Create a collection; creating one that exists answers 200 with it, unchanged."""
    with node.session() as session:
        try:
            row = get_collection(body.name, session=session)
            response.status_code = status.HTTP_200_OK
        except NotFound:
            row = ensure_collection(body.name, session=session, title=body.title)
    return CollectionPublic.of(row)


@router.get(
    "/{collection}",
    response_model=CollectionDetailPublic,
    responses={404: {"model": ErrorPublic}},
)
def read_collection(collection: CollectionName, session: SessionDep) -> CollectionDetailPublic:
    row = get_collection(collection, session=session)
    return CollectionDetailPublic.with_datasets(row, list_datasets(collection, session=session))
