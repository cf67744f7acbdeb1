"""The archive-wide role of a user (issue 6), apart from the catalog models.

``permafrost user add --role`` is declared with it at start-up, also for commands that
never open the catalog (``permafrost ingest --server``); :mod:`archive.catalog.models`
re-exports it, and the ``user`` table stores its value as text.
"""

from __future__ import annotations

import enum


class Role(enum.StrEnum):
    """What a user may do across the archive (issue 6); collections add memberships."""

    ADMIN = "admin"
    """Everything: every collection, users, memberships, tokens."""
    CURATOR = "curator"
    """Reads every collection, sees the dashboard and restores; writes where a member."""
    RESEARCHER = "researcher"
    """Only the collections they are a member of."""
