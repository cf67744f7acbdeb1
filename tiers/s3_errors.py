"""botocore's errors mapped onto the tier error tree: the boundary of :mod:`tiers.s3`.

By S3 error code first (``NoSuchKey``, ``PreconditionFailed``, ``InvalidObjectState``,
``SlowDown``...), then by HTTP status, so stores that answer with a bare status
(``HeadObject`` has no body) are understood too.
"""

from __future__ import annotations

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    ProfileNotFound,
)

from tiers.errors import (
    NeedsRestore,
    ObjectExists,
    ObjectNotFound,
    TierConfigError,
    TierError,
    TierUnavailable,
)
from tiers.s3_upload import error_code, http_status

__all__ = ["translate_error"]

_CONFIG_CODES = frozenset(
    {
        "NoSuchBucket",
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "AllAccessDisabled",
        "InvalidBucketName",
        "PermanentRedirect",
        "AuthorizationHeaderMalformed",
        "InvalidToken",
        "ExpiredToken",
        "InvalidStorageClass",
    }
)
_UNAVAILABLE_CODES = frozenset(
    {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling"}
)
_DAMAGED_CODES = frozenset({"BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch"})


def translate_error(exc: ClientError | BotoCoreError, *, tier: str, key: str | None) -> TierError:
    """Map a botocore error onto the tier error tree, by S3 error code then HTTP status."""
    where = f"{key}: " if key else f"tier {tier!r}: "
    if isinstance(exc, ClientError):
        code, status = error_code(exc), http_status(exc)
        message = f"{where}{exc.operation_name} answered {status} {code}: {exc}"
        if code == "InvalidObjectState":  # GetObject of an archived object not restored
            return NeedsRestore(f"{message}; restore it first", tier=tier, key=key)
        if code in _CONFIG_CODES or status in (301, 403):
            return TierConfigError(message, tier=tier, key=key)
        if code in ("NoSuchKey", "NotFound") or status == 404:
            return ObjectNotFound(message, tier=tier, key=key)
        if code == "PreconditionFailed" or status == 412:
            return ObjectExists(f"{where}already stored", tier=tier, key=key)
        if code in _UNAVAILABLE_CODES or status >= 500 or status == 429:
            return TierUnavailable(message, tier=tier, key=key)
        error = TierError(message, tier=tier, key=key)
        error.retryable = code in _DAMAGED_CODES  # damaged in transit: sending again helps
        return error
    if isinstance(exc, ConnectionError | HTTPClientError | IncompleteReadError):
        return TierUnavailable(f"{where}{exc}", tier=tier, key=key)
    if isinstance(
        exc, NoCredentialsError | PartialCredentialsError | ProfileNotFound | NoRegionError
    ):
        return TierConfigError(f"{where}{exc}", tier=tier, key=key)
    return TierError(f"{where}{exc}", tier=tier, key=key)
