"""People for permission tests: users with roles and memberships, their tokens, sign-in."""

from __future__ import annotations

import re
from dataclasses import dataclass

import httpx
from fastapi.testclient import TestClient

from archive.accounts import create_user, set_membership
from archive.catalog.models import Permission, Role
from archive.credentials import create_token
from archive.datasets import ensure_collection
from archive.node import ArchiveNode

PASSWORD = "a long test password"

#: name -> (role, {collection: permission})
PEOPLE: dict[str, tuple[Role, dict[str, Permission]]] = {
    "admin": (Role.ADMIN, {}),
    "curator": (Role.CURATOR, {}),
    "writer": (Role.RESEARCHER, {"lab": Permission.WRITE}),
    "reader": (Role.RESEARCHER, {"lab": Permission.READ}),
    "manager": (Role.RESEARCHER, {"lab": Permission.MANAGE}),
    "outsider": (Role.RESEARCHER, {"other": Permission.WRITE}),
    "nobody": (Role.RESEARCHER, {}),
}


@dataclass(frozen=True)
class Person:
    name: str
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def add_people(node: ArchiveNode) -> dict[str, Person]:
    """Collections ``lab`` and ``other``, and one user per entry of :data:`PEOPLE`."""
    people: dict[str, Person] = {}
    with node.session() as session:
        ensure_collection("lab", session=session)
        ensure_collection("other", session=session)
        for name, (role, memberships) in PEOPLE.items():
            user = create_user(name, session=session, role=role, password=PASSWORD)
            for collection, permission in memberships.items():
                set_membership(user, collection, permission, session=session)
            people[name] = Person(name, create_token(user, session=session).secret)
    return people


def sign_in(client: TestClient | httpx.Client, username: str, password: str = PASSWORD) -> str:
    """Sign in through the portal's form; returns the session's CSRF token."""
    form = client.get("/login")
    login_csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert login_csrf is not None
    answer = client.post(
        "/login",
        data={"username": username, "password": password, "csrf_token": login_csrf[1]},
        follow_redirects=False,
    )
    assert answer.status_code == 303, answer.text
    home = client.get("/")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', home.text)
    assert csrf is not None
    return csrf[1]
