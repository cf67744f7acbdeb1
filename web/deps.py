"""What routes are handed: the node, a catalog session, checked path parameters.

Who is calling is :mod:`web.auth`'s business.

The node is built once per process in the app's lifespan (``app.state.node``);
nothing here reads configuration. A route that writes opens its own
``node.session()`` so it commits before it answers; read-only routes take
:data:`SessionDep`, a read-only session (``node.reading()``: on SQLite it never
waits for a writer) closed when the route function returns, before the response
is sent (``scope="function"``), so no transaction is held open while a body streams.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Path, Request
from sqlmodel import Session

from archive.catalog import models
from archive.datasets import get_dataset, get_version
from archive.node import ArchiveNode
from web.schemas import HEX64, NAME_PATTERN

#: ``latest`` or a version number; at most nine digits, so it always fits the catalog's integers.
VERSION_PATTERN = r"^(?:latest|[1-9][0-9]{0,8})$"

CollectionName = Annotated[
    str, Path(pattern=NAME_PATTERN, description="Collection name", examples=["climate"])
]
DatasetName = Annotated[str, Path(pattern=NAME_PATTERN, description="Dataset name")]
VersionSelector = Annotated[
    str, Path(pattern=VERSION_PATTERN, description="Version number, or `latest`")
]
BlobAddress = Annotated[str, Path(pattern=HEX64, description="BLAKE3 of the content")]


def get_node(request: Request) -> ArchiveNode:
    node: ArchiveNode | None = getattr(request.app.state, "node", None)
    if node is None:
        raise RuntimeError("the archive node is not open: run the app with its lifespan")
    return node


NodeDep = Annotated[ArchiveNode, Depends(get_node)]


def get_session(node: NodeDep) -> Iterator[Session]:
    with node.reading() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def parse_version(selector: str) -> int | None:
    """``latest`` -> None (the newest version), else the number."""
    return None if selector == "latest" else int(selector)


def resolve_version(
    collection: str, dataset: str, selector: str, *, session: Session
) -> tuple[models.Dataset, models.Version]:
    """The dataset and version a URL names.

    Raises:
        NotFound: no such dataset or version.
    """
    row = get_dataset(collection, dataset, session=session)
    return row, get_version(row, parse_version(selector), session=session)
