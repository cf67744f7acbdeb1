"""Uploading a folder into a dataset, and downloading a version as a zip or a BagIt bag.

The upload page's script (``static/upload.js``) sends each file through the
resumable upload API (``/api/v1/uploads``, tus 1.0) and commits the version
through ``POST /api/v1/datasets/{c}/{d}/versions``; the session cookie and the
page's CSRF token authenticate both. Single files download through the API's
file route, which already streams with ranges and safe ``Content-Disposition``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response, StreamingResponse
from starlette.background import BackgroundTask

from archive.bag_export import export_bag
from archive.catalog.models import Permission
from archive.datasets import DatasetRef, get_dataset, get_version
from archive.zip_stream import stream_version_zip
from web.deps import CollectionName, DatasetName, NodeDep
from web.portal.guard import PageUser
from web.portal.rendering import render
from web.representation import content_disposition

router = APIRouter()


@router.get("/c/{collection}/{dataset}/upload")
def upload_page(
    request: Request,
    collection: CollectionName,
    dataset: DatasetName,
    node: NodeDep,
    principal: PageUser,
) -> Response:
    principal.require(collection, Permission.WRITE, what=f"dataset {collection}/{dataset}")
    with node.session() as session:
        row = get_dataset(collection, dataset, session=session)
    return render(request, "upload.html", principal, collection=collection, dataset=row)


@router.get("/c/{collection}/{dataset}/v/{number}/zip")
def download_zip(
    collection: CollectionName,
    dataset: DatasetName,
    number: int,
    node: NodeDep,
    principal: PageUser,
) -> Response:
    """The whole version as a zip, streamed as it is made."""
    principal.require(collection, Permission.READ, what=f"dataset {collection}/{dataset}")
    with node.session() as session:
        version = get_version(
            get_dataset(collection, dataset, session=session), number, session=session
        )
    top = f"{dataset}-v{number}"
    return StreamingResponse(
        stream_version_zip(node, version, top),
        media_type="application/zip",
        headers={
            "Content-Disposition": content_disposition(f"{top}.zip"),
            "X-Content-Type-Options": "nosniff",
        },
    )


@router.get("/c/{collection}/{dataset}/v/{number}/bag")
def download_bag(
    collection: CollectionName,
    dataset: DatasetName,
    number: int,
    node: NodeDep,
    principal: PageUser,
) -> Response:
    """The version as a BagIt bag (RFC 8493) in a zip.

    The bag is written to a scratch file first (its tag manifests need every
    payload digest before they can be written) and streamed from there.
    """
    principal.require(collection, Permission.READ, what=f"dataset {collection}/{dataset}")
    scratch = node.settings.data_dir / "tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="bag-", dir=scratch))
    name = f"{dataset}-v{number}-bag.zip"
    try:
        export_bag(node, DatasetRef(collection, dataset, number), folder / name, as_zip=True)
    except BaseException:
        _remove(folder)
        raise
    return FileResponse(
        folder / name,
        media_type="application/zip",
        headers={"Content-Disposition": content_disposition(name)},
        background=BackgroundTask(_remove, folder),
    )


def _remove(folder: Path) -> None:
    for path in folder.iterdir():
        path.unlink(missing_ok=True)
    folder.rmdir()
