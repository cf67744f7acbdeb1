"""How large a request body may be, and how long it may stall (issue 8: limits).

Every route gets a limit, applied when it first reads its body:

- routes that read their body whole (JSON documents and forms, which FastAPI parses
  in memory) get ``max_json_body_bytes``;
- routes marked :func:`body_limit` get a larger one: ``"upload"``
  (``max_upload_bytes``) for the routes that stream their body to disk or to a tier
  and enforce their own finer limits, ``"commit"`` (``max_commit_body_bytes``) for
  the JSON version commit, ``"batch"`` (``max_batch_bytes``) for a batch of small
  blobs in one tar stream (``POST /blobs/batch``).

A declared ``Content-Length`` over the limit is answered 413 before a byte is read; a body that
turns out longer (chunked, or a lying header) is cut off with 413 as the limit is
passed. A body that stalls for ``body_idle_seconds`` (a client that declared more
than it sends and waits) is cut off with 408, so it cannot hold a thread forever.
Either way the route sees its body end in an error and keeps nothing (uploads are
staged until verified), and the answer is the API's one error shape, whatever the
route made of the interruption.

A pure ASGI middleware (no ``BaseHTTPMiddleware``): it wraps ``receive`` and ``send``
and never buffers a body.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, TypeVar

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from archive.config import Settings
from archive.errors import TooLarge
from web.errors import error_response

BodyKind = Literal["upload", "commit", "batch"]
F = TypeVar("F", bound=Callable[..., Any])

_MARK = "permafrost_body_limit"


def body_limit(kind: BodyKind) -> Callable[[F], F]:
    """Mark a route's endpoint as taking a body larger than a JSON document."""

    def mark(endpoint: F) -> F:
        setattr(endpoint, _MARK, kind)
        return endpoint

    return mark


class BodyRefused(Exception):
    """Raised from ``receive`` to the route reading a body that broke a limit."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail


class BodyLimits:
    """The middleware: ``app.add_middleware(BodyLimits, settings=settings)``."""

    def __init__(self, app: ASGIApp, *, settings: Settings) -> None:
        self.app = app
        self.limits: dict[BodyKind | None, int] = {
            None: settings.max_json_body_bytes,
            "upload": settings.max_upload_bytes,
            "commit": settings.max_commit_body_bytes,
            "batch": settings.max_batch_bytes,
        }
        self.idle_seconds = settings.body_idle_seconds

    def limit_for(self, scope: Scope) -> int:
        """The limit of the route serving this request (known once it is routed)."""
        return self.limits[getattr(scope.get("endpoint"), _MARK, None)]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = 0
        received = 0
        ended = False
        refused: BodyRefused | None = None
        started = False

        def refuse(status: int, error: str, detail: str) -> BodyRefused:
            nonlocal refused
            refused = BodyRefused(status, error, detail)
            return refused

        async def limited_receive() -> Message:
            nonlocal received, ended, limit
            if ended:  # the body is in: later calls only wait for a hang-up
                return await receive()
            if not limit:  # the first read: the route is known now, nothing read yet
                limit = self.limit_for(scope)
                declared = _declared_length(scope)
                if declared is not None and declared > limit:
                    raise refuse(413, "TooLarge", str(TooLarge(limit)))
            try:
                with anyio.fail_after(self.idle_seconds):
                    message = await receive()
            except TimeoutError:
                stalled = f"the body stalled for {self.idle_seconds:g} s before it was complete"
                raise refuse(408, "RequestTimeout", stalled) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                ended = not message.get("more_body", False)
                if received > limit:
                    raise refuse(413, "TooLarge", str(TooLarge(limit)))
            return message

        async def checked_send(message: Message) -> None:
            nonlocal started
            if refused is not None:  # whatever the route made of it, the answer is ours
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, checked_send)
        except Exception:
            if refused is None:
                raise
        if refused is not None and not started:
            await _refuse(scope, receive, send, refused)


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit():
            return int(value)
    return None


async def _refuse(scope: Scope, receive: Receive, send: Send, refused: BodyRefused) -> None:
    response = error_response(refused.status, refused.error, refused.detail)
    # The rest of the body is not read: the connection cannot carry another request.
    response.headers["Connection"] = "close"
    await response(scope, receive, send)
