"""Templates, their helpers, and error pages for the portal (JSON stays for ``/api``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException

from archive.access import Principal
from archive.errors import PermafrostError
from web import errors as api_errors

WEB_DIR = Path(__file__).resolve().parent.parent
STATIC_DIR = WEB_DIR / "static"
templates = Jinja2Templates(directory=WEB_DIR / "templates")  # autoescape on for .html


def human_size(n: int | None) -> str:
    if n is None:
        return ""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


templates.env.filters["size"] = human_size
templates.env.filters["urlpath"] = lambda s: quote(s, safe="/")


def render(
    request: Request,
    name: str,
    principal: Principal | None,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    context.update(
        principal=principal,
        csrf_token=getattr(request.state, "csrf_token", ""),
    )
    return templates.TemplateResponse(request, name, context, status_code=status_code)


def sign_in_redirect(request: Request) -> HTTPException:
    """An exception that sends a signed-out visitor to the sign-in page, then back."""
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return HTTPException(303, "sign in first", headers={"Location": f"/login?next={quote(target)}"})


def _is_page(request: Request) -> bool:
    path = request.url.path
    machine = ("/api/", "/federation/")
    return not (path.startswith(machine) or path in ("/healthz", "/docs", "/openapi.json"))


def _page(request: Request, status_code: int, detail: str) -> HTMLResponse:
    return render(
        request,
        "error.html",
        getattr(request.state, "principal", None),
        status_code=status_code,
        status=status_code,
        detail=detail,
    )


def install_page_errors(app: FastAPI) -> None:
    """Archive and HTTP errors on pages become HTML pages; the API keeps its JSON."""

    async def archive_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, PermafrostError)
        if _is_page(request):
            return _page(request, exc.http_status, str(exc))
        return await api_errors._permafrost_error(request, exc)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if _is_page(request) and exc.status_code >= 400:
            return _page(request, exc.status_code, str(exc.detail))
        return await api_errors._http_error(request, exc)

    app.add_exception_handler(PermafrostError, archive_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
