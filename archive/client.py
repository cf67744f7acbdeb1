"""A client of the Permafrost HTTP API, for the bulk CLI: ask, upload, commit, and retry.

It speaks the upload flow of ``web/api`` (``POST /api/v1/blobs/missing``,
``PUT /api/v1/blobs/{b3}`` with ``X-Permafrost-Sha256``, ``POST /api/v1/blobs/batch``
for many small blobs in one tar stream, ``POST /api/v1/datasets/{c}/{d}/versions``)
over one pooled ``httpx.Client``, which is safe to share between upload threads.
Bodies are streamed from disk by a generator, so memory stays flat whatever the
file size (a batch holds one small file in memory at a time).

Retrying lives here, around every call, not in the callers (as restic wraps its
backends): connection errors, timeouts and 5xx answers are retried with
exponential backoff and full jitter; a 4xx is never retried (the same request
would be refused the same way). Errors are translated at this boundary::

    ServerUnreachable(Unavailable)   exit 1: no good answer after every retry
    ServerRefused(InvalidInput)      exit 2: a 4xx, with the server's own error and detail
    ├── Unauthorized                 401/403: the token is missing or wrong
    └── DigestRefused                422 on an upload: the bytes sent are not the ones hashed
                                     (``data["blob"]`` names the member of a refused batch)
    FileChangedWhileSending(UnsupportedFile)  the file's length changed mid-upload
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from archive.batch_format import (
    TAR_END,
    BatchClaim,
    batch_length,
    index_member,
    member_header,
    padding,
)
from archive.errors import InvalidInput, Unavailable, UnsupportedFile

MISSING_BATCH = 10_000
"""The server's limit on one ``/blobs/missing`` question (web.schemas.MAX_MISSING_QUERY)."""
MAX_COMMIT_ENTRIES = 1_000_000
"""The server's limit on the entries of one NDJSON commit (web.schemas.MAX_STREAM_ENTRIES)."""
COMMIT_LINES_PER_CHUNK = 2000
CHUNK = 1024 * 1024


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter: attempt n waits U(0, min(cap, base * 2**n))."""

    attempts: int = 6
    base_seconds: float = 0.5
    max_seconds: float = 30.0

    def delay(self, attempt: int) -> float:
        return random.uniform(0, min(self.max_seconds, self.base_seconds * 2**attempt))


class ServerUnreachable(Unavailable):
    def __init__(self, server: str, attempts: int, last_error: str) -> None:
        super().__init__(
            f"server {server} did not answer after {attempts} attempt(s): {last_error}. "
            "Nothing is lost: run the same command again to continue."
        )
        self.server = server
        self.attempts = attempts
        self.last_error = last_error


class ServerRefused(InvalidInput):
    def __init__(self, status: int, error: str, detail: str, data: dict[str, Any]) -> None:
        super().__init__(f"the server refused the request ({status} {error}): {detail}")
        self.status = status
        self.error = error
        self.detail = detail
        self.data = data


class Unauthorized(ServerRefused):
    def __init__(self, status: int, error: str, detail: str, data: dict[str, Any]) -> None:
        super().__init__(status, error, detail, data)
        self.args = (
            f"the server refused the token ({status}): {detail}. "
            "Pass --token or set PERMAFROST_TOKEN.",
        )


class DigestRefused(ServerRefused):
    """The server computed another digest for the bytes sent (the file changed)."""


class FileChangedWhileSending(UnsupportedFile):
    pass


def _file_body(path: Path, size: int, label: str) -> Iterator[bytes]:
    """A file's bytes in chunks, refusing to send more or fewer than ``size``."""
    sent = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            sent += len(chunk)
            if sent > size:
                raise FileChangedWhileSending(label, "grew while being uploaded")
            yield chunk
    if sent != size:
        raise FileChangedWhileSending(label, "shrank while being uploaded")


@dataclass(frozen=True)
class BatchLimits:
    """What one batch may carry on the server (``GET /blobs/batch``)."""

    member_below: int
    max_members: int
    max_bytes: int


@dataclass(frozen=True)
class BatchFile:
    """One small file to send in a batch, with the digests it was hashed to."""

    b3: str
    sha256: str
    path: Path
    size: int
    label: str


def _batch_body(files: Sequence[BatchFile]) -> Iterator[bytes]:
    """A batch (:mod:`archive.batch_format`) read from disk, in pieces of about 1 MiB;
    a file whose length is not the one hashed is refused before it is sent."""
    piece = bytearray(index_member([BatchClaim(f.b3, f.sha256, f.size) for f in files]))
    for f in files:
        with open(f.path, "rb") as fh:
            data = fh.read(f.size + 1)
        if len(data) != f.size:
            change = "grew" if len(data) > f.size else "shrank"
            raise FileChangedWhileSending(f.label, f"{change} while being uploaded")
        piece += member_header(f.b3, f.size)
        piece += data
        piece += padding(f.size)
        if len(piece) >= CHUNK:
            yield bytes(piece)
            piece = bytearray()
    piece += TAR_END
    yield bytes(piece)


class ArchiveClient:
    """The API of one server, with its token; ``retries`` counts the retries made."""

    def __init__(
        self,
        server: str,
        token: str | None = None,
        *,
        retry: RetryPolicy | None = None,
        timeout: float = 120.0,
        connections: int = 16,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.server = server.rstrip("/")
        if not self.server.startswith(("http://", "https://")):
            raise InvalidInput(f"server URL must start with http:// or https://: {server!r}")
        headers = {"User-Agent": "permafrost-cli"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.retry = retry or RetryPolicy()
        self.sleep = sleep
        self.retries = 0
        self._lock = threading.Lock()
        try:
            self.http = httpx.Client(
                base_url=f"{self.server}/api/v1",
                headers=headers,
                timeout=httpx.Timeout(timeout, connect=15.0),
                limits=httpx.Limits(
                    max_connections=connections, max_keepalive_connections=connections
                ),
                transport=transport,
            )
        except httpx.InvalidURL as exc:
            raise InvalidInput(f"invalid server URL {server!r}: {exc}") from exc

    def __enter__(self) -> ArchiveClient:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _request(
        self,
        method: str,
        url: str,
        *,
        json: Any = None,
        body: Callable[[], Iterator[bytes]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """One API call, retried on connection errors, 5xx and 429 (after ``Retry-After``).

        Raises:
            ServerUnreachable: every attempt failed.
            ServerRefused: a 4xx answer (never retried).
        """
        last = ""
        asked = 0.0  # what the server's Retry-After asked for, at least
        for attempt in range(self.retry.attempts):
            if attempt:
                with self._lock:
                    self.retries += 1
                self.sleep(max(asked, self.retry.delay(attempt - 1)))
            try:
                response = self.http.request(
                    method,
                    url,
                    json=json,
                    content=body() if body is not None else None,
                    headers=headers,
                )
            except httpx.UnsupportedProtocol as exc:
                raise InvalidInput(f"cannot reach {self.server}: {exc}") from exc
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                continue
            if response.status_code >= 500 or response.status_code == 429:  # 429: too fast
                last = f"HTTP {response.status_code} {_error(response)[1]}"
                asked = _retry_after(response, self.retry.max_seconds)
                continue
            if response.status_code >= 400:
                raise _refused(response, upload=body is not None)
            return response
        raise ServerUnreachable(self.server, self.retry.attempts, last)

    def check(self) -> None:
        """Prove that the server answers and takes the token, before any work is done."""
        self._request("POST", "/blobs/missing", json={"blobs": []})

    def missing(self, b3s: Sequence[str]) -> set[str]:
        """Which of these contents the server lacks, asked in batches of 10,000."""
        lacking: set[str] = set()
        for i in range(0, len(b3s), MISSING_BATCH):
            answer = self._request(
                "POST", "/blobs/missing", json={"blobs": list(b3s[i : i + MISSING_BATCH])}
            )
            lacking.update(answer.json()["missing"])
        return lacking

    def put_blob(self, b3: str, sha256: str, path: Path, size: int, label: str) -> bool:
        """Stream one file as blob ``b3``; True if the server stored it anew.

        Raises:
            DigestRefused: the bytes do not hash to ``b3``/``sha256`` (the file changed).
            FileChangedWhileSending: the file's length changed.
        """
        response = self._request(
            "PUT",
            f"/blobs/{b3}",
            body=lambda: _file_body(path, size, label),
            headers={
                "Content-Length": str(size),
                "Content-Type": "application/octet-stream",
                "X-Permafrost-Sha256": sha256,
            },
        )
        return response.status_code == 201

    def batch_limits(self) -> BatchLimits | None:
        """What a batch may carry on this server; None if it takes no batches (a server
        from before ``POST /blobs/batch``, or one that does not pack)."""
        try:
            answer = self._request("GET", "/blobs/batch")
        except ServerRefused as exc:
            if exc.status in (404, 405):
                return None
            raise
        data = answer.json()
        limits = BatchLimits(
            int(data["member_below"]), int(data["max_members"]), int(data["max_bytes"])
        )
        return limits if limits.member_below > 0 else None

    def put_batch(self, files: Sequence[BatchFile]) -> list[str]:
        """Send small files as one batch (stored as one pack); the BLAKE3s stored anew.

        Raises:
            DigestRefused: a file's bytes do not hash to what it was hashed to
                (``data["blob"]`` says which); nothing of the batch was stored.
            FileChangedWhileSending: a file's length changed.
        """
        length = batch_length([BatchClaim(f.b3, f.sha256, f.size) for f in files])
        response = self._request(
            "POST",
            "/blobs/batch",
            body=lambda: _batch_body(files),
            headers={"Content-Length": str(length), "Content-Type": "application/x-tar"},
        )
        created: list[str] = response.json()["created"]
        return created

    def commit(
        self,
        collection: str,
        dataset: str,
        entries: list[dict[str, Any]],
        *,
        message: str = "",
        title: str | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Commit a version; returns the version and whether it is new (a retry is harmless:
        an identical commit creates nothing).

        Sent as NDJSON, streamed (``POST .../versions/stream``), so a version of
        hundreds of thousands of entries is never one JSON document in memory on
        either side.
        """
        header = {"message": message, "title": title}
        response = self._request(
            "POST",
            f"/datasets/{quote(collection)}/{quote(dataset)}/versions/stream",
            body=lambda: _ndjson(header, entries),
            headers={"Content-Type": "application/x-ndjson"},
        )
        version: dict[str, Any] = response.json()
        return version, response.status_code == 201


def _ndjson(header: dict[str, Any], entries: Sequence[dict[str, Any]]) -> Iterator[bytes]:
    yield json.dumps(header).encode() + b"\n"
    for i in range(0, len(entries), COMMIT_LINES_PER_CHUNK):
        lines = [
            json.dumps(e, separators=(",", ":")) for e in entries[i : i + COMMIT_LINES_PER_CHUNK]
        ]
        yield ("\n".join(lines) + "\n").encode()


def _error(response: httpx.Response) -> tuple[str, str, dict[str, Any]]:
    try:
        data = response.json()
    except ValueError:
        return response.reason_phrase, response.text[:200], {}
    if not isinstance(data, dict):
        return response.reason_phrase, str(data)[:200], {}
    return str(data.get("error", "")), str(data.get("detail", "")), data


def _retry_after(response: httpx.Response, cap: float) -> float:
    """Seconds a 429 or 503 asks to wait (RFC 9110 §10.2.3, the delay form), at most ``cap``."""
    value = response.headers.get("retry-after", "")
    return min(cap, float(value)) if value.isascii() and value.isdigit() else 0.0


def _refused(response: httpx.Response, *, upload: bool) -> ServerRefused:
    error, detail, data = _error(response)
    status = response.status_code
    if status in (401, 403):
        return Unauthorized(status, error, detail, data)
    if upload and status == 422 and error in ("UploadDigestMismatch", "BatchDigestMismatch"):
        return DigestRefused(status, error, detail, data)
    return ServerRefused(status, error, detail, data)
