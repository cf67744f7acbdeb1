"""Since when a tier has not answered: set by whoever found it down, cleared when it answers.

An unreachable tier (a partner node that is down, a bucket refusing connections)
says nothing about the bytes it holds, so its copies keep their state; what people
need to know is that it is down and since when (``permafrost status``).
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlmodel import Session, col

from archive.catalog import models


def mark_unreachable(tier: str, now: dt.datetime, *, session: Session) -> None:
    """Remember ``now`` as the start of the outage unless one is already recorded."""
    T = models.Tier
    session.execute(
        sa.update(T)
        .where(col(T.name) == tier, col(T.unreachable_since).is_(None))
        .values(unreachable_since=now)
    )


def mark_reachable(tier: str, *, session: Session) -> None:
    T = models.Tier
    session.execute(
        sa.update(T)
        .where(col(T.name) == tier, col(T.unreachable_since).is_not(None))
        .values(unreachable_since=None)
    )


def unreachable_tiers(*, session: Session) -> dict[str, dt.datetime]:
    T = models.Tier
    rows = session.execute(
        sa.select(col(T.name), col(T.unreachable_since)).where(
            col(T.unreachable_since).is_not(None)
        )
    ).all()
    return {name: since for name, since in rows}
