"""Errors of the federation endpoints, each with the HTTP status a partner sees.

They extend the archive's tree, so the web layer renders them like any other::

    PermafrostError (archive.errors)
    ├── NotAuthenticated                  401
    │   └── SignatureRefused(reason)      unsigned, unknown key, bad or stale signature, replay
    ├── InvalidInput                      422
    │   ├── BadFederationRequest          400: malformed address, name, JSON or length
    │   │   ├── RangeNotSatisfiable(size) 416: a Range that starts at or past the end
    │   │   ├── BodyDigestMismatch        400: the body does not match its Content-Digest
    │   │   └── AddressMismatch           400: the body does not hash to its address
    │   ├── UnsupportedMediaType          415
    │   └── QuotaExceeded(used, quota, size)  507: storing it would pass the partner's quota
    └── Conflict                          409: a manifest name already holds other bytes
"""

from __future__ import annotations

from archive.errors import InvalidInput, NotAuthenticated


class SignatureRefused(NotAuthenticated):
    """The request's RFC 9421 signature is missing or does not hold; nothing was done."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"federation request refused: {reason}")
        self.reason = reason


class BadFederationRequest(InvalidInput):
    http_status = 400


class RangeNotSatisfiable(BadFederationRequest):
    """RFC 9110 section 15.5.17: the range starts at or past the end of the object."""

    http_status = 416

    def __init__(self, header: str, size: int) -> None:
        super().__init__(f"Range {header[:80]!r} starts at or past the end ({size} bytes)")
        self.size = size


class BodyDigestMismatch(BadFederationRequest):
    def __init__(self, expected: str, found: str) -> None:
        super().__init__(
            f"the body does not match its Content-Digest (sha-256 expected {expected}, "
            f"found {found}); nothing was stored"
        )
        self.algorithm = "sha-256"
        self.expected = expected
        self.found = found


class AddressMismatch(BadFederationRequest):
    def __init__(self, address: str, found: str) -> None:
        super().__init__(
            f"the body does not hash to its address {address}: blake3 {found}; nothing was stored"
        )
        self.algorithm = "blake3"
        self.expected = address
        self.found = found


class UnsupportedMediaType(InvalidInput):
    http_status = 415


class QuotaExceeded(InvalidInput):
    http_status = 507

    def __init__(self, used: int, quota: int, size: int) -> None:
        super().__init__(
            f"over quota: {size:,} more bytes would make {used + size:,} of the "
            f"{quota:,} bytes agreed; nothing was stored"
        )
        self.used = used
        self.quota = quota
        self.size = size
