"""Collections: the top level of the archive, each with its own replication policy."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from archive.catalog.models import Permission
from archive.datasets import ensure_collection, get_collection, list_collections, list_datasets
from archive.errors import Forbidden, NotFound
from web.auth import PrincipalDep
from web.deps import CollectionName, NodeDep, SessionDep
from web.schemas import CollectionCreate, CollectionDetailPublic, CollectionPublic, ErrorPublic

router = APIRouter(prefix="/collections", tags=["collections"])


@router.get("", response_model=list[CollectionPublic])
def read_collections(session: SessionDep, principal: PrincipalDep) -> list[CollectionPublic]:
    """The collections the caller may read."""
    rows = list_collections(session=session)
    return [CollectionPublic.of(c) for c in rows if principal.can(c.name, Permission.READ)]


@router.post(
    "",
    response_model=CollectionPublic,
    status_code=status.HTTP_201_CREATED,
    responses={200: {"model": CollectionPublic, "description": "It existed already"}},
)
def create_collection(
    body: CollectionCreate, node: NodeDep, response: Response, principal: PrincipalDep
) -> CollectionPublic:
    """Create a collection (administrators); one that exists answers 200, unchanged."""
    with node.session() as session:
        try:
            row = get_collection(body.name, session=session)
        except NotFound:
            row = None
        if row is not None and principal.can(body.name, Permission.READ):
            response.status_code = status.HTTP_200_OK
            return CollectionPublic.of(row)
        if not principal.is_admin:  # the same answer whether or not it exists
            raise Forbidden("only administrators create collections")
        row = ensure_collection(body.name, session=session, title=body.title)
    return CollectionPublic.of(row)


@router.get(
    "/{collection}",
    response_model=CollectionDetailPublic,
    responses={404: {"model": ErrorPublic}},
)
def read_collection(
    collection: CollectionName, session: SessionDep, principal: PrincipalDep
) -> CollectionDetailPublic:
    principal.require(collection, Permission.READ, what=f"collection {collection!r}")
    row = get_collection(collection, session=session)
    return CollectionDetailPublic.with_datasets(row, list_datasets(collection, session=session))
