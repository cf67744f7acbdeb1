"""Exporting a dataset version as a BagIt 1.0 bag (RFC 8493), as a folder or a zip.

The bag holds the version's files under ``data/``; ``manifest-sha256.txt`` and
``manifest-sha512.txt`` (§2.1.3); ``bagit.txt`` (§2.1.1); ``bag-info.txt``
(§2.2.2) with Payload-Oxum, Bagging-Date, Source-Organization (the archive's
``organization``), External-Identifier (the dataset's persistent id), the title
and every metadata field of the dataset; and ``tagmanifest-sha256.txt`` and
``tagmanifest-sha512.txt`` over the tag files (§2.2.1).

Each file is read once: its bytes come from :func:`archive.checkout.stream_blob`,
which proves BLAKE3, SHA-256 and size against the catalog, and SHA-512 is computed
on the same bytes as they are written. The SHA-256 in the manifest is the
catalog's. A zip is written as a stream (``zipfile`` with ZIP64, one member at a
time, stored uncompressed: archived files are often compressed already), with the
bag in one top-level folder. Output appears only when complete: it is written
beside its destination under a hidden name and renamed into place.

Paths in manifests are percent-encoded as RFC 8493 §2.1.3 requires (``%`` as
``%25``); bagit-python 1.9.0 does not decode that (its issue #157), so it cannot
validate a bag holding a file whose name contains ``%``; :mod:`archive.bags` can.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import IO, Any

from archive.bags import encode_path
from archive.checkout import stream_blob
from archive.datasets import DatasetRef, get_dataset, get_version, iter_entries
from archive.errors import InvalidInput
from archive.node import ArchiveNode

ALGORITHMS = ("sha256", "sha512")
COMPUTED_LABELS = {"payload-oxum", "bagging-date", "bag-size", "bag-software-agent"}
"""Labels that describe the bag itself: the dataset's own (from an imported bag) are dropped."""
_LABEL = re.compile(r"^[^:\s]([^:\r\n]*[^:\s])?$")
SPOOL = 16 * 1024 * 1024


@dataclass
class BagExportReport:
    dataset: str
    version: int
    path: str
    zip: bool
    files: int = 0
    bytes: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class _FolderOut:
    """A bag folder, built under a hidden name beside ``final`` and renamed when complete."""

    def __init__(self, final: Path) -> None:
        self.final = final
        self.root = final.parent / f".{final.name}.partial-{uuid.uuid4().hex[:8]}"
        self.root.mkdir()

    @contextmanager
    def open(self, name: str, size: int) -> Iterator[IO[bytes]]:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "xb") as fh:
            yield fh

    def finish(self) -> None:
        os.replace(self.root, self.final)  # onto an empty folder, or none

    def abort(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


class _ZipOut:
    """A zip streamed to a hidden file beside ``final``, the bag in one top-level folder."""

    def __init__(self, final: Path) -> None:
        self.final = final
        self.top = final.name[:-4] if final.name.lower().endswith(".zip") else final.name
        self.tmp = final.parent / f".{final.name}.partial-{uuid.uuid4().hex[:8]}"
        self.zip = zipfile.ZipFile(self.tmp, "x", zipfile.ZIP_STORED, allowZip64=True)
        self.when = dt.datetime.now().timetuple()[:6]

    @contextmanager
    def open(self, name: str, size: int) -> Iterator[IO[bytes]]:
        info = zipfile.ZipInfo(f"{self.top}/{name}", date_time=self.when)
        info.external_attr = (stat.S_IFREG | 0o644) << 16
        info.file_size = size
        with self.zip.open(info, "w", force_zip64=size >= zipfile.ZIP64_LIMIT) as fh:
            yield fh

    def finish(self) -> None:
        self.zip.close()
        os.replace(self.tmp, self.final)

    def abort(self) -> None:
        self.zip.close()
        self.tmp.unlink(missing_ok=True)


def _software() -> str:
    try:
        return f"Permafrost {version('permafrost')}"
    except PackageNotFoundError:
        return "Permafrost"


def _value_lines(value: Any) -> list[str]:
    """A metadata value as bag-info values: strings as they are, lists repeated, others JSON."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    return [json.dumps(value, ensure_ascii=False, sort_keys=True)]


def bag_info(
    *,
    organization: str,
    pid: str,
    title: str,
    metadata: dict[str, Any],
    source: str,
    manifest_b3: str,
    files: int,
    nbytes: int,
    today: dt.date,
) -> bytes:
    """bag-info.txt (RFC 8493 §2.2.2): reserved labels first, then every metadata field.

    A metadata key that is not a valid label (a colon, a line break, or white space
    at either end) goes into one ``Permafrost-Metadata`` label as JSON. Values with
    line breaks are folded onto indented continuation lines.
    """
    fields: list[tuple[str, str]] = [
        ("Source-Organization", organization),
        ("External-Identifier", pid),
        ("Title", title),
        ("Internal-Sender-Identifier", source),
        ("Permafrost-Manifest-BLAKE3", manifest_b3),
        ("Bagging-Date", today.isoformat()),
        ("Bag-Software-Agent", _software()),
        ("Payload-Oxum", f"{nbytes}.{files}"),
        ("Bag-Size", _human(nbytes)),
    ]
    odd: dict[str, Any] = {}
    for key, value in metadata.items():
        if not _LABEL.match(key):
            odd[key] = value
        elif key.lower() not in COMPUTED_LABELS:
            fields += [(key, v) for v in _value_lines(value) if (key, v) not in fields]
    if odd:
        fields.append(("Permafrost-Metadata", json.dumps(odd, ensure_ascii=False, sort_keys=True)))
    lines = []
    for label, value in fields:
        folded = value.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\n  ")
        lines.append(f"{label}: {folded}\n")
    return "".join(lines).encode("utf-8")


def export_bag(
    node: ArchiveNode,
    ref: DatasetRef,
    out: Path,
    *,
    as_zip: bool = False,
    on_file: Callable[[int], None] | None = None,
) -> BagExportReport:
    """Write version ``ref.version`` (default: the latest) of a dataset as a bag at ``out``.

    Raises:
        NotFound: no such dataset or version.
        InvalidInput: ``out`` exists (a file, or a folder that is not empty).
        Unavailable, BlobDigestMismatch: a file has no good copy (nothing is left at ``out``).
    """
    started = time.perf_counter()
    if out.exists() and not (out.is_dir() and not as_zip and not any(out.iterdir())):
        raise InvalidInput(f"{out} exists; choose a new path for the bag")
    if not out.parent.is_dir():
        raise InvalidInput(f"{out.parent} is not a folder")
    writer: _FolderOut | _ZipOut = _ZipOut(out) if as_zip else _FolderOut(out)
    report = BagExportReport(f"{ref.collection}/{ref.dataset}", 0, str(out), as_zip)
    try:
        with ExitStack() as spools, node.session() as session:
            dataset = get_dataset(ref.collection, ref.dataset, session=session)
            ver = get_version(dataset, ref.version, session=session)
            assert ver.id is not None
            report.version = ver.number
            manifests: dict[str, IO[bytes]] = {
                alg: spools.enter_context(tempfile.SpooledTemporaryFile(SPOOL))
                for alg in ALGORITHMS
            }
            for entry in iter_entries(ver.id, session=session):
                name = "data/" + entry.path
                sha512 = hashlib.sha512()
                with writer.open(name, entry.size) as fh:
                    for chunk in stream_blob(entry.b3, session=session, tiers=node.tiers):
                        sha512.update(chunk)
                        fh.write(chunk)
                line = encode_path(name)
                manifests["sha256"].write(f"{entry.sha256}  {line}\n".encode())
                manifests["sha512"].write(f"{sha512.hexdigest()}  {line}\n".encode())
                report.files += 1
                report.bytes += entry.size
                if on_file is not None:
                    on_file(entry.size)
            info = bag_info(
                organization=node.settings.organization,
                pid=dataset.pid,
                title=dataset.title,
                metadata=dict(dataset.metadata_),
                source=f"{ref.collection}/{ref.dataset}@v{ver.number}",
                manifest_b3=ver.manifest_b3,
                files=report.files,
                nbytes=report.bytes,
                today=dt.datetime.now(dt.UTC).date(),
            )
            _write_tag_files(writer, manifests, info)
        writer.finish()
    except BaseException:
        writer.abort()
        raise
    report.seconds = time.perf_counter() - started
    return report


def _write_tag_files(
    writer: _FolderOut | _ZipOut, manifests: dict[str, IO[bytes]], info: bytes
) -> None:
    """Payload manifests, bagit.txt and bag-info.txt, then the tag manifests over them."""
    tag_digests: list[tuple[str, dict[str, str]]] = []

    def put(name: str, pieces: Iterator[bytes], size: int) -> None:
        hashers = {alg: hashlib.new(alg) for alg in ALGORITHMS}
        with writer.open(name, size) as fh:
            for piece in pieces:
                for hasher in hashers.values():
                    hasher.update(piece)
                fh.write(piece)
        tag_digests.append((name, {alg: h.hexdigest() for alg, h in hashers.items()}))

    for alg, spool in manifests.items():
        size = spool.tell()
        spool.seek(0)
        put(f"manifest-{alg}.txt", _pieces(spool), size)
    declaration = b"BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n"
    put("bagit.txt", iter([declaration]), len(declaration))
    put("bag-info.txt", iter([info]), len(info))
    for alg in ALGORITHMS:
        body = "".join(f"{d[alg]}  {encode_path(n)}\n" for n, d in tag_digests).encode()
        with writer.open(f"tagmanifest-{alg}.txt", len(body)) as fh:
            fh.write(body)


def _pieces(source: IO[bytes]) -> Iterator[bytes]:
    while piece := source.read(1024 * 1024):
        yield piece


def _human(n: int) -> str:
    value = float(n)
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{n} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} bytes"
