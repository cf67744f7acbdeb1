"""The ASGI application: ``create_app()`` is the factory ``permafrost serve`` runs.

The factory is the only place the web layer reads configuration (when it is not
handed ``Settings``), and the lifespan the only place the archive node is opened
and closed, so importing this module has no side effects and tests build as many
independent apps as they like.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI
from fastapi.routing import APIRoute

from archive.accounts import prepare_sign_in
from archive.config import Settings, load_settings
from archive.node import ArchiveNode
from federation.api import router as federation_router
from web.api import api_router, health
from web.api.bags import bags_router
from web.api.events import metrics_router
from web.auth import SESSION_COOKIE
from web.body_limits import BodyLimits, body_limit
from web.errors import install_error_handlers
from web.portal import install_portal
from web.proxies import TrustedProxies
from web.rate_limits import RateLimit, RateLimits

DESCRIPTION = """\
Research-data preservation archive. Files are addressed by the BLAKE3 of their
content; upload a version with `POST /api/v1/blobs/missing`, `PUT /api/v1/blobs/{b3}`
for each missing blob, then `POST /api/v1/datasets/{collection}/{dataset}/versions`.
Every route needs `Authorization: Bearer <token>` (`permafrost token create`) or a
portal session; what you may not read answers 404.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the API for ``settings`` (default: :func:`archive.config.load_settings`)."""
    resolved = settings if settings is not None else load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        node = await anyio.to_thread.run_sync(ArchiveNode.open, resolved)
        await anyio.to_thread.run_sync(prepare_sign_in)
        app.state.node = node
        try:
            yield
        finally:
            app.state.node = None
            await anyio.to_thread.run_sync(node.close)

    app = FastAPI(
        title=f"Permafrost API ({resolved.organization})",
        version="1",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(metrics_router)
    app.include_router(api_router())
    app.include_router(bags_router())
    app.include_router(federation_router)
    for route in federation_router.routes:  # partners stream blobs and manifests to us
        if isinstance(route, APIRoute) and "PUT" in (route.methods or ()):
            body_limit("upload")(route.endpoint)
    install_portal(app)
    # Outermost first: refuse by rate before anything else, then bound the body.
    app.state.rate_limits = RateLimits.of(resolved)
    app.add_middleware(BodyLimits, settings=resolved)
    app.add_middleware(RateLimit, limits=app.state.rate_limits, session_cookie=SESSION_COOKIE)
    if resolved.trusted_proxies:  # outermost: rate limits then count the real client
        app.add_middleware(TrustedProxies, trusted=resolved.trusted_proxies)
    return app
