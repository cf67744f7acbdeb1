"""Errors of the fixity auditors::

FixityError          base
└── NoGoodSource     no copy of a blob passes a fresh audit now; ``waiting`` says
                     whether some could not be read (unreachable, being restored),
                     so the blob is not lost, only not repairable yet
"""

from __future__ import annotations

from archive.errors import PermafrostError


class FixityError(PermafrostError):
    exit_code = 1


class NoGoodSource(FixityError):
    def __init__(self, waiting: bool, why: str) -> None:
        super().__init__(why)
        self.waiting = waiting
