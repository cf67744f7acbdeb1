"""Sign in and out, and one's own API tokens.

The sign-in form is protected from cross-site posting (login CSRF) by a
double-submit cookie: a random value set with the form, echoed in a hidden
field; once signed in, the session's own token protects every form.
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response

from archive.accounts import authenticate, set_password
from archive.catalog import models
from archive.credentials import (
    SESSION_LIFETIME,
    create_token,
    csrf_matches,
    end_login,
    list_tokens,
    revoke_token,
    start_login,
)
from archive.errors import Forbidden
from web.auth import CSRF_FIELD, SESSION_COOKIE, MaybePrincipalDep
from web.deps import NodeDep
from web.portal.guard import PageUser
from web.portal.ratelimit import LoginLimiter
from web.portal.rendering import render

router = APIRouter()

LOGIN_CSRF_COOKIE = "permafrost_login_csrf"


def _limiter(request: Request) -> LoginLimiter:
    state = request.app.state
    if getattr(state, "login_limiter", None) is None:
        state.login_limiter = LoginLimiter()
    limiter: LoginLimiter = state.login_limiter
    return limiter


def _safe_next(target: str | None) -> str:
    """Only a path on this site: never ``//host`` or a scheme (open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def _login_form(
    request: Request, next_url: str, error: str = "", status_code: int = 200
) -> Response:
    token = secrets.token_urlsafe(32)
    response = render(
        request,
        "login.html",
        None,
        status_code=status_code,
        login_csrf=token,
        next_url=next_url,
        error=error,
    )
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        token,
        httponly=True,
        samesite="strict",
        secure=_secure(request),
        path="/login",
    )
    return response


@router.get("/login")
def login_page(request: Request, principal: MaybePrincipalDep, next: str = "/") -> Response:
    if principal is not None:
        return RedirectResponse(_safe_next(next), status_code=303)
    return _login_form(request, _safe_next(next))


@router.post("/login")
def login(
    request: Request,
    node: NodeDep,
    username: Annotated[str, Form(max_length=100)],
    password: Annotated[str, Form(max_length=1000)],
    csrf_token: Annotated[str, Form(alias=CSRF_FIELD, max_length=100)] = "",
    next: Annotated[str, Form(max_length=2000)] = "/",
) -> Response:
    if not csrf_matches(request.cookies.get(LOGIN_CSRF_COOKIE, ""), csrf_token) or not csrf_token:
        raise Forbidden("the sign-in form lacks a valid CSRF token; reload the page")
    client = request.client.host if request.client else "?"
    limiter = _limiter(request)
    wait = limiter.retry_after(client, username)
    if wait > 0:
        response = _login_form(
            request,
            _safe_next(next),
            f"Too many failed sign-ins; try again in {int(wait) + 1} seconds.",
            status_code=429,
        )
        response.headers["Retry-After"] = str(int(wait) + 1)
        return response
    with node.session() as session:
        user = authenticate(username, password, session=session)
        login = start_login(user, session=session) if user is not None else None
    if login is None:
        limiter.failed(client, username)
        return _login_form(
            request, _safe_next(next), "Wrong user name or password.", status_code=401
        )
    limiter.succeeded(client, username)
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        login.secret,
        max_age=int(SESSION_LIFETIME.total_seconds()),
        httponly=True,
        samesite="lax",
        secure=_secure(request),
        path="/",
    )
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
    return response


@router.post("/logout")
def logout(request: Request, node: NodeDep, principal: PageUser) -> Response:
    secret = request.cookies.get(SESSION_COOKIE)
    if secret:
        with node.session() as session:
            end_login(secret, session=session)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.post("/account/password")
def change_password(
    request: Request,
    node: NodeDep,
    principal: PageUser,
    current: Annotated[str, Form(max_length=1000)],
    new: Annotated[str, Form(max_length=1000)],
) -> Response:
    """Change one's own password (the current one is asked again: a left-open session
    is not enough to take over the account)."""
    with node.session() as session:
        user = authenticate(principal.username, current, session=session)
        if user is None:
            raise Forbidden("the current password is not right")
        set_password(user, new, session=session)
    return _tokens(request, node, principal, new_secret=None, notice="Password changed.")


@router.get("/tokens")
def tokens_page(request: Request, node: NodeDep, principal: PageUser) -> Response:
    return _tokens(request, node, principal, new_secret=None)


def _tokens(
    request: Request,
    node: NodeDep,
    principal: PageUser,
    new_secret: str | None,
    notice: str = "",
) -> Response:
    with node.session() as session:
        rows = list_tokens(principal.user_id, session=session) if principal.user_id else []
    return render(
        request, "tokens.html", principal, tokens=rows, new_secret=new_secret, notice=notice
    )


@router.post("/tokens")
def token_create(
    request: Request,
    node: NodeDep,
    principal: PageUser,
    name: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    if principal.user_id is None:
        raise Forbidden("the server's configured token cannot own tokens")
    with node.session() as session:
        user = session.get(models.User, principal.user_id)
        assert user is not None
        made = create_token(user, session=session, name=name)
    return _tokens(request, node, principal, new_secret=made.secret)


@router.post("/tokens/{token_id}/revoke")
def token_revoke(token_id: int, node: NodeDep, principal: PageUser) -> Response:
    with node.session() as session:
        revoke_token(
            token_id, session=session, user_id=None if principal.is_admin else principal.user_id
        )
    return RedirectResponse("/tokens", status_code=303)
