"""Signed federation requests: HTTP Message Signatures (RFC 9421) with Ed25519.

Every request a node sends a partner covers its method, its target URI, the
``Content-Digest`` of its body (RFC 9530, SHA-256; the empty body has one too), a
``created`` time and a random ``nonce``, under the tag ``permafrost-federation``.
The receiver refuses, before doing anything else, a request that is unsigned, signed
by a key it does not know as a partner's, signed more than the allowed skew ago (or
ahead), or whose nonce it has already seen. Seen nonces live in the catalog
(:class:`archive.catalog.models.SeenNonce`) until their signature would be stale
anyway, so a replay is refused by every process that shares the catalog.

The body's digest cannot be checked until the body was read: the endpoints stream
it, hash it as it passes, and keep nothing unless it matches
(:class:`DigestChecker`).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from http_message_signatures import (
    HTTPMessageSignaturesException,
    HTTPMessageSigner,
    HTTPMessageVerifier,
    HTTPSignatureKeyResolver,
    algorithms,
)
from sqlmodel import Session, col, select

from archive.catalog import models
from archive.catalog.models import utcnow
from archive.identity import parse_public_key, public_key_text
from federation.errors import BodyDigestMismatch, SignatureRefused

TAG = "permafrost-federation"
LABEL = "pf"
COVERED = ("@method", "@target-uri", "content-digest")
_DIGEST = re.compile(r"^\s*sha-256=:([A-Za-z0-9+/]{43}=):\s*$")


def content_digest(sha256: bytes) -> str:
    """The RFC 9530 ``Content-Digest`` field value for a body with this SHA-256."""
    return f"sha-256=:{base64.b64encode(sha256).decode('ascii')}:"


EMPTY_DIGEST = content_digest(hashlib.sha256(b"").digest())


class _OneKey(HTTPSignatureKeyResolver):
    def __init__(self, key: Ed25519PrivateKey) -> None:
        self.key = key

    def resolve_private_key(self, key_id: str) -> Ed25519PrivateKey:
        return self.key


class RequestSigner:
    """Signs outgoing requests (anything with ``method``, ``url`` and ``headers``,
    such as an ``httpx.Request``) with this node's key; the key id is its public key."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self.key_id = public_key_text(key)
        self._signer = HTTPMessageSigner(
            signature_algorithm=algorithms.ED25519, key_resolver=_OneKey(key)
        )

    def sign(
        self, request: Any, *, digest: str = EMPTY_DIGEST, created: dt.datetime | None = None
    ) -> None:
        request.headers["Content-Digest"] = digest
        self._signer.sign(
            request,
            key_id=self.key_id,
            created=created or dt.datetime.now(dt.UTC),
            nonce=secrets.token_urlsafe(24),
            label=LABEL,
            tag=TAG,
            covered_component_ids=COVERED,
            use_existing_digest=True,
        )


@dataclass(frozen=True)
class SignedMessage:
    """The parts of an incoming request a signature covers."""

    method: str
    url: str
    headers: Any


@dataclass(frozen=True)
class Caller:
    """A partner whose signature on this request held."""

    partner_id: int
    name: str
    quota_bytes: int
    sha256: bytes
    """What the body must hash to (its signed ``Content-Digest``)."""
    key_id: str
    """The partner's public key, as the signature names it (``keyid``)."""


class _PartnerKeys(HTTPSignatureKeyResolver):
    def __init__(self, session: Session) -> None:
        self.session = session
        self.partner: models.Partner | None = None

    def resolve_public_key(self, key_id: str) -> Ed25519PublicKey:
        partner = self.session.exec(
            select(models.Partner).where(models.Partner.public_key == key_id)
        ).first()
        if partner is None:
            raise SignatureRefused(f"the key {key_id[:60]!r} is not a registered partner's")
        self.partner = partner
        return parse_public_key(partner.public_key)


def verify_request(message: SignedMessage, *, skew_seconds: float, session: Session) -> Caller:
    """Check the signature of an incoming request and remember its nonce.

    The nonce is added in the caller's transaction, which must commit before the
    request does anything else (a second request with the same nonce then fails on
    the primary key, in this process or any other sharing the catalog).

    Raises:
        SignatureRefused: unsigned, unknown key, bad or stale signature, replayed nonce.
        BadFederationRequest: no usable ``Content-Digest``.
    """
    headers = message.headers
    if "signature" not in headers or "signature-input" not in headers:
        raise SignatureRefused("the request is not signed (RFC 9421 Signature, Signature-Input)")
    keys = _PartnerKeys(session)
    verifier = HTTPMessageVerifier(signature_algorithm=algorithms.ED25519, key_resolver=keys)
    skew = dt.timedelta(seconds=skew_seconds)
    verifier.max_clock_skew = skew
    try:
        results = verifier.verify(
            message, max_age=dt.timedelta(0), expect_tag=TAG, require_components=COVERED
        )
    except SignatureRefused:
        raise
    except (HTTPMessageSignaturesException, ValueError) as exc:
        raise SignatureRefused(f"bad signature: {exc}") from exc
    partner = keys.partner
    if len(results) != 1 or partner is None or partner.id is None:
        raise SignatureRefused("expected exactly one signature by a partner")
    params = results[0].parameters
    nonce, created = params.get("nonce"), params.get("created")
    if not isinstance(nonce, str) or not 16 <= len(nonce) <= 64:
        raise SignatureRefused("the signature needs a nonce of 16 to 64 characters")
    if not isinstance(created, int):
        raise SignatureRefused("the signature needs a created time")
    _remember_nonce(nonce, created, skew, session=session)
    match = _DIGEST.match(headers.get("content-digest", ""))
    if match is None:
        raise SignatureRefused("Content-Digest must be one sha-256 digest (RFC 9530)")
    return Caller(
        partner.id,
        partner.name,
        partner.quota_bytes,
        base64.b64decode(match[1]),
        key_id=partner.public_key,
    )


def _remember_nonce(nonce: str, created: int, skew: dt.timedelta, *, session: Session) -> None:
    now = utcnow()
    N = models.SeenNonce
    session.execute(sa.delete(N).where(col(N.expires_at) < now))
    if session.get(N, nonce) is not None:
        raise SignatureRefused("replayed request: this nonce was seen before")
    expires = dt.datetime.fromtimestamp(created, dt.UTC) + 2 * skew
    session.add(N(nonce=nonce, expires_at=max(expires, now)))
    try:
        session.flush()
    except sa.exc.IntegrityError as exc:  # the same nonce, at the same moment, elsewhere
        raise SignatureRefused("replayed request: this nonce was seen before") from exc


class DigestChecker:
    """Hashes a body as it streams past and says whether it matched its signed digest."""

    def __init__(self, expected: bytes) -> None:
        self.expected = expected
        self.hasher = hashlib.sha256()
        self.size = 0

    def update(self, data: bytes | memoryview) -> None:
        self.hasher.update(data)
        self.size += len(data)

    def check(self) -> None:
        """Raises: BodyDigestMismatch."""
        found = self.hasher.digest()
        if found != self.expected:
            raise BodyDigestMismatch(
                base64.b64encode(self.expected).decode(), base64.b64encode(found).decode()
            )
