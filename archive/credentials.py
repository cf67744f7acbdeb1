"""Secrets that stand for a user: personal API tokens and portal sign-in sessions.

Both are 256-bit random secrets handed to the client once; the catalog keeps
only their SHA-256, so a leaked database does not leak working credentials. A
fast hash is enough here (unlike passwords): the secrets are uniformly random,
so there is nothing to guess from a dictionary, and every request checks one.
Tokens are sent as ``Authorization: Bearer`` (RFC 6750); sessions ride in a
cookie and carry the synchronizer token the portal's forms must echo (OWASP
CSRF prevention cheat sheet).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlmodel import Session, col, delete, select

from archive.catalog import models
from archive.catalog.models import utcnow
from archive.errors import NotFound

TOKEN_PREFIX = "pf_"  # noqa: S105  (a marker, not a secret: lets scanners spot leaks)
SESSION_LIFETIME = dt.timedelta(hours=12)


def digest_of(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class NewToken:
    row: models.ApiToken
    secret: str
    """Shown to the user once; only its SHA-256 is stored."""


def create_token(
    user: models.User,
    *,
    session: Session,
    name: str = "",
    expires_at: dt.datetime | None = None,
) -> NewToken:
    assert user.id is not None
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = models.ApiToken(
        user_id=user.id,
        name=name,
        token_hash=digest_of(secret),
        prefix=secret[:10],
        expires_at=expires_at,
    )
    session.add(row)
    session.flush()
    return NewToken(row, secret)


def user_of_token(secret: str, *, session: Session) -> models.User | None:
    """The active user a live (not revoked, not expired) token belongs to."""
    token = session.exec(
        select(models.ApiToken).where(models.ApiToken.token_hash == digest_of(secret))
    ).first()
    now = utcnow()
    if token is None or token.revoked_at is not None:
        return None
    if token.expires_at is not None and token.expires_at <= now:
        return None
    user = session.get(models.User, token.user_id)
    if user is None or not user.active:
        return None
    token.last_used_at = now
    session.add(token)
    return user


def list_tokens(user_id: int | None = None, *, session: Session) -> list[models.ApiToken]:
    stmt = select(models.ApiToken).order_by(col(models.ApiToken.id))
    if user_id is not None:
        stmt = stmt.where(models.ApiToken.user_id == user_id)
    return list(session.exec(stmt).all())


def revoke_token(token_id: int, *, session: Session, user_id: int | None = None) -> None:
    """Revoke a token (only one of ``user_id``'s when given).

    Raises:
        NotFound: no such token (or not that user's).
    """
    token = session.get(models.ApiToken, token_id)
    if token is None or (user_id is not None and token.user_id != user_id):
        raise NotFound(f"no token {token_id}")
    if token.revoked_at is None:
        token.revoked_at = utcnow()
        session.add(token)


@dataclass(frozen=True)
class NewLogin:
    secret: str
    """The cookie's value."""
    csrf_token: str


def start_login(user: models.User, *, session: Session) -> NewLogin:
    assert user.id is not None
    secret = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(32)
    now = utcnow()
    session.add(
        models.LoginSession(
            id=digest_of(secret),
            user_id=user.id,
            csrf_token=csrf,
            created_at=now,
            expires_at=now + SESSION_LIFETIME,
        )
    )
    # Sign-ins are rare: a good time to forget expired ones.
    session.exec(delete(models.LoginSession).where(col(models.LoginSession.expires_at) <= now))
    return NewLogin(secret, csrf)


def find_login(secret: str, *, session: Session) -> tuple[models.User, models.LoginSession] | None:
    row = session.get(models.LoginSession, digest_of(secret))
    if row is None or row.expires_at <= utcnow():
        return None
    user = session.get(models.User, row.user_id)
    if user is None or not user.active:
        return None
    return user, row


def end_login(secret: str, *, session: Session) -> None:
    row = session.get(models.LoginSession, digest_of(secret))
    if row is not None:
        session.delete(row)


def csrf_matches(expected: str, offered: str | None) -> bool:
    return offered is not None and hmac.compare_digest(expected.encode(), offered.encode())


def token_owner(token_id: int, *, session: Session) -> models.User:
    token = session.get(models.ApiToken, token_id)
    user = session.get(models.User, token.user_id) if token else None
    if user is None:
        raise NotFound(f"no token {token_id}")
    return user
