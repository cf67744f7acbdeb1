"""The wire format of a batch upload (``POST /blobs/batch``), shared by client and server.

A POSIX tar stream: first ``index.json`` (``{"format": "permafrost-batch/1", "blobs":
[{"blake3", "sha256", "size"}, ...]}``), then one regular member per blob, in index
order, named by its BLAKE3 hex and holding its original bytes (see
:mod:`archive.batches` for how the server proves them). Kept apart from the server
side so the CLI does not import the catalog to send a batch.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass

BATCH_FORMAT = "permafrost-batch/1"
INDEX_NAME = "index.json"
BLOCK = 512
TAR_END = b"\0" * (2 * BLOCK)
#: Bytes of the index per blob, at most (a generous bound, to size batches by).
INDEX_BYTES_PER_BLOB = 200


@dataclass(frozen=True)
class BatchClaim:
    """One index entry: what the sender says a member is."""

    b3: str
    sha256: str
    size: int


def member_header(name: str, size: int) -> bytes:
    """The ustar header of a regular member (mode 0444, owner 0, mtime 0)."""
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o444, 0
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


def index_member(claims: Sequence[BatchClaim]) -> bytes:
    """The ``index.json`` member, header and padding included."""
    body = json.dumps(
        {
            "format": BATCH_FORMAT,
            "blobs": [{"blake3": c.b3, "sha256": c.sha256, "size": c.size} for c in claims],
        },
        separators=(",", ":"),
    ).encode()
    return member_header(INDEX_NAME, len(body)) + body + padding(len(body))


def member_span(size: int) -> int:
    """Bytes one member of ``size`` bytes takes in the stream (header and padding too)."""
    return BLOCK + size + (-size % BLOCK)


def batch_length(claims: Sequence[BatchClaim]) -> int:
    """The exact length of the whole batch body, for ``Content-Length``."""
    return len(index_member(claims)) + sum(member_span(c.size) for c in claims) + len(TAR_END)
