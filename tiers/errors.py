"""Errors raised by storage tiers.

Every backend translates its own failures (``OSError``, botocore's ``ClientError``,
connection errors) into this tree at the boundary, with ``raise ... from exc``::

    TierError                    base; ``retryable`` says whether trying again may help
    ├── ObjectNotFound           no object under that key
    ├── ObjectExists             write-once: the key already holds an object
    ├── DigestMismatch           the bytes written do not hash to what the caller expected
    ├── NeedsRestore             a cold object must be restored before it can be read
    ├── TierUnavailable          endpoint refusing, timing out, answering 5xx (retryable)
    ├── TierConfigError          the tier's settings are unusable (unknown bucket, bad path)
    └── InvalidKey               the key breaks the key grammar (also a ``ValueError``)
"""

from __future__ import annotations

import datetime as dt


class TierError(Exception):
    """Base of every tier failure."""

    retryable: bool = False

    def __init__(self, message: str, *, tier: str | None = None, key: str | None = None) -> None:
        super().__init__(message)
        self.tier = tier
        self.key = key


class ObjectNotFound(TierError):
    """The key names no object in the tier."""


class ObjectExists(TierError):
    """A write-once key already holds an object; it is never overwritten."""


class DigestMismatch(TierError):
    """The bytes did not hash to the expected digest; nothing was promoted."""

    def __init__(
        self, key: str, algorithm: str, expected: str, found: str, *, tier: str | None = None
    ) -> None:
        super().__init__(
            f"{key}: {algorithm} expected {expected}, found {found}", tier=tier, key=key
        )
        self.algorithm = algorithm
        self.expected = expected
        self.found = found


class NeedsRestore(TierError):
    """The object is in a deferred-retrieval (cold) tier and was not restored.

    ``status`` is ``"not-started"`` (ask for a restore) or ``"in-progress"`` (one was
    asked for; ``ready_at`` estimates when it completes, when the tier knows), or
    None when the tier could not tell.
    """

    def __init__(
        self,
        message: str,
        *,
        tier: str | None = None,
        key: str | None = None,
        status: str | None = None,
        ready_at: dt.datetime | None = None,
    ) -> None:
        super().__init__(message, tier=tier, key=key)
        self.status = status
        self.ready_at = ready_at


class TierUnavailable(TierError):
    """The tier could not be reached or answered with a server error."""

    retryable = True


class TierConfigError(TierError):
    """The tier's settings are wrong; fix the configuration."""


class InvalidKey(TierError, ValueError):
    """The key is not a relative ``/``-separated path of plain segments.

    Also a ``ValueError``: it is the caller's bug, never the tier's state, so
    code that validates its inputs can catch it like any other bad argument.
    """
