"""The portal's view of the caller: signed in, or sent to the sign-in page."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from archive.access import Principal
from web.auth import MaybePrincipalDep
from web.portal.rendering import sign_in_redirect


async def page_principal(request: Request, principal: MaybePrincipalDep) -> Principal:
    if principal is None:
        raise sign_in_redirect(request)
    request.state.principal = principal
    return principal


PageUser = Annotated[Principal, Depends(page_principal)]
