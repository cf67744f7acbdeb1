"""Requests per token, and per client address for the rest (issue 8: limits).

A token bucket per key (``rate_per_second`` refill, ``rate_burst`` capacity): a
client may send a burst at once, then the average rate; past it the answer is 429
with ``Retry-After`` (RFC 6585 §4), before any body is read or any catalog lookup
made. The ``limits`` library was considered: it offers fixed and moving windows,
not a bucket with a burst, and its moving window keeps a timestamp per request.

Keys: a request whose bearer token, portal session or partner signing key (the
``keyid`` of a federation request's signature) was already proven valid in this
process is counted against that credential; every other request (no
credentials, or credentials not yet proven) against its client address. So a
caller cannot escape the limit by sending made-up tokens, each of which would
otherwise get a fresh bucket: :func:`vouch` (called by :mod:`web.auth` once a
credential checks out) is what moves a credential to a bucket of its own.

State is in process memory, guarded by a lock, shared by every thread of one
server process; several processes each apply the limit on their own (docs/security.md).
Behind a reverse proxy, list it in ``trusted_proxies`` (:mod:`web.proxies`) so the
client address is the caller's, not the proxy's. ``/healthz`` is never limited.
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from archive.config import Settings
from web.errors import error_response

EXEMPT_PATHS = frozenset({"/healthz"})
#: Buckets kept at most; full (idle) ones are dropped first.
MAX_KEYS = 100_000
#: Credentials remembered as proven; the least recently used are forgotten first.
MAX_VOUCHED = 10_000


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class RateLimits:
    """Token buckets by key, safe to share between threads."""

    def __init__(
        self,
        *,
        per_token: tuple[float, int],
        per_address: tuple[float, int],
    ) -> None:
        self.rates = {"token": per_token, "address": per_address}
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._vouched: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def of(cls, settings: Settings) -> RateLimits:
        return cls(
            per_token=(settings.rate_per_second, settings.rate_burst),
            per_address=(settings.anonymous_rate_per_second, settings.anonymous_rate_burst),
        )

    def vouch(self, secret: str) -> None:
        """``secret`` (a bearer token or session cookie) was proven valid: its own bucket."""
        with self._lock:
            digest = _digest(secret.encode())
            self._vouched[digest] = None
            self._vouched.move_to_end(digest)
            while len(self._vouched) > MAX_VOUCHED:
                self._vouched.popitem(last=False)

    def key(self, secret: bytes | None, address: str) -> tuple[str, str]:
        if secret:
            digest = _digest(secret)
            with self._lock:
                if digest in self._vouched:
                    self._vouched.move_to_end(digest)
                    return ("token", digest)
        return ("address", address)

    def take(self, key: tuple[str, str]) -> float:
        """Spend one request of ``key``'s bucket: 0 if allowed, else seconds to wait."""
        rate, burst = self.rates[key[0]]
        if rate <= 0:
            return 0.0
        now = time.monotonic()
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                if len(self._buckets) >= MAX_KEYS:
                    self._prune(now)
                bucket = self._buckets[key] = _Bucket(float(burst), now)
            bucket.tokens = min(float(burst), bucket.tokens + (now - bucket.stamp) * rate)
            bucket.stamp = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return 0.0
            return (1.0 - bucket.tokens) / rate

    def _prune(self, now: float) -> None:
        """Forget full buckets (forgetting one changes nothing); else the oldest half."""
        for key, bucket in list(self._buckets.items()):
            rate, burst = self.rates[key[0]]
            if bucket.tokens + (now - bucket.stamp) * rate >= burst:
                del self._buckets[key]
        if len(self._buckets) >= MAX_KEYS:
            for key in list(self._buckets)[: MAX_KEYS // 2]:
                del self._buckets[key]


def _digest(secret: bytes) -> str:
    return hashlib.sha256(secret).hexdigest()[:32]


_KEYID = re.compile(rb'keyid="([^"]{1,200})"')


def _credential(scope: Scope, cookie_name: bytes) -> bytes | None:
    """The bearer token, else the session cookie, else the key a federation request
    says it is signed with, as sent (not yet checked)."""
    cookie: bytes | None = None
    keyid: bytes | None = None
    prefix = cookie_name + b"="
    for name, value in scope["headers"]:
        if name == b"authorization" and value[:7].lower() == b"bearer ":
            token: bytes = value[7:].strip()
            return token
        if name == b"cookie":
            for part in value.split(b";"):
                part = part.strip()
                if part.startswith(prefix):
                    cookie = part[len(prefix) :]
        if name == b"signature-input" and (found := _KEYID.search(value)):
            keyid = found[1]
    return cookie or keyid


class RateLimit:
    """The middleware: ``app.add_middleware(RateLimit, limits=..., session_cookie=...)``."""

    def __init__(self, app: ASGIApp, *, limits: RateLimits, session_cookie: str) -> None:
        self.app = app
        self.limits = limits
        self.cookie_name = session_cookie.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        key = self.limits.key(
            _credential(scope, self.cookie_name), client[0] if client else "unknown"
        )
        wait = self.limits.take(key)
        if wait <= 0:
            await self.app(scope, receive, send)
            return
        whom = "this token" if key[0] == "token" else "this address"
        response = error_response(
            429,
            "TooManyRequests",
            f"too many requests from {whom}; try again in {math.ceil(wait)} s",
            headers={"Retry-After": str(math.ceil(wait))},
            retryable=True,
        )
        await response(scope, receive, send)


def vouch(request: Request, secret: str) -> None:
    """Tell the app's rate limits that ``secret`` is a valid credential (see the module)."""
    limits: RateLimits | None = getattr(request.app.state, "rate_limits", None)
    if limits is not None:
        limits.vouch(secret)
