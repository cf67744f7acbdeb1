"""What every federation route does with a request before its own work (issue 5).

The caller is known by its RFC 9421 signature (:func:`signed_caller`, a FastAPI
dependency), names are checked against their grammar before they touch storage,
and bodies are streamed with their length and ``Content-Digest`` checked
(:func:`receive`): a request that fails any of it changes nothing.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from typing import Annotated

import anyio
import anyio.from_thread
import anyio.to_thread
from fastapi import Depends, Request

from archive.node import ArchiveNode
from federation.errors import BadFederationRequest, UnsupportedMediaType
from federation.partners import ADDRESS, MANIFEST_NAME
from federation.signing import Caller, DigestChecker, SignedMessage, verify_request
from tiers import Upload

PREFIX = "/federation/v1"
PIECE = 1024 * 1024
QUEUED_PIECES = 4


def node_of(request: Request) -> ArchiveNode:
    node: ArchiveNode | None = getattr(request.app.state, "node", None)
    if node is None:
        raise RuntimeError("the archive node is not open: run the app with its lifespan")
    return node


def _target_uri(request: Request) -> str:
    """The URI the client signed, from the raw request line (never re-encoded)."""
    scope = request.scope
    host = request.headers.get("host", "")
    raw = scope.get("raw_path") or scope["path"].encode()
    query = scope.get("query_string", b"")
    target = raw.decode("latin-1") + (f"?{query.decode('latin-1')}" if query else "")
    return f"{scope.get('scheme', 'http')}://{host}{target}"


async def signed_caller(request: Request) -> Caller:
    """The partner whose signature on this request holds (its nonce is now spent)."""
    node = node_of(request)
    message = SignedMessage(request.method, _target_uri(request), request.headers)

    def verify() -> Caller:
        with node.session() as session:
            return verify_request(
                message, skew_seconds=node.settings.federation_skew_seconds, session=session
            )

    caller = await anyio.to_thread.run_sync(verify)
    limits = getattr(request.app.state, "rate_limits", None)
    if limits is not None:  # the web app's rate limits: from now on this partner's own bucket
        limits.vouch(caller.key_id)
    if request.method in ("GET", "HEAD", "DELETE"):
        checker = DigestChecker(caller.sha256)
        checker.check()  # these carry no body: the signed digest must be the empty one
    return caller


CallerDep = Annotated[Caller, Depends(signed_caller)]


def check_address(address: str) -> str:
    if not ADDRESS.match(address):
        raise BadFederationRequest(f"bad address {address[:80]!r}: 64 lowercase hex digits")
    return address


def check_manifest_name(name: str) -> str:
    if not MANIFEST_NAME.match(name):
        raise BadFederationRequest(
            f"bad manifest name {name[:120]!r}: <collection>/<dataset>/v<N>.json"
        )
    return name


def declared_length(request: Request, limit: int | None = None) -> int:
    declared = request.headers.get("content-length")
    if declared is None or not declared.isdigit():
        raise BadFederationRequest("Content-Length is required (no chunked uploads)")
    size = int(declared)
    if limit is not None and size > limit:
        raise BadFederationRequest(f"a body of {size:,} bytes is over the limit of {limit:,}")
    return size


def media_type(request: Request, *allowed: str) -> str:
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media not in allowed:
        raise UnsupportedMediaType(
            f"Content-Type {media or 'none'!r}; expected {' or '.join(allowed)}"
        )
    return media


async def _pieces(stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The body in pieces of about :data:`PIECE` bytes (one thread hop per piece)."""
    parts: list[bytes] = []
    size = 0
    async for chunk in stream:
        parts.append(chunk)
        size += len(chunk)
        if size >= PIECE:
            yield b"".join(parts)
            parts, size = [], 0
    if parts:
        yield b"".join(parts)


async def receive(request: Request, caller: Caller, size: int, upload: Upload | None) -> bytes:
    """Stream the body into ``upload`` (or collect it when None), checking length and digest.

    The event loop reads the socket while one worker thread hashes and writes the
    pieces already read (a queue of :data:`QUEUED_PIECES` between them), so parsing
    and hashing overlap on two cores instead of taking turns.

    Raises:
        BadFederationRequest: longer or shorter than declared, or not its Content-Digest.
    """
    checker = DigestChecker(caller.sha256)
    kept = bytearray()
    send, receive = anyio.create_memory_object_stream[bytes](QUEUED_PIECES)

    def consume() -> None:
        with receive:
            while True:
                try:
                    piece = anyio.from_thread.run(receive.receive)
                except anyio.EndOfStream:
                    return
                checker.update(piece)
                if upload is None:
                    kept.extend(piece)
                else:
                    upload.write(piece)

    async def produce() -> None:
        received = 0
        async with send:
            async for piece in _pieces(request.stream()):
                received += len(piece)
                if received > size:
                    raise BadFederationRequest(
                        f"the body is longer than its Content-Length ({size})"
                    )
                await send.send(piece)

    try:
        async with anyio.create_task_group() as group:
            group.start_soon(functools.partial(anyio.to_thread.run_sync, consume))
            await produce()
    except BaseExceptionGroup as failed:  # the first failure, as the handlers know it
        raise failed.exceptions[0] from None
    finally:
        receive.close()  # also when the consumer never started (an early disconnect)
    if checker.size != size:
        raise BadFederationRequest(f"the body has {checker.size} bytes, declared {size}")
    checker.check()
    return bytes(kept)
