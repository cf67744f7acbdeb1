"""Administration: users, collection memberships, collections, everyone's API tokens."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response

from archive.accounts import (
    create_user,
    get_user,
    list_users,
    members_of,
    parse_permission,
    set_active,
    set_membership,
)
from archive.catalog.models import Permission, Role
from archive.credentials import list_tokens
from archive.datasets import ensure_collection, list_collections
from web.deps import NodeDep
from web.portal.guard import PageUser
from web.portal.rendering import render

router = APIRouter(prefix="/admin")


@router.get("")
def admin_page(request: Request, node: NodeDep, principal: PageUser) -> Response:
    principal.require_role(what="page /admin")
    with node.session() as session:
        users = list_users(session=session)
        collections = list_collections(session=session)
        members = {c.name: members_of(c.name, session=session) for c in collections}
        tokens = list_tokens(session=session)
    names = {u.id: u.username for u in users}
    return render(
        request,
        "admin.html",
        principal,
        users=users,
        collections=collections,
        members=members,
        tokens=tokens,
        names=names,
        roles=list(Role),
        permissions=list(Permission),
    )


@router.post("/users")
def add_user(
    node: NodeDep,
    principal: PageUser,
    username: Annotated[str, Form(max_length=100)],
    password: Annotated[str, Form(max_length=1000)],
    role: Annotated[Role, Form()] = Role.RESEARCHER,
    display_name: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    principal.require_role(what="page /admin")
    with node.session() as session:
        create_user(
            username, session=session, role=role, password=password, display_name=display_name
        )
    return RedirectResponse("/admin", status_code=303)


@router.post("/users/{username}/active")
def change_active(
    username: str,
    node: NodeDep,
    principal: PageUser,
    active: Annotated[bool, Form()],
) -> Response:
    """Deactivate (or reactivate) a user: their sessions and tokens stop working at once."""
    principal.require_role(what="page /admin")
    with node.session() as session:
        set_active(get_user(username, session=session), active, session=session)
    return RedirectResponse("/admin", status_code=303)


@router.post("/memberships")
def change_membership(
    node: NodeDep,
    principal: PageUser,
    username: Annotated[str, Form(max_length=100)],
    collection: Annotated[str, Form(max_length=100)],
    permission: Annotated[str, Form(max_length=20)],
) -> Response:
    """Set a membership; permission ``none`` removes it."""
    principal.require_role(what="page /admin")
    chosen = parse_permission(permission)
    with node.session() as session:
        set_membership(get_user(username, session=session), collection, chosen, session=session)
    return RedirectResponse("/admin", status_code=303)


@router.post("/collections")
def add_collection(
    node: NodeDep,
    principal: PageUser,
    name: Annotated[str, Form(max_length=100)],
    title: Annotated[str, Form(max_length=500)] = "",
) -> Response:
    principal.require_role(what="page /admin")
    with node.session() as session:
        ensure_collection(name, session=session, title=title)
    return RedirectResponse("/admin", status_code=303)
