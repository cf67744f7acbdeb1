"""Resumable uploads: a file sent in pieces at known offsets, hashed and stored at the end.

This is the server side of the tus 1.0 core protocol (tus.io/protocols/resumable-upload):
the client announces a length, appends pieces at the offset the server reports,
and after a dropped connection (or a closed tab) asks for the offset and goes on
from there. The browser computes nothing: when the last byte arrives the server
hashes the file (BLAKE3 and SHA-256, one read), stores it as a blob through the
same path as ``PUT /blobs/{b3}`` (:func:`archive.upload.store_stream`, deduplicated,
digest-checked) and keeps the digests for the client to commit a version with.

Pieces go to a scratch file under ``<data_dir>/tmp/uploads``; a JSON sidecar holds
the owner, the length and, once stored, the digests. Nothing is held in memory
beyond one piece.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import blake3

from archive.errors import Conflict, InvalidInput, NotFound
from archive.node import ArchiveNode
from archive.upload import store_stream
from tiers import CHUNK_SIZE

ID_RE = re.compile(r"^[A-Za-z0-9_-]{22,64}$")
MAX_UPLOAD = 5 * 1024**4
#: An upload untouched for this long is forgotten (its client is not coming back).
STALE_SECONDS = 7 * 24 * 3600.0


@dataclass
class UploadState:
    id: str
    owner: str
    length: int
    offset: int = 0
    b3: str | None = None
    sha256: str | None = None

    @property
    def complete(self) -> bool:
        return self.b3 is not None


class OffsetMismatch(Conflict):
    """The client appended at an offset other than the server's (tus: 409)."""

    def __init__(self, expected: int, offered: int) -> None:
        super().__init__(f"upload is at offset {expected}, not {offered}: ask with HEAD")
        self.expected = expected
        self.offered = offered


class UploadArea:
    """The uploads in progress, in one folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    @classmethod
    def of(cls, node: ArchiveNode) -> UploadArea:
        return cls(node.settings.data_dir / "tmp" / "uploads")

    def _part(self, upload_id: str) -> Path:
        return self.root / f"{upload_id}.part"

    def _meta(self, upload_id: str) -> Path:
        return self.root / f"{upload_id}.json"

    def create(self, owner: str, length: int) -> UploadState:
        if not 0 <= length <= MAX_UPLOAD:
            raise InvalidInput(f"Upload-Length must be between 0 and {MAX_UPLOAD}")
        self.forget_stale()
        state = UploadState(secrets.token_urlsafe(24), owner, length)
        self._part(state.id).touch()
        self._save(state)
        return state

    def forget_stale(self, max_age: float = STALE_SECONDS) -> int:
        """Delete uploads untouched for ``max_age`` seconds; returns how many."""
        cutoff = time.time() - max_age
        forgotten = 0
        for meta in self.root.glob("*.json"):
            part = meta.with_suffix(".part")
            try:
                touched = max(p.stat().st_mtime for p in (meta, part) if p.exists())
            except (OSError, ValueError):
                continue
            if touched < cutoff:
                part.unlink(missing_ok=True)
                meta.unlink(missing_ok=True)
                forgotten += 1
        return forgotten

    def _save(self, state: UploadState) -> None:
        meta = self._meta(state.id)
        tmp = meta.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(asdict(state)))
        tmp.replace(meta)

    def get(self, upload_id: str, owner: str) -> UploadState:
        """The upload, if it is ``owner``'s (another's is as missing as a made-up id).

        Raises:
            NotFound: no such upload for this owner.
        """
        meta = self._meta(upload_id) if ID_RE.match(upload_id) else None
        if meta is None or not meta.is_file():
            raise NotFound(f"no upload {upload_id}")
        state = UploadState(**json.loads(meta.read_text()))
        if state.owner != owner:
            raise NotFound(f"no upload {upload_id}")
        if not state.complete:
            state.offset = self._part(upload_id).stat().st_size
        return state

    def append(self, state: UploadState, offset: int, pieces: Iterator[bytes]) -> int:
        """Append ``pieces`` at ``offset``; returns the new offset (what was written counts
        even when the stream breaks off, so the client resumes from there).

        Raises:
            OffsetMismatch: ``offset`` is not where the upload stands.
            InvalidInput: the pieces go past the announced length.
        """
        if state.complete or offset != state.offset:
            raise OffsetMismatch(state.length if state.complete else state.offset, offset)
        with open(self._part(state.id), "ab") as sink:
            for piece in pieces:
                if sink.tell() + len(piece) > state.length:
                    sink.truncate(state.offset)
                    raise InvalidInput(f"more bytes than the Upload-Length of {state.length}")
                sink.write(piece)
                sink.flush()
                state.offset = sink.tell()
        return state.offset

    def finish(self, node: ArchiveNode, state: UploadState) -> UploadState:
        """Hash the complete file, store it as a blob, forget the scratch bytes."""
        part = self._part(state.id)
        hasher = blake3.blake3()
        for piece in _read(part):  # read, not mapped: mapped pages count as resident memory
            hasher.update(piece)
        b3 = hasher.hexdigest()
        digest, _ = store_stream(node, _read(part), expect_b3=b3, size=state.length)
        state.b3, state.sha256 = digest.b3, digest.sha256
        self._save(state)
        part.unlink(missing_ok=True)
        return state


def _read(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as source:
        while piece := source.read(CHUNK_SIZE):
            yield piece
