"""Partners: the other institutions' nodes we hold copies for, and what we hold.

An administrator registers a partner by name with its URL, its public key (what its
``permafrost node info`` prints) and the quota agreed with it. What a partner sends
us is kept in our own storage, under ``partners/<name>/`` on the federation tier
(``Settings.federation_tier``, default the hot tier), so quota and inventory are per
partner, and recorded as :class:`archive.catalog.models.HeldObject` rows
(:mod:`archive.held` says where they live, so our own audits can read them too).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import sqlalchemy as sa
from sqlmodel import Session, col, select

from archive.catalog import models
from archive.catalog.models import ReplicaState
from archive.errors import Conflict, InvalidInput
from archive.identity import parse_public_key
from federation.errors import QuotaExceeded

NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
ADDRESS = re.compile(r"^[0-9a-f]{64}$")
#: ``<collection>/<dataset>/v<N>.json`` (``archive.manifest.manifest_key`` without
#: ``manifests/``): plain segments that start with a letter or digit, so never ``..``.
MANIFEST_NAME = re.compile(
    r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}/[A-Za-z0-9][A-Za-z0-9._-]{0,99}/v[1-9][0-9]{0,8}\.json$"
)


def add_partner(
    name: str, url: str, public_key: str, quota_bytes: int, *, session: Session
) -> models.Partner:
    """Register a partner (or update its URL, key and quota).

    Raises:
        InvalidInput: a bad name, URL, key or quota.
        Conflict: another partner has that key.
    """
    if not NAME.match(name):
        raise InvalidInput(f"partner name {name!r}: lowercase letters, digits and '-' only")
    if not re.match(r"^https?://[^\s/]+(/\S*)?$", url):
        raise InvalidInput(f"partner URL {url!r} is not an http(s) URL")
    if quota_bytes < 0:
        raise InvalidInput("a quota cannot be negative")
    parse_public_key(public_key)
    other = session.exec(
        select(models.Partner).where(
            models.Partner.public_key == public_key, models.Partner.name != name
        )
    ).first()
    if other is not None:
        raise Conflict(f"partner {other.name!r} already has this public key")
    partner = session.exec(select(models.Partner).where(models.Partner.name == name)).first()
    if partner is None:
        partner = models.Partner(name=name, url=url, public_key=public_key)
    partner.url, partner.public_key, partner.quota_bytes = url, public_key, quota_bytes
    session.add(partner)
    session.flush()
    return partner


def list_partners(*, session: Session) -> list[tuple[models.Partner, int, int]]:
    """Every partner with the bytes and objects we hold for it."""
    out = []
    for partner in session.exec(select(models.Partner).order_by(col(models.Partner.name))):
        assert partner.id is not None
        used, count = usage(partner.id, session=session)
        out.append((partner, used, count))
    return out


def usage(partner_id: int, *, session: Session) -> tuple[int, int]:
    """Bytes and objects held for the partner."""
    H = models.HeldObject
    used, count = session.execute(
        sa.select(sa.func.coalesce(sa.func.sum(col(H.size)), 0), sa.func.count()).where(
            col(H.partner_id) == partner_id
        )
    ).one()
    return int(used), int(count)


def check_quota(partner_id: int, quota: int, size: int, *, session: Session) -> None:
    """Raises: QuotaExceeded when ``size`` more bytes would pass the quota."""
    used, _ = usage(partner_id, session=session)
    if used + size > quota:
        raise QuotaExceeded(used, quota, size)


def find_held(
    partner_id: int, kind: str, name: str, *, session: Session
) -> models.HeldObject | None:
    return session.get(models.HeldObject, (partner_id, kind, name))


def held_names(partner_id: int, kind: str, names: Sequence[str], *, session: Session) -> set[str]:
    """Which of ``names`` are held for the partner (one query)."""
    H = models.HeldObject
    found = session.execute(
        sa.select(col(H.name)).where(
            col(H.partner_id) == partner_id, col(H.kind) == kind, col(H.name).in_(list(names))
        )
    ).scalars()
    return set(found)


def record_held(
    partner_id: int, kind: str, name: str, size: int, b3: str, *, session: Session
) -> None:
    if find_held(partner_id, kind, name, session=session) is None:
        session.add(
            models.HeldObject(partner_id=partner_id, kind=kind, name=name, size=size, b3=b3)
        )


def renew_held(partner_id: int, kind: str, name: str, *, session: Session) -> None:
    """The partner sent an object again that our audit had found damaged or missing,
    and the good bytes are back: it is present, and due for a fresh audit schedule."""
    H = models.HeldObject
    session.execute(
        sa.update(H)
        .where(col(H.partner_id) == partner_id, col(H.kind) == kind, col(H.name) == name)
        .values(state=ReplicaState.PRESENT, next_audit_at=None)
    )


def forget_held(partner_id: int, kind: str, name: str, *, session: Session) -> bool:
    H = models.HeldObject
    result = session.execute(
        sa.delete(H).where(
            col(H.partner_id) == partner_id, col(H.kind) == kind, col(H.name) == name
        )
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def inventory(
    partner_id: int,
    *,
    kind: str | None,
    after: str,
    limit: int,
    session: Session,
    bad_only: bool = False,
) -> Sequence[models.HeldObject]:
    """Objects held for the partner in name order, after ``after`` (keyset pagination);
    with ``bad_only``, those our own audit found damaged or missing (``fixity.held``)."""
    H = models.HeldObject
    stmt = select(H).where(col(H.partner_id) == partner_id)
    if kind is not None:
        stmt = stmt.where(col(H.kind) == kind)
    if bad_only:
        stmt = stmt.where(col(H.state).in_([ReplicaState.DAMAGED, ReplicaState.MISSING]))
    stmt = stmt.where(sa.tuple_(col(H.kind), col(H.name)) > sa.tuple_(*_cursor(after)))
    return session.exec(stmt.order_by(col(H.kind), col(H.name)).limit(limit)).all()


def _cursor(after: str) -> tuple[str, str]:
    kind, _, name = after.partition(":")
    return kind, name
