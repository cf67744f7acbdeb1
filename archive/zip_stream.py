"""A version as a zip, produced while it is sent: no temporary file, memory of one chunk.

Entries are written ``STORED`` (research data rarely gains from deflate, and the
client gets bytes as fast as the tiers give them) with data descriptors, which
``zipfile`` writes by itself when its output cannot seek (APPNOTE 4.3.9), and
ZIP64 records for members of 4 GiB or more. Each file's catalog lookups run in
a short session of their own before its bytes stream (see
:func:`archive.downloads.open_blob_stream`), so no transaction stays open while
the client reads.
"""

from __future__ import annotations

import io
import stat
import zipfile
from collections.abc import Iterator

from archive.catalog import models
from archive.datasets import iter_entries
from archive.downloads import open_blob_stream
from archive.node import ArchiveNode

FLUSH_AT = 1024 * 1024


class _Sink(io.RawIOBase):
    """Collects what ``zipfile`` writes until the generator hands it on; cannot seek."""

    def __init__(self) -> None:
        self.pending = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.pending += data
        return len(data)

    def take(self) -> bytes:
        out = bytes(self.pending)
        self.pending.clear()
        return out


def stream_version_zip(node: ArchiveNode, version: models.Version, top: str) -> Iterator[bytes]:
    """The files of ``version`` under folder ``top`` of a zip, piece by piece.

    A file with no readable copy stops the stream short (the client sees a
    truncated, invalid zip rather than a complete wrong one).
    """
    assert version.id is not None
    with node.session() as session:
        entries = list(iter_entries(version.id, session=session))
    when = version.created_at.timetuple()[:6]
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for entry in entries:
            info = zipfile.ZipInfo(f"{top}/{entry.path}", date_time=when)
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            info.file_size = entry.size
            with node.session() as session:
                chunks = open_blob_stream(entry.b3, session=session, tiers=node.tiers)
            with archive.open(info, "w", force_zip64=entry.size >= zipfile.ZIP64_LIMIT) as member:
                for chunk in chunks:
                    member.write(chunk)
                    if len(sink.pending) >= FLUSH_AT:
                        yield sink.take()
            yield sink.take()
    yield sink.take()
