"""The client of a partner's federation API (httpx), every request signed (RFC 9421).

Its one user is the ``federation`` tier kind (:mod:`federation.tier`), so it speaks
the tier's error vocabulary: a partner that cannot be reached or answers 5xx is
:class:`~tiers.TierUnavailable` (retryable, never damage), 404 is
:class:`~tiers.ObjectNotFound`, any other refusal is a :class:`~tiers.TierError`
carrying the partner's own explanation (over quota: 507).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation.signing import RequestSigner, content_digest
from tiers import ObjectNotFound, TierError, TierUnavailable

PREFIX = "/federation/v1"


class PartnerRefused(TierError):
    """The partner understood the request and said no (4xx other than 404)."""

    def __init__(
        self, status: int, error: str, detail: str, *, tier: str | None, key: str | None
    ) -> None:
        super().__init__(f"partner answered {status} {error}: {detail}", tier=tier, key=key)
        self.status = status
        self.error = error
        """The partner's error class (``QuotaExceeded``, ``AddressMismatch``, ...)."""
        self.detail = detail


class FederationClient:
    def __init__(
        self, base_url: str, key: Ed25519PrivateKey, *, name: str = "", timeout: float = 60.0
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.signer = RequestSigner(key)
        self.http = httpx.Client(timeout=timeout, headers={"Accept": "application/json"})

    def close(self) -> None:
        self.http.close()

    # -- plumbing ---------------------------------------------------------------------
    def build(
        self,
        method: str,
        path: str,
        *,
        content: bytes | Iterable[bytes] = b"",
        sha256: bytes | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
    ) -> httpx.Request:
        """A signed request; a streamed ``content`` needs its ``sha256`` and Content-Length."""
        if sha256 is None:
            assert isinstance(content, bytes), "a streamed body needs its sha256"
            sha256 = hashlib.sha256(content).digest()
        request = self.http.build_request(
            method, self.base_url + PREFIX + path, content=content, headers=headers, params=params
        )
        self.signer.sign(request, digest=content_digest(sha256))
        return request

    def send(
        self, request: httpx.Request, *, key: str | None = None, stream: bool = False
    ) -> httpx.Response:
        try:
            response = self.http.send(request, stream=stream)
        except httpx.TransportError as exc:
            raise TierUnavailable(
                f"partner {self.base_url} unreachable: {type(exc).__name__}: {exc}",
                tier=self.name,
                key=key,
            ) from exc
        if response.status_code < 300:
            return response
        if stream:
            response.read()
            response.close()
        error, detail = _error(response)
        if response.status_code == 404:
            raise ObjectNotFound(f"partner does not hold it: {detail}", tier=self.name, key=key)
        if response.status_code == 429 or (
            response.status_code >= 500 and response.status_code != 507
        ):  # 429: the partner asks us to slow down (its rate limit), which is not damage
            raise TierUnavailable(
                f"partner answered {response.status_code}: {detail}", tier=self.name, key=key
            )
        raise PartnerRefused(response.status_code, error, detail, tier=self.name, key=key)

    # -- blobs ------------------------------------------------------------------------
    def put_blob(self, address: str, body: Iterable[bytes], *, size: int, sha256: bytes) -> bool:
        """Send ``size`` bytes named ``address``; whether the partner stored them anew."""
        request = self.build(
            "PUT",
            f"/blobs/{address}",
            content=body,
            sha256=sha256,
            headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"},
        )
        return bool(self.send(request, key=address).json().get("stored"))

    def head_blob(self, address: str) -> int:
        """The size the partner holds for ``address``. Raises: ObjectNotFound."""
        response = self.send(self.build("HEAD", f"/blobs/{address}"), key=address)
        return int(response.headers["content-length"])

    @contextmanager
    def get_blob(
        self, address: str, *, offset: int = 0, length: int | None = None
    ) -> Iterator[Iterator[bytes]]:
        if length == 0:  # no Range can ask for nothing: ask whether it is held
            self.head_blob(address)
            yield iter(())
            return
        headers = {}
        if offset or length is not None:
            end = "" if length is None else str(offset + length - 1)
            headers["Range"] = f"bytes={offset}-{end}"
        request = self.build("GET", f"/blobs/{address}", headers=headers)
        try:
            response = self.send(request, key=address, stream=True)
        except PartnerRefused as exc:
            if exc.status != 416:
                raise
            yield iter(())  # starts at or past the end: nothing, as every tier's ranges
            return
        try:
            yield self._body(response, address)
        finally:
            response.close()

    def _body(self, response: httpx.Response, key: str) -> Iterator[bytes]:
        try:
            yield from response.iter_raw(1024 * 1024)
        except httpx.TransportError as exc:
            raise TierUnavailable(
                f"partner stopped sending: {exc}", tier=self.name, key=key
            ) from exc

    def delete_blob(self, address: str) -> None:
        self.send(self.build("DELETE", f"/blobs/{address}"), key=address)

    # -- manifests, inventory, usage, proofs ------------------------------------------
    def put_manifest(self, name: str, body: bytes, *, sealed: bool) -> None:
        media = "application/octet-stream" if sealed else "application/json"
        request = self.build(
            "PUT", f"/manifests/{name}", content=body, headers={"Content-Type": media}
        )
        self.send(request, key=name)

    def get_manifest(self, name: str) -> bytes:
        return self.send(self.build("GET", f"/manifests/{name}"), key=name).content

    def inventory(
        self, *, kind: str | None = None, page: int = 1000, bad_only: bool = False
    ) -> Iterator[dict[str, Any]]:
        """Everything the partner holds for us, page by page (``bad_only``: what the
        partner's own audits found damaged or missing)."""
        after = ""
        while True:
            params: dict[str, Any] = {"after": after, "limit": page}
            if kind:
                params["kind"] = kind
            if bad_only:
                params["state"] = "bad"
            answer = self.send(self.build("GET", "/inventory", params=params)).json()
            yield from answer["objects"]
            if not answer["next"]:
                return
            after = answer["next"]

    def usage(self) -> dict[str, Any]:
        answer: dict[str, Any] = self.send(self.build("GET", "/usage")).json()
        return answer

    def prove(self, key: bytes, addresses: list[str]) -> dict[str, str | None]:
        """The partner's keyed BLAKE3 of each address it holds (None: not held)."""
        body = json.dumps({"key": key.hex(), "addresses": addresses}).encode()
        request = self.build(
            "POST", "/proofs", content=body, headers={"Content-Type": "application/json"}
        )
        answer = self.send(request).json()
        proofs: dict[str, str | None] = {}
        for item in answer.get("proofs", []):
            if isinstance(item, dict) and item.get("address") in addresses:
                proof = item.get("proof")
                proofs[item["address"]] = proof if isinstance(proof, str) else None
        return proofs


def _error(response: httpx.Response) -> tuple[str, str]:
    """The partner's error class and explanation (``web.errors`` bodies)."""
    try:
        body = response.json()
    except ValueError:
        return "", response.text[:500]
    if isinstance(body, dict) and "detail" in body:
        return str(body.get("error", "")), str(body["detail"])[:500]
    return "", str(body)[:500]
