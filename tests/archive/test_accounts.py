"""Accounts as services: Argon2 passwords, hashed tokens, sessions, memberships, permissions."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import select

from archive.access import Principal
from archive.accounts import (
    authenticate,
    create_user,
    ensure_initial_admin,
    memberships_of,
    set_membership,
)
from archive.catalog import models
from archive.catalog.models import Permission, Role, utcnow
from archive.config import Settings
from archive.credentials import (
    create_token,
    end_login,
    find_login,
    revoke_token,
    start_login,
    user_of_token,
)
from archive.datasets import ensure_collection
from archive.errors import Conflict, Forbidden, InvalidInput, NotFound
from archive.node import ArchiveNode
from archive.resumable import UploadArea


@pytest.fixture
def node(tmp_path: Path) -> Iterator[ArchiveNode]:
    opened = ArchiveNode.open(Settings(data_dir=tmp_path / "data"))
    yield opened
    opened.close()


def test_passwords_are_argon2id_and_checked(node: ArchiveNode) -> None:
    with node.session() as session:
        user = create_user("ada", session=session, password="correct horse battery")
        assert user.password_hash is not None
        assert user.password_hash.startswith("$argon2id$")
        assert "correct horse" not in user.password_hash
    with node.session() as session:
        assert authenticate("ada", "wrong password!", session=session) is None
        assert authenticate("nobody", "correct horse battery", session=session) is None
        found = authenticate("ada", "correct horse battery", session=session)
        assert found is not None and found.last_login_at is not None


def test_bad_users_are_refused(node: ArchiveNode) -> None:
    with node.session() as session:
        create_user("ada", session=session, password="long enough pw")
        with pytest.raises(Conflict):
            create_user("ada", session=session, password="long enough pw")
        with pytest.raises(InvalidInput):
            create_user("x", session=session, password="short")
        with pytest.raises(InvalidInput):
            create_user("../evil", session=session)


def test_inactive_users_cannot_sign_in_or_use_tokens(node: ArchiveNode) -> None:
    with node.session() as session:
        user = create_user("ada", session=session, password="correct horse battery")
        secret = create_token(user, session=session).secret
        user.active = False
    with node.session() as session:
        assert authenticate("ada", "correct horse battery", session=session) is None
        assert user_of_token(secret, session=session) is None


def test_tokens_are_stored_hashed_and_can_be_revoked(node: ArchiveNode) -> None:
    with node.session() as session:
        user = create_user("ada", session=session)
        made = create_token(user, session=session, name="laptop")
    rows = _all(node, models.ApiToken)
    assert [r.token_hash for r in rows] == [hashlib.sha256(made.secret.encode()).hexdigest()]
    assert made.secret not in repr(rows)
    with node.session() as session:
        found = user_of_token(made.secret, session=session)
        assert found is not None and found.username == "ada"
        assert user_of_token(made.secret + "x", session=session) is None
        assert made.row.id is not None
        revoke_token(made.row.id, session=session)
    with node.session() as session:
        assert user_of_token(made.secret, session=session) is None
        with pytest.raises(NotFound):
            revoke_token(9999, session=session)


def test_expired_tokens_are_refused(node: ArchiveNode) -> None:
    with node.session() as session:
        user = create_user("ada", session=session)
        past = utcnow() - dt.timedelta(seconds=1)
        secret = create_token(user, session=session, expires_at=past).secret
    with node.session() as session:
        assert user_of_token(secret, session=session) is None


def test_login_sessions_end(node: ArchiveNode) -> None:
    with node.session() as session:
        user = create_user("ada", session=session, password="correct horse battery")
        login = start_login(user, session=session)
    with node.session() as session:
        found = find_login(login.secret, session=session)
        assert found is not None and found[1].csrf_token == login.csrf_token
        assert found[1].id != login.secret  # only the digest is kept
        end_login(login.secret, session=session)
    with node.session() as session:
        assert find_login(login.secret, session=session) is None


def test_the_first_admin_is_made_once(node: ArchiveNode) -> None:
    with node.session() as session:
        password = ensure_initial_admin(session=session)
    assert password is not None
    with node.session() as session:
        admin = authenticate("admin", password, session=session)
        assert admin is not None and admin.role == Role.ADMIN
        assert ensure_initial_admin(session=session) is None
    assert len(_all(node, models.User)) == 1


def test_permissions_follow_roles_and_memberships(node: ArchiveNode) -> None:
    with node.session() as session:
        ensure_collection("lab", session=session)
        ensure_collection("other", session=session)
        ada = create_user("ada", session=session)
        cur = create_user("cur", session=session, role=Role.CURATOR)
        set_membership(ada, "lab", Permission.WRITE, session=session)
        assert ada.id is not None
        assert memberships_of(ada.id, session=session) == {"lab": Permission.WRITE}
        researcher = Principal.of(ada, session=session)
        curator = Principal.of(cur, session=session)
    assert researcher.can("lab", Permission.WRITE)
    assert not researcher.can("lab", Permission.MANAGE)
    assert not researcher.can("other", Permission.READ)
    with pytest.raises(NotFound, match="no dataset other/x"):
        researcher.require("other", Permission.READ, what="dataset other/x")
    with pytest.raises(Forbidden):
        researcher.require("lab", Permission.MANAGE, what="collection 'lab'")
    assert curator.can("other", Permission.READ)
    assert not curator.can("other", Permission.WRITE)
    assert Principal.service().can("other", Permission.MANAGE)
    with node.session() as session:
        set_membership(ada, "lab", None, session=session)
        assert memberships_of(ada.id, session=session) == {}


def _all(node: ArchiveNode, table: type[models.SQLModel]) -> list[models.SQLModel]:
    with node.session() as session:
        return list(session.exec(select(table)).all())


def test_stale_uploads_are_forgotten(tmp_path: Path) -> None:
    area = UploadArea(tmp_path / "uploads")
    old = area.create("ada", 10)
    fresh = area.create("ada", 10)
    for suffix in (".json", ".part"):
        os.utime(area.root / f"{old.id}{suffix}", (0, 0))
    assert area.forget_stale() == 1
    with pytest.raises(NotFound):
        area.get(old.id, "ada")
    assert area.get(fresh.id, "ada").offset == 0
    with pytest.raises(NotFound):
        area.get(fresh.id, "bob")  # another's upload is as missing as a made-up one
