"""Users, their passwords and their collection memberships (issue 6).

Passwords are hashed with Argon2id (RFC 9106) through ``argon2-cffi``, whose
defaults follow the RFC's second recommended option; a hash made with older
parameters is replaced at the next successful sign-in. Functions take
``session=`` and never commit: the caller owns the transaction.
"""

from __future__ import annotations

import functools
import re
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlmodel import Session, col, delete, select

from archive.catalog import models
from archive.catalog.models import Permission, Role, utcnow
from archive.datasets import get_collection
from archive.errors import Conflict, InvalidInput, NotFound

USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,99}$")
MIN_PASSWORD_LENGTH = 10
INITIAL_ADMIN = "admin"

_hasher = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """A hash checked when the user does not exist, so both answers take the same time.
    Made on first use, not at import: an Argon2 hash costs 0.1 s, which every CLI
    command paid; a server makes it at start-up (:func:`prepare_sign_in`)."""
    return _hasher.hash("not a password of anyone")


def prepare_sign_in() -> None:
    """Do now the one-off work of the first sign-in, so it takes as long as any other."""
    _dummy_hash()


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidInput(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    return _hasher.hash(password)


def check_username(name: str) -> str:
    if not USERNAME_RE.match(name):
        raise InvalidInput(
            f"invalid user name {name!r}: 1-100 letters, digits, '.', '_', '@' or '-'"
        )
    return name


def create_user(
    username: str,
    *,
    session: Session,
    role: Role = Role.RESEARCHER,
    password: str | None = None,
    display_name: str = "",
) -> models.User:
    """Add a user (without a password they can only use API tokens).

    Raises:
        InvalidInput: bad name, role or too short a password.
        Conflict: the name is taken.
    """
    check_username(username)
    if session.exec(select(models.User).where(models.User.username == username)).first():
        raise Conflict(f"user {username!r} exists already")
    row = models.User(
        username=username,
        display_name=display_name or username,
        role=Role(role),
        password_hash=hash_password(password) if password is not None else None,
    )
    session.add(row)
    session.flush()
    return row


def get_user(username: str, *, session: Session) -> models.User:
    row = session.exec(select(models.User).where(models.User.username == username)).first()
    if row is None:
        raise NotFound(f"no user {username!r}")
    return row


def list_users(*, session: Session) -> list[models.User]:
    return list(session.exec(select(models.User).order_by(col(models.User.username))).all())


def set_active(user: models.User, active: bool, *, session: Session) -> None:
    """Let a user in, or keep them out: an inactive user's tokens stop working and their
    portal sessions end (reactivating does not bring those back)."""
    user.active = active
    session.add(user)
    if not active:
        session.exec(delete(models.LoginSession).where(col(models.LoginSession.user_id) == user.id))


def set_password(user: models.User, password: str, *, session: Session) -> None:
    user.password_hash = hash_password(password)
    session.add(user)


def authenticate(username: str, password: str, *, session: Session) -> models.User | None:
    """The active user with this name and password, else None (same work either way)."""
    user = session.exec(select(models.User).where(models.User.username == username)).first()
    stored = user.password_hash if user is not None and user.active else None
    try:
        _hasher.verify(stored or _dummy_hash(), password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return None
    if user is None or stored is None:
        return None
    if _hasher.check_needs_rehash(stored):
        user.password_hash = _hasher.hash(password)
    user.last_login_at = utcnow()
    session.add(user)
    return user


def parse_permission(text: str) -> Permission | None:
    """``read``, ``write`` or ``manage``; ``none`` (no membership) is None.

    Raises:
        InvalidInput: anything else.
    """
    if text == "none":
        return None
    try:
        return Permission(text)
    except ValueError:
        raise InvalidInput(
            f"permission must be read, write, manage or none, not {text!r}"
        ) from None


def set_membership(
    user: models.User, collection: str, permission: Permission | None, *, session: Session
) -> None:
    """Give ``user`` ``permission`` on ``collection``; None removes the membership.

    Raises:
        NotFound: no such collection.
    """
    coll = get_collection(collection, session=session)
    assert user.id is not None and coll.id is not None
    row = session.get(models.Membership, (user.id, coll.id))
    if permission is None:
        if row is not None:
            session.delete(row)
        return
    if row is None:
        row = models.Membership(user_id=user.id, collection_id=coll.id)
    row.permission = Permission(permission)
    session.add(row)
    session.flush()


def memberships_of(user_id: int, *, session: Session) -> dict[str, Permission]:
    """Collection name -> permission, for one user."""
    rows = session.exec(
        select(models.Collection.name, models.Membership.permission)
        .join(models.Membership, col(models.Membership.collection_id) == col(models.Collection.id))
        .where(models.Membership.user_id == user_id)
    ).all()
    return {name: Permission(perm) for name, perm in rows}


def members_of(collection: str, *, session: Session) -> list[tuple[models.User, Permission]]:
    coll = get_collection(collection, session=session)
    rows = session.exec(
        select(models.User, models.Membership.permission)
        .join(models.Membership, col(models.Membership.user_id) == col(models.User.id))
        .where(models.Membership.collection_id == coll.id)
        .order_by(col(models.User.username))
    ).all()
    return [(user, Permission(perm)) for user, perm in rows]


def ensure_initial_admin(*, session: Session) -> str | None:
    """On a catalog with no user, create ``admin`` with a random password and return it.

    The embedded default (one process, SQLite) would otherwise have nobody who can
    sign in; the caller prints the password once. Returns None when users exist.
    """
    if session.exec(select(models.User.id).limit(1)).first() is not None:
        return None
    password = secrets.token_urlsafe(12)
    create_user(INITIAL_ADMIN, session=session, role=Role.ADMIN, password=password)
    return password
