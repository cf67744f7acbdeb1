"""Glacier restores for :class:`tiers.s3.S3Tier`: ``RestoreObject`` and ``x-amz-restore``.

Objects in the S3 storage classes ``GLACIER`` (Glacier Flexible Retrieval) and
``DEEP_ARCHIVE`` are written, listed, deleted and described (``HeadObject``) like any
other, but ``GetObject`` answers 403 ``InvalidObjectState`` until a restore made a
temporary copy readable. ``GLACIER_IR`` (Instant Retrieval) is read at once and
needs none of this.

* ``RestoreObject`` with ``Days`` and ``GlacierJobParameters.Tier`` (Expedited,
  Standard, Bulk) asks for a restore: 202 when one starts, 200 when the object was
  already restored (its expiry moves to ``Days`` from now), 409
  ``RestoreAlreadyInProgress`` while one runs, which is not an error here.
* ``HeadObject`` reports progress in the ``x-amz-restore`` header (boto3's
  ``Restore``): absent before any restore and after expiry, ``ongoing-request="true"``
  while it runs, ``ongoing-request="false", expiry-date="Fri, 21 Dec 2012 00:00:00 GMT"``
  once readable. S3 does not say when a running restore will finish: the estimate
  :meth:`S3Tier.restore` returns is its request time plus the typical delay.

The speeds, delays and prices a tier offers are its settings ``retrieval_hours``
and ``retrieval_prices``; the defaults below are typical figures, not a quote.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

from tiers.base import RestoreState, RetrievalOption, check_key
from tiers.errors import NeedsRestore, TierConfigError, TierError
from tiers.s3_upload import error_code

if TYPE_CHECKING:
    from mypy_boto3_s3.literals import TierType

    from tiers.s3 import S3Tier

__all__ = [
    "ARCHIVE_STORAGE_CLASSES",
    "DEFAULT_RETRIEVAL_HOURS",
    "DEFAULT_RETRIEVAL_PRICES",
    "SPEEDS",
    "RetrievalTable",
    "needs_restore_error",
    "request_restore",
    "restore_status",
    "state_from_head",
]

logger = logging.getLogger("tiers.s3")

ARCHIVE_STORAGE_CLASSES = frozenset({"GLACIER", "DEEP_ARCHIVE"})
"""Storage classes whose objects need ``RestoreObject`` before ``GetObject``."""

SPEEDS = ("expedited", "standard", "bulk")
"""Every retrieval speed, fastest first; ``GlacierJobParameters.Tier`` capitalises them."""

#: Typical hours until a restore completes, from the AWS S3 User Guide ("Understanding
#: archive retrieval options"): Flexible Retrieval Expedited 1-5 minutes, Standard
#: 3-5 hours, Bulk 5-12 hours; Deep Archive Standard within 12 hours, Bulk within 48
#: hours, and no Expedited. A storage class not listed uses the GLACIER row (objects
#: moved there by a lifecycle rule from a tier of another class).
DEFAULT_RETRIEVAL_HOURS: Mapping[str, Mapping[str, float]] = {
    "GLACIER": {"expedited": 0.08, "standard": 4.0, "bulk": 12.0},
    "DEEP_ARCHIVE": {"standard": 12.0, "bulk": 48.0},
}

#: Retrieval price in USD per GiB, AWS list prices for us-east-1 at the time of
#: writing (per-request fees left out); set the real ones in the tier's settings.
DEFAULT_RETRIEVAL_PRICES: Mapping[str, Mapping[str, float]] = {
    "GLACIER": {"expedited": 0.03, "standard": 0.01, "bulk": 0.0},
    "DEEP_ARCHIVE": {"standard": 0.02, "bulk": 0.0025},
}

_API_TIERS: Mapping[str, TierType] = {
    "expedited": "Expedited",
    "standard": "Standard",
    "bulk": "Bulk",
}
_RESTORE_FIELD = re.compile(r'([A-Za-z-]+)="([^"]*)"')


@dataclass(frozen=True)
class RetrievalTable:
    """The speeds a tier offers, with their typical delay (hours) and price per GiB."""

    hours: Mapping[str, float]
    prices: Mapping[str, float]

    @classmethod
    def build(
        cls,
        tier: str,
        storage_class: str | None,
        hours: Mapping[str, float] | None,
        prices: Mapping[str, float] | None,
    ) -> RetrievalTable:
        """The defaults for ``storage_class``, overridden by the tier's settings.

        Raises:
            TierConfigError: a setting names a speed the class does not offer, or
                holds a negative number.
        """
        row = storage_class or "GLACIER"
        if row not in DEFAULT_RETRIEVAL_HOURS:
            row = "GLACIER"
        offered = DEFAULT_RETRIEVAL_HOURS[row]
        for setting, given in (("retrieval_hours", hours), ("retrieval_prices", prices)):
            unknown = sorted(set(given or {}) - set(offered))
            if unknown:
                raise TierConfigError(
                    f"tier {tier!r}: {setting} names {unknown}, which {row} does not offer "
                    f"(offered: {', '.join(offered)})",
                    tier=tier,
                )
            if any(value < 0 for value in (given or {}).values()):
                raise TierConfigError(f"tier {tier!r}: {setting} must not be negative", tier=tier)
        return cls(
            hours={**offered, **(hours or {})},
            prices={**DEFAULT_RETRIEVAL_PRICES[row], **(prices or {})},
        )

    def options(self) -> list[RetrievalOption]:
        return [
            RetrievalOption(speed, dt.timedelta(hours=self.hours[speed]), self.prices[speed])
            for speed in SPEEDS
            if speed in self.hours
        ]

    def check_speed(self, speed: str) -> None:
        if speed not in self.hours:
            offered = ", ".join(s for s in SPEEDS if s in self.hours)
            raise ValueError(f"unknown retrieval speed {speed!r} (offered: {offered})")


def request_restore(tier: S3Tier, key: str, *, days: int, speed: str) -> RestoreState:
    """``RestoreObject`` for ``days`` at ``speed``, then the state ``HeadObject`` reports.

    ``RestoreAlreadyInProgress`` is the answer to a repeated request, not an error:
    the state is ``in-progress`` even if ``HeadObject`` does not show it yet.
    ``InvalidObjectState`` means the object is in a class that needs no restore
    (a tier with cold objects may also hold others): the state says ``not-needed``.

    Raises:
        ObjectNotFound: no such key.
        ValueError: a speed the tier does not offer, or ``days`` below 1.
    """
    tier.retrieval.check_speed(speed)
    if days < 1:
        raise ValueError(f"a restore lasts at least 1 day, not {days}")
    check_key(key)
    tier._ensure_bucket()
    requested_at = dt.datetime.now(dt.UTC)
    already_in_progress = False
    try:
        with tier._errors(key):
            tier.client.restore_object(
                Bucket=tier.bucket,
                Key=tier.prefix + key,
                RestoreRequest={
                    "Days": days,
                    "GlacierJobParameters": {"Tier": _API_TIERS[speed]},
                },
            )
    except TierError as exc:
        code = error_code(exc.__cause__)
        if code not in ("RestoreAlreadyInProgress", "InvalidObjectState"):
            raise
        already_in_progress = code == "RestoreAlreadyInProgress"
    state = restore_status(tier, key)
    if already_in_progress and state.status == "not-started":
        state = RestoreState("in-progress")
    if state.status == "in-progress" and state.ready_at is None:
        typical = dt.timedelta(hours=tier.retrieval.hours[speed])
        state = dataclasses.replace(state, ready_at=requested_at + typical)
    return state


def restore_status(tier: S3Tier, key: str) -> RestoreState:
    """The state of ``key`` from one ``HeadObject``.

    Raises:
        ObjectNotFound: no such key.
    """
    return state_from_head(tier._head(key), dt.datetime.now(dt.UTC))


def state_from_head(head: Mapping[str, Any], now: dt.datetime) -> RestoreState:
    """Read ``StorageClass`` and ``Restore`` (``x-amz-restore``) of a ``HeadObject`` answer.

    An unrecognised header reads as ``not-started``: never claim readable what may not be.
    """
    if head.get("StorageClass", "STANDARD") not in ARCHIVE_STORAGE_CLASSES:
        return RestoreState("not-needed")
    header = head.get("Restore")
    if not header:
        return RestoreState("not-started")
    fields = dict(_RESTORE_FIELD.findall(header))
    ongoing = fields.get("ongoing-request")
    if ongoing == "true":
        return RestoreState("in-progress")
    if ongoing != "false":
        logger.warning("unrecognised x-amz-restore header %r", header)
        return RestoreState("not-started")
    expires_at: dt.datetime | None = None
    if "expiry-date" in fields:
        try:
            expires_at = parsedate_to_datetime(fields["expiry-date"])
        except (TypeError, ValueError):
            logger.warning("unrecognised expiry-date in x-amz-restore header %r", header)
    if expires_at is not None and expires_at <= now:
        return RestoreState("not-started")
    return RestoreState("ready", expires_at=expires_at)


def needs_restore_error(tier: S3Tier, key: str) -> NeedsRestore:
    """A :class:`NeedsRestore` that says whether a restore is running (one ``HeadObject``)."""
    state = restore_status(tier, key)
    if state.status == "in-progress":
        detail = "a restore is in progress (HeadObject x-amz-restore ongoing-request=true)"
    else:
        detail = "request a restore (RestoreObject) and read it once ready"
    return NeedsRestore(
        f"{key}: stored in an archive storage class of tier {tier.name!r} and not "
        f"readable now; {detail}",
        tier=tier.name,
        key=key,
        status=state.status if state.status in ("not-started", "in-progress") else None,
        ready_at=state.ready_at,
    )
