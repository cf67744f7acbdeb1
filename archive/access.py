"""Who may do what: the caller of a request (a :class:`Principal`) and its permissions.

Roles are archive-wide (``admin`` everything, ``curator`` reads everything,
``researcher`` nothing by default); memberships add ``read`` < ``write`` <
``manage`` on one collection. What a caller may not read, it must not be able to
tell from what does not exist: :meth:`Principal.require` answers
:class:`NotFound` then, and :class:`Forbidden` only for what the caller can see
but not change.

Blobs are shared by every collection (content addressing deduplicates across
them), so knowing a digest must not be enough to claim its content: a caller may
put a blob in a version only if it can read a collection holding it, or has
proven it holds the bytes by uploading them (an :class:`UploadGrant`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlmodel import Session, col, select

from archive.accounts import memberships_of
from archive.catalog import models
from archive.catalog.models import Permission, Role
from archive.errors import Forbidden, NotFound

_RANK = {Permission.READ: 1, Permission.WRITE: 2, Permission.MANAGE: 3}
_BATCH = 500


@dataclass(frozen=True)
class Principal:
    """The caller: a user, or the server's configured ``api_token`` (``user_id`` None)."""

    username: str
    role: Role
    user_id: int | None = None
    memberships: dict[str, Permission] = field(default_factory=dict)

    @classmethod
    def of(cls, user: models.User, *, session: Session) -> Principal:
        assert user.id is not None
        return cls(
            username=user.username,
            role=Role(user.role),
            user_id=user.id,
            memberships=memberships_of(user.id, session=session),
        )

    @classmethod
    def service(cls) -> Principal:
        """The holder of the server's configured ``api_token``: an administrator."""
        return cls(username="api-token", role=Role.ADMIN)

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    @property
    def sees_everything(self) -> bool:
        return self.role in (Role.ADMIN, Role.CURATOR)

    def permission_on(self, collection: str) -> Permission | None:
        if self.is_admin:
            return Permission.MANAGE
        own = self.memberships.get(collection)
        if self.role is Role.CURATOR and own is None:
            return Permission.READ
        return own

    def can(self, collection: str, wanted: Permission) -> bool:
        held = self.permission_on(collection)
        return held is not None and _RANK[held] >= _RANK[wanted]

    def require(self, collection: str, wanted: Permission, *, what: str) -> None:
        """Raise unless the caller holds ``wanted`` on ``collection``.

        Args:
            what: The thing the request names (``dataset c/d``), for a 404 that
                reads like the one a missing thing gives.

        Raises:
            NotFound: the caller may not even read the collection.
            Forbidden: it may read, but not do this.
        """
        if not self.can(collection, Permission.READ):
            raise NotFound(f"no {what}")
        if not self.can(collection, wanted):
            raise Forbidden(f"{wanted.value} permission on collection {collection!r} is needed")

    def require_role(self, *roles: Role, what: str = "page") -> None:
        """Raise :class:`NotFound` unless the caller has one of ``roles`` (admin always)."""
        if not (self.is_admin or self.role in roles):
            raise NotFound(f"no {what}")

    @property
    def may_upload(self) -> bool:
        """Uploading blobs is for those who can write somewhere."""
        return self.is_admin or any(
            _RANK[p] >= _RANK[Permission.WRITE] for p in self.memberships.values()
        )

    def readable(self, collections: Iterable[str]) -> list[str]:
        return [c for c in collections if self.can(c, Permission.READ)]


def claimable_blobs(principal: Principal, b3s: Sequence[str], *, session: Session) -> set[str]:
    """Which of ``b3s`` the caller may name in a version: readable somewhere, or uploaded."""
    if principal.sees_everything:
        return set(b3s)
    E, V, D, C = models.Entry, models.Version, models.Dataset, models.Collection
    readable = principal.readable(principal.memberships)
    found: set[str] = set()
    wanted = sorted(set(b3s))
    for i in range(0, len(wanted), _BATCH):
        batch = wanted[i : i + _BATCH]
        if principal.user_id is not None:
            found.update(
                session.exec(
                    select(models.UploadGrant.blob_b3).where(
                        models.UploadGrant.user_id == principal.user_id,
                        col(models.UploadGrant.blob_b3).in_(batch),
                    )
                ).all()
            )
        if readable:
            rows = session.execute(
                sa.select(col(E.blob_b3))
                .distinct()
                .join(V, col(V.id) == col(E.version_id))
                .join(D, col(D.id) == col(V.dataset_id))
                .join(C, col(C.id) == col(D.collection_id))
                .where(col(C.name).in_(readable), col(E.blob_b3).in_(batch))
            )
            found.update(b3 for (b3,) in rows)
    return found


def needs_grant(principal: Principal) -> bool:
    """Whether :func:`grant_upload` records anything for this caller."""
    return principal.user_id is not None and not principal.sees_everything


def grant_upload(principal: Principal, b3: str, *, session: Session) -> None:
    """Remember that the caller sent ``b3``'s bytes (the server checked them)."""
    if not needs_grant(principal) or principal.user_id is None:  # (the second: for mypy)
        return
    if session.get(models.UploadGrant, (principal.user_id, b3)) is None:
        session.add(models.UploadGrant(user_id=principal.user_id, blob_b3=b3))
