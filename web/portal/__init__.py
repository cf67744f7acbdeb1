"""The researcher portal: server-rendered pages (Jinja2), HTMX for partial updates.

Pages call the same archive services the API calls and check the same
permissions (:class:`archive.access.Principal`); a signed-out visitor is sent to
the sign-in page, and what a signed-in user may not read is a 404 page. Every
form posts the sign-in's CSRF token (checked in :mod:`web.auth`). Static files
(htmx, the upload script, the style sheet) are served from the package: no CDN,
no build step.
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from fastapi.staticfiles import StaticFiles

from web.portal import account, admin, browse, dashboard, transfer
from web.portal.rendering import STATIC_DIR, install_page_errors


def install_portal(app: FastAPI) -> None:
    router = APIRouter(include_in_schema=False)
    for module in (account, browse, transfer, dashboard, admin):
        router.include_router(module.router)
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    install_page_errors(app)


__all__ = ["install_portal"]
