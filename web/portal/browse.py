"""Collections, datasets and versions as pages; creating a dataset; asking for a restore."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response

from archive.catalog.models import Permission
from archive.dataset_edit import edit_dataset
from archive.datasets import (
    DatasetRef,
    EntryView,
    check_name,
    ensure_dataset,
    get_collection,
    get_dataset,
    get_version,
    iter_entries,
    list_collections,
    list_datasets,
    list_versions,
)
from archive.errors import Conflict, NotFound
from archive.node import ArchiveNode
from archive.replicas import replicas_of_version
from archive.restore import latest_ready_at, plan_restore, request_restore
from archive.status import version_status
from web.deps import CollectionName, DatasetName, NodeDep
from web.portal.guard import PageUser
from web.portal.rendering import render

router = APIRouter()

#: Files listed on a dataset page; larger versions say how many more there are.
MAX_LISTED = 2000


@router.get("/")
def home(request: Request, node: NodeDep, principal: PageUser) -> Response:
    with node.session() as session:
        collections = [
            c for c in list_collections(session=session) if principal.can(c.name, Permission.READ)
        ]
        counts: dict[str, int] = {}
        for coll, _ in list_datasets(session=session):
            counts[coll] = counts.get(coll, 0) + 1
    return render(
        request,
        "home.html",
        principal,
        collections=[
            (c, counts.get(c.name, 0), principal.permission_on(c.name)) for c in collections
        ],
    )


@router.get("/c/{collection}")
def collection_page(
    request: Request, collection: CollectionName, node: NodeDep, principal: PageUser
) -> Response:
    principal.require(collection, Permission.READ, what=f"collection {collection!r}")
    with node.session() as session:
        row = get_collection(collection, session=session)
        datasets = []
        for _, ds in list_datasets(collection, session=session):
            assert ds.id is not None
            versions = list_versions(ds.id, session=session)
            datasets.append((ds, versions[-1] if versions else None))
    return render(
        request,
        "collection.html",
        principal,
        collection=row,
        datasets=datasets,
        can_write=principal.can(collection, Permission.WRITE),
    )


def _split(text: str, sep: str) -> list[str]:
    return [part.strip() for part in re.split(sep, text) if part.strip()]


def _metadata(creators: str, description: str, license: str, keywords: str) -> dict[str, Any]:
    """The descriptive fields (DataCite-like: creators, description, rights, subjects)."""
    return {
        "creators": _split(creators, r"[\n;]"),
        "description": description.strip(),
        "license": license.strip(),
        "keywords": _split(keywords, r"[,\n]"),
    }


@router.post("/c/{collection}/datasets")
def create_dataset(
    collection: CollectionName,
    node: NodeDep,
    principal: PageUser,
    name: Annotated[str, Form(max_length=100)],
    title: Annotated[str, Form(max_length=1000)],
    creators: Annotated[str, Form(max_length=5000)] = "",
    description: Annotated[str, Form(max_length=20000)] = "",
    license: Annotated[str, Form(max_length=200)] = "",
    keywords: Annotated[str, Form(max_length=2000)] = "",
) -> Response:
    """A new dataset with its metadata (DataCite-like fields), empty until a first upload."""
    principal.require(collection, Permission.WRITE, what=f"collection {collection!r}")
    check_name("dataset", name)
    metadata = _metadata(creators, description, license, keywords)
    with node.session() as session:
        try:
            get_dataset(collection, name, session=session)
        except NotFound:
            pass
        else:
            raise Conflict(f"dataset {collection}/{name} exists already")
        ensure_dataset(collection, name, session=session, title=title.strip(), metadata=metadata)
    return RedirectResponse(f"/c/{collection}/{name}/upload", status_code=303)


@dataclass
class FileRow:
    entry: EntryView
    depth: int
    copies: list[dict[str, Any]]
    cold_only: bool


def _file_rows(
    node: ArchiveNode, entries: list[EntryView], replicas: dict[str, list[dict[str, Any]]]
) -> list[tuple[str, Any]]:
    """Folders and files in path order, each folder once before its contents."""
    rows: list[tuple[str, Any]] = []
    seen: set[str] = set()
    for entry in entries:
        parts = entry.path.split("/")
        for depth in range(1, len(parts)):
            folder = "/".join(parts[:depth])
            if folder not in seen:
                seen.add(folder)
                rows.append(("folder", (parts[depth - 1], depth - 1, folder)))
        copies = replicas.get(entry.b3, [])
        present = [c for c in copies if c["state"] == "present"]
        cold_only = bool(present) and all(
            node.settings.tiers[c["tier"]].role == "cold"
            for c in present
            if c["tier"] in node.settings.tiers
        )
        rows.append(("file", FileRow(entry, len(parts) - 1, copies, cold_only)))
    return rows


@router.get("/c/{collection}/{dataset}")
def dataset_page(
    request: Request,
    collection: CollectionName,
    dataset: DatasetName,
    node: NodeDep,
    principal: PageUser,
    v: int | None = None,
) -> Response:
    principal.require(collection, Permission.READ, what=f"dataset {collection}/{dataset}")
    with node.session() as session:
        row = get_dataset(collection, dataset, session=session)
        assert row.id is not None
        versions = list_versions(row.id, session=session)
        version = get_version(row, v, session=session) if versions else None
        status = rows = None
        total = 0
        if version is not None:
            assert version.id is not None
            status = version_status(node, version, session=session)
            entries = list(iter_entries(version.id, session=session, limit=MAX_LISTED))
            rows = _file_rows(node, entries, replicas_of_version(version.id, session=session))
            total = version.file_count
    return render(
        request,
        "dataset.html",
        principal,
        collection=collection,
        dataset=row,
        versions=versions,
        version=version,
        status=status,
        rows=rows,
        more=max(0, total - MAX_LISTED),
        can_write=principal.can(collection, Permission.WRITE),
    )


@router.post("/c/{collection}/{dataset}/edit")
def edit_dataset_page(
    collection: CollectionName,
    dataset: DatasetName,
    node: NodeDep,
    principal: PageUser,
    title: Annotated[str, Form(max_length=1000)],
    creators: Annotated[str, Form(max_length=5000)] = "",
    description: Annotated[str, Form(max_length=20000)] = "",
    license: Annotated[str, Form(max_length=200)] = "",
    keywords: Annotated[str, Form(max_length=2000)] = "",
) -> Response:
    """New title and metadata: a new version with the same files (see archive.dataset_edit)."""
    principal.require(collection, Permission.WRITE, what=f"dataset {collection}/{dataset}")
    with node.session() as session:
        version = edit_dataset(
            DatasetRef(collection, dataset),
            session=session,
            tier=node.hot,
            title=title.strip(),
            metadata=_metadata(creators, description, license, keywords),
            agent=f"permafrost/portal ({principal.username})",
        )
    suffix = f"?v={version.number}" if version is not None else ""
    return RedirectResponse(f"/c/{collection}/{dataset}{suffix}", status_code=303)


@router.post("/c/{collection}/{dataset}/restore")
def ask_restore(
    request: Request,
    collection: CollectionName,
    dataset: DatasetName,
    node: NodeDep,
    principal: PageUser,
    version: Annotated[int, Form(ge=1)],
    path: Annotated[str, Form(max_length=2048)],
) -> Response:
    """Ask for the cold copy of one file; answers an HTML fragment with when it is ready."""
    principal.require(collection, Permission.READ, what=f"dataset {collection}/{dataset}")
    with node.session() as session:
        row = get_version(
            get_dataset(collection, dataset, session=session), version, session=session
        )
        plan = plan_restore(node, row, path, session=session)
        requests = request_restore(
            node,
            plan,
            session=session,
            dataset=f"{collection}/{dataset}@v{version}",
            path=path,
            requested_by=principal.username,
        )
    return render(
        request,
        "restore_fragment.html",
        principal,
        ready_at=latest_ready_at(requests),
        readable_now=plan.readable_now,
        requests=len(requests),
    )
