"""Forwarding headers from trusted reverse proxies only (``Settings.trusted_proxies``).

Behind a proxy that ends TLS, the request reaching us says ``http://127.0.0.1:8000``
while a partner signed ``https://archive.example.org/...`` (RFC 9421 ``@target-uri``),
so the signature cannot hold unless we take the public scheme and host from the
proxy's ``X-Forwarded-Proto`` and ``X-Forwarded-Host`` (RFC 7239 section 1 describes the
de facto headers). Anyone can send those headers, so they are believed only when the
connection itself comes from a configured proxy address; from anyone else they change
nothing. ``X-Forwarded-For`` is handled by uvicorn's ``ProxyHeadersMiddleware`` under
the same trust, so rate limits count the real client.

This replaces uvicorn's own switch (``proxy_headers``, trusting ``127.0.0.1`` and the
``FORWARDED_ALLOW_IPS`` variable by default): ``permafrost serve`` turns that off, so
the one list of trusted addresses is the configured one.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any, cast

from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(addresses: Sequence[str]) -> list[_Network]:
    return [ipaddress.ip_network(a, strict=False) for a in addresses]


class TrustedProxies:
    """ASGI middleware: scheme, host and client from a trusted proxy's headers."""

    def __init__(self, app: ASGIApp, *, trusted: Sequence[str]) -> None:
        self.networks = parse_networks(trusted)
        # uvicorn's middleware rewrites scheme and client; it gets exactly our list.
        self.app: ASGIApp = cast(
            Any, ProxyHeadersMiddleware(cast(Any, app), trusted_hosts=list(trusted))
        )
        self.inner = app

    def trusts(self, scope: Scope) -> bool:
        client = scope.get("client")
        if not client:
            return False
        try:
            address = ipaddress.ip_address(client[0])
        except ValueError:
            return False
        return any(address in network for network in self.networks)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or not self.trusts(scope):
            await self.inner(scope, receive, send)
            return
        forwarded = [v for k, v in scope["headers"] if k == b"x-forwarded-host"]
        if forwarded:
            # The trusted proxy (the one nearest us) sets or appends the last value.
            host = forwarded[-1].split(b",")[-1].strip()
            if host:
                headers = [(k, v) for k, v in scope["headers"] if k != b"host"]
                scope = {**scope, "headers": [*headers, (b"host", host)]}
        await self.app(scope, receive, send)
