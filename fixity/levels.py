"""The audit levels, cheapest first (described in :mod:`fixity.checks`).

Apart from the checks so that ``permafrost audit run --level`` is declared without
importing the catalog models: every command's options are built at start-up, also for
commands that never open the catalog (``permafrost ingest --server``).
"""

from __future__ import annotations

import enum


class Level(enum.StrEnum):
    LIGHT = "light"
    STORED = "stored"
    DEEP = "deep"
