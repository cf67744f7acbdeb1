"""Importing a BagIt bag (RFC 8493) as the next version of a dataset.

A bag arrives as a folder or as a zip or tar (plain or compressed). An archive is
unpacked by :mod:`archive.safe_extract` into a private temporary folder that is
removed afterwards, whatever happens. The bag is then checked whole
(:func:`archive.bags.check_bag`: every manifest, every algorithm, every file),
and only a bag that passes reaches :func:`archive.ingest.ingest_tree`, so an
invalid bag leaves the catalog and the tiers exactly as they were.

The payload (``data/``) becomes the version, paths relative to ``data/``; the
fields of bag-info.txt become the dataset's metadata (every label kept, repeated
labels as lists) and its title comes from ``Title`` or ``External-Description``.
Tag files other than the standard ones are not archived (a warning says so).

After the commit, the SHA-256 that ingest recorded for every file is compared with
the bag's SHA-256 manifest when it has one. ``ingest_tree`` commits as it ends, so
this check cannot stop the commit: a difference can only mean the files changed
between validation and ingest (another process writing into a folder bag), and is
reported as an integrity failure naming the files and the version.
"""

from __future__ import annotations

import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archive.bags import CheckedBag, InvalidBag, check_bag
from archive.datasets import DatasetRef, check_name, get_dataset, get_version, iter_entries
from archive.errors import IntegrityError, InvalidInput
from archive.ingest import IngestProgress, ingest_tree
from archive.node import ArchiveNode
from archive.safe_extract import ExtractLimits, safe_extract

ARCHIVE_SUFFIXES = (".tar.gz", ".tar.bz2", ".tar.xz", ".tgz", ".tbz2", ".txz", ".tar", ".zip")


class BagChangedDuringImport(IntegrityError):
    """The committed files differ from the bag's SHA-256 manifest (files changed mid-import)."""

    def __init__(self, version: str, paths: list[str]) -> None:
        shown = ", ".join(paths[:5]) + (" ..." if len(paths) > 5 else "")
        super().__init__(
            f"{version} was committed, but {len(paths)} file(s) differ from the bag's "
            f"sha256 manifest (changed while being imported?): {shown}"
        )
        self.version = version
        self.paths = paths


@dataclass
class BagImportReport:
    dataset: str
    version: int
    created: bool
    bag: str
    bag_version: str
    algorithms: list[str]
    files: int = 0
    bytes: int = 0
    new_blobs: int = 0
    new_bytes: int = 0
    deduplicated: int = 0
    sha256_checked: int = 0
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def bag_root(folder: Path) -> Path:
    """The bag in an unpacked archive: ``bagit.txt`` at the top or in its one folder.

    Raises:
        InvalidBag: no bag there.
    """
    if (folder / "bagit.txt").is_file():
        return folder
    children = list(folder.iterdir())
    if len(children) == 1 and children[0].is_dir() and (children[0] / "bagit.txt").is_file():
        return children[0]
    raise InvalidBag(
        folder.name,
        ["no bagit.txt at the top of the archive or in its single top-level folder"],
    )


def default_dataset_name(source: Path) -> str:
    """A dataset name from a bag's folder or archive name (``my bag.tar.gz`` -> ``my-bag``).

    Raises:
        InvalidInput: nothing usable is left of the name.
    """
    name = source.name
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", name).lstrip("._-")[:100].rstrip("-")
    if not cleaned:
        raise InvalidInput(f"cannot make a dataset name from {source.name!r}: pass --dataset")
    return check_name("dataset", cleaned)


def import_bag(
    node: ArchiveNode,
    source: Path,
    collection: str,
    dataset: str | None = None,
    *,
    limits: ExtractLimits | None = None,
    tmp_dir: Path | None = None,
    message: str = "",
    progress: IngestProgress | None = None,
    agent: str = "permafrost/bag",
) -> BagImportReport:
    """Validate the bag at ``source`` (folder, zip or tar) and ingest its payload.

    ``tmp_dir`` is where an archive is unpacked (default: ``<data_dir>/tmp``, on the
    archive's own disk rather than a possibly small ``/tmp``).

    Raises:
        InvalidBag: the bag is invalid (every reason; nothing stored).
        UnsafeArchive: the zip or tar is unsafe or too large (nothing stored).
        BagChangedDuringImport: see the module docstring.
    """
    check_name("collection", collection)
    if source.is_dir():
        return _import_folder(node, source, collection, dataset, message, progress, agent)
    if not source.is_file():
        raise InvalidInput(f"{source}: no such bag (a folder, .zip or .tar[.gz|.bz2|.xz])")
    scratch = tmp_dir or node.settings.data_dir / "tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="permafrost-bag-", dir=scratch) as unpacked:
        safe_extract(source, Path(unpacked), limits)
        root = bag_root(Path(unpacked))
        name = dataset or default_dataset_name(source if root == Path(unpacked) else root)
        report = _import_folder(node, root, collection, name, message, progress, agent)
        report.bag = source.name
        return report


def _import_folder(
    node: ArchiveNode,
    root: Path,
    collection: str,
    dataset: str | None,
    message: str,
    progress: IngestProgress | None,
    agent: str,
) -> BagImportReport:
    started = time.perf_counter()
    ref = DatasetRef(collection, check_name("dataset", dataset or default_dataset_name(root)))
    checked = check_bag(root, max_manifest_lines=node.settings.bag_max_manifest_lines)
    ingested = ingest_tree(
        node,
        root / "data",
        ref,
        message=message or f"Imported from BagIt {checked.version} bag {root.name}",
        title=checked.title,
        metadata=dict(checked.info),
        progress=progress,
        agent=agent,
    )
    compared = _cross_check(node, ref, ingested.version, checked)
    return BagImportReport(
        dataset=ingested.dataset,
        version=ingested.version,
        created=ingested.created,
        bag=root.name,
        bag_version=checked.version,
        algorithms=checked.algorithms,
        files=ingested.files,
        bytes=ingested.bytes,
        new_blobs=ingested.new_blobs,
        new_bytes=ingested.new_bytes,
        deduplicated=ingested.deduplicated,
        sha256_checked=compared,
        seconds=time.perf_counter() - started,
        warnings=checked.warnings,
    )


def _cross_check(node: ArchiveNode, ref: DatasetRef, number: int, checked: CheckedBag) -> int:
    """Compare the committed entries with the bag's SHA-256 manifest; returns files compared."""
    if not checked.sha256:
        return 0
    with node.session() as session:
        version = get_version(
            get_dataset(ref.collection, ref.dataset, session=session), number, session=session
        )
        assert version.id is not None
        recorded = {e.path: e.sha256 for e in iter_entries(version.id, session=session)}
    differ = sorted(
        path
        for path in recorded.keys() | checked.sha256.keys()
        if recorded.get(path) != checked.sha256.get(path)
    )
    if differ:
        raise BagChangedDuringImport(f"{ref.collection}/{ref.dataset}@v{number}", differ)
    return len(recorded)
