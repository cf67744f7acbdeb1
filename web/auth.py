"""Who is calling: a bearer token (API, CLI) or the portal's session cookie.

``Authorization: Bearer`` (RFC 6750) carries either the server's configured
``api_token`` (an administrator, kept for deployments that set one) or a
personal token (:mod:`archive.credentials`). Otherwise the session cookie names
a portal sign-in; a request that changes something on the strength of a cookie
must also carry that sign-in's CSRF token (header ``X-CSRF-Token``, or form
field ``csrf_token``), since a browser sends cookies with cross-site requests
too. Bearer requests need no CSRF token: browsers never add that header by
themselves.
"""

from __future__ import annotations

import hmac
from typing import Annotated

import anyio.to_thread
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from archive.access import Principal
from archive.credentials import csrf_matches, find_login, user_of_token
from archive.errors import Forbidden, NotAuthenticated
from archive.node import ArchiveNode
from web.deps import NodeDep
from web.rate_limits import vouch

SESSION_COOKIE = "permafrost_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

_bearer = HTTPBearer(
    auto_error=False, description="A personal API token (`permafrost token create`)."
)


class CsrfRefused(Forbidden):
    """A cookie-authenticated change without the sign-in's CSRF token."""


def _from_bearer(node: ArchiveNode, offered: str) -> Principal:
    configured = node.settings.api_token
    if configured is not None and hmac.compare_digest(
        offered.encode(), configured.get_secret_value().encode()
    ):
        return Principal.service()
    with node.session() as session:
        user = user_of_token(offered, session=session)
        if user is not None:
            return Principal.of(user, session=session)
    raise NotAuthenticated("the bearer token is not valid (revoked, expired or unknown)")


def _from_cookie(node: ArchiveNode, secret: str) -> tuple[Principal, str] | None:
    with node.session() as session:
        found = find_login(secret, session=session)
        if found is None:
            return None
        user, login = found
        return Principal.of(user, session=session), login.csrf_token


async def _csrf_offered(request: Request, form_limit: int) -> str | None:
    """The CSRF token of the header, else of a form body of at most ``form_limit`` bytes
    (declared): a form is parsed in memory, and an upload route labelled as one must not be."""
    header = request.headers.get(CSRF_HEADER)
    if header is not None:
        return header
    kind = request.headers.get("content-type", "")
    declared = request.headers.get("content-length", "")
    small = declared.isdigit() and int(declared) <= form_limit
    if small and kind.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        value = (await request.form()).get(CSRF_FIELD)
        return value if isinstance(value, str) else None
    return None


async def optional_principal(
    request: Request,
    node: NodeDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal | None:
    """The caller, or None when it sent no credentials at all.

    Raises:
        NotAuthenticated: a bearer token was sent and is not valid.
        CsrfRefused: a cookie-authenticated change lacks the CSRF token.
    """
    # The catalog is synchronous: its lookups run in a worker thread, off the event loop.
    if credentials is not None:
        found = await anyio.to_thread.run_sync(_from_bearer, node, credentials.credentials)
        vouch(request, credentials.credentials)  # from now on limited as this token
        return found
    if request.headers.get("authorization"):
        raise NotAuthenticated("only `Authorization: Bearer <token>` is accepted")
    secret = request.cookies.get(SESSION_COOKIE)
    if not secret:
        return None
    signed_in = await anyio.to_thread.run_sync(_from_cookie, node, secret)
    if signed_in is None:
        return None
    principal, csrf_token = signed_in
    vouch(request, secret)
    request.state.csrf_token = csrf_token
    if request.method not in SAFE_METHODS and not csrf_matches(
        csrf_token, await _csrf_offered(request, node.settings.max_json_body_bytes)
    ):
        raise CsrfRefused("the form or request lacks a valid CSRF token; reload the page")
    return principal


async def require_principal(
    principal: Annotated[Principal | None, Depends(optional_principal)],
) -> Principal:
    """The caller; 401 (with ``WWW-Authenticate``) when it sent no credentials."""
    if principal is None:
        raise NotAuthenticated("sign in, or send `Authorization: Bearer <token>`")
    return principal


PrincipalDep = Annotated[Principal, Depends(require_principal)]
MaybePrincipalDep = Annotated[Principal | None, Depends(optional_principal)]
