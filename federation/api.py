"""The federation API a partner calls, mounted at ``/federation/v1`` (issue 5).

Every route first checks the request's RFC 9421 signature (:mod:`federation.intake`)
and knows the caller as one registered partner; everything it reads or writes is
that partner's, under ``partners/<name>/`` in our holding tier. Bodies are streamed,
hashed as they pass (SHA-256 for the signed ``Content-Digest``, BLAKE3 by the tier
for the address) and promoted only when both hold, so a bad request stores nothing:

* ``PUT/GET/HEAD/DELETE /blobs/{address}``: opaque bytes named by their BLAKE3.
* ``PUT/GET /manifests/{collection}/{dataset}/v{N}.json``: a version manifest, JSON or sealed bytes.
* ``GET /inventory``: what we hold for the caller, in pages; ``GET /usage``: bytes and quota.
* ``POST /proofs``: proof of possession, the keyed BLAKE3 of each blob's stored bytes
  under a fresh key the caller chose, which cannot be answered without reading them.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from collections.abc import Iterator
from typing import Annotated, Any

import anyio.to_thread
import blake3
from fastapi import APIRouter, Query, Request, Response, status
from fastapi.responses import StreamingResponse

from archive.catalog.models import ReplicaState
from archive.errors import Conflict, NotFound
from archive.held import BLOB, MANIFEST, held_key, holding_tier
from archive.node import ArchiveNode
from federation.errors import AddressMismatch, BadFederationRequest, RangeNotSatisfiable
from federation.intake import (
    PREFIX,
    CallerDep,
    check_address,
    check_manifest_name,
    declared_length,
    media_type,
    node_of,
    receive,
)
from federation.partners import (
    ADDRESS,
    check_quota,
    find_held,
    forget_held,
    held_names,
    inventory,
    record_held,
    renew_held,
    usage,
)
from federation.signing import Caller
from tiers import (
    CHUNK_SIZE,
    DigestMismatch,
    HashingTier,
    ObjectExists,
    ObjectNotFound,
    Tier,
    read_ahead,
)

MAX_MANIFEST = 64 * 1024 * 1024
MAX_PROOF_BODY = 1024 * 1024
MAX_PROOF_ADDRESSES = 1000
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")
router = APIRouter(prefix=PREFIX, tags=["federation"])


# -- blobs --------------------------------------------------------------------------------
@router.put("/blobs/{address}", status_code=status.HTTP_201_CREATED)
async def put_blob(
    address: str, request: Request, response: Response, caller: CallerDep
) -> dict[str, Any]:
    """Store the body as ``address`` for the caller: 201 new, 200 already held."""
    node = node_of(request)
    check_address(address)
    size = declared_length(request)

    def admit() -> tuple[bool, bool]:
        """Whether we hold it already, and whether our audit last found it bad (then the
        bytes sent replace what we have: the partner is repairing its copy)."""
        with node.session() as session:
            found = find_held(caller.partner_id, BLOB, address, session=session)
            if found is not None:
                return True, found.state != ReplicaState.PRESENT
            check_quota(caller.partner_id, caller.quota_bytes, size, session=session)
            return False, False

    held, damaged = await anyio.to_thread.run_sync(admit)
    tier = holding_tier(node)
    upload = await anyio.to_thread.run_sync(tier.begin_put)
    try:
        await receive(request, caller, size, upload)
        if held and not damaged:
            if upload.b3 != address:
                raise AddressMismatch(address, upload.b3)
            await anyio.to_thread.run_sync(upload.abort)
            response.status_code = status.HTTP_200_OK
            return {"address": address, "size": size, "stored": False}
        key = held_key(caller.name, BLOB, address)
        try:
            await anyio.to_thread.run_sync(
                lambda: upload.promote(key, expect_b3=address, replace=damaged)
            )
        except DigestMismatch as exc:
            raise AddressMismatch(address, exc.found) from exc
        except ObjectExists:
            pass  # promoted before, by a request that failed to record it: same bytes
    except BaseException:
        await anyio.to_thread.run_sync(upload.abort)
        raise

    def record() -> None:
        with node.session() as session:
            if damaged:
                renew_held(caller.partner_id, BLOB, address, session=session)
            else:
                record_held(caller.partner_id, BLOB, address, size, address, session=session)

    await anyio.to_thread.run_sync(record)
    return {"address": address, "size": size, "stored": True}


def _held_or_404(node: ArchiveNode, caller: Caller, kind: str, name: str) -> int:
    with node.session() as session:
        held = find_held(caller.partner_id, kind, name, session=session)
    if held is None:
        raise NotFound(f"no {kind} {name} is held for partner {caller.name!r}")
    return held.size


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    if header is None:
        return None
    match = _RANGE.match(header.strip())
    if match is None:
        raise BadFederationRequest(f"unsupported Range {header[:80]!r}")
    start = int(match[1])
    if start >= size:
        raise RangeNotSatisfiable(header, size)
    end = min(int(match[2]), size - 1) if match[2] else size - 1  # cut at the end (RFC 9110)
    if start > end:
        raise BadFederationRequest(f"Range {header[:80]!r}: the last byte is before the first")
    return start, end - start + 1


@router.get("/blobs/{address}")
async def get_blob(address: str, request: Request, caller: CallerDep) -> StreamingResponse:
    """The stored bytes of ``address`` (``Range: bytes=a-b`` for a part)."""
    node = node_of(request)
    check_address(address)
    size = await anyio.to_thread.run_sync(_held_or_404, node, caller, BLOB, address)
    wanted = _byte_range(request.headers.get("range"), size)
    offset, length = wanted if wanted else (0, size)
    key = held_key(caller.name, BLOB, address)
    stack = contextlib.ExitStack()
    try:
        stream = await anyio.to_thread.run_sync(
            lambda: stack.enter_context(
                holding_tier(node).open(key, offset=offset, length=length if wanted else None)
            )
        )
    except ObjectNotFound as exc:
        stack.close()
        raise NotFound(f"blob {address} is recorded but gone from storage") from exc

    def chunks() -> Iterator[bytes]:
        with stack:
            while chunk := stream.read(CHUNK_SIZE):
                yield chunk

    headers = {"Content-Length": str(length)}
    code = status.HTTP_206_PARTIAL_CONTENT if wanted else status.HTTP_200_OK
    return StreamingResponse(
        chunks(), status_code=code, media_type="application/octet-stream", headers=headers
    )


@router.head("/blobs/{address}")
async def head_blob(address: str, request: Request, caller: CallerDep) -> Response:
    node = node_of(request)
    check_address(address)
    size = await anyio.to_thread.run_sync(_held_or_404, node, caller, BLOB, address)
    return Response(headers={"Content-Length": str(size)}, media_type="application/octet-stream")


@router.delete("/blobs/{address}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_blob(address: str, request: Request, caller: CallerDep) -> Response:
    """Stop holding ``address`` for the caller (idempotent)."""
    node = node_of(request)
    check_address(address)

    def delete() -> None:
        holding_tier(node).delete(held_key(caller.name, BLOB, address))
        with node.session() as session:
            forget_held(caller.partner_id, BLOB, address, session=session)

    await anyio.to_thread.run_sync(delete)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# -- manifests ----------------------------------------------------------------------------
@router.put("/manifests/{name:path}", status_code=status.HTTP_201_CREATED)
async def put_manifest(
    name: str, request: Request, response: Response, caller: CallerDep
) -> dict[str, Any]:
    """Store a manifest: canonical JSON (``application/json``) or sealed bytes
    (``application/octet-stream``). Write-once: the same bytes again answer 200."""
    node = node_of(request)
    full = check_manifest_name(name)
    media = media_type(request, "application/json", "application/octet-stream")
    size = declared_length(request, MAX_MANIFEST)
    body = await receive(request, caller, size, None)
    if media == "application/json":
        try:
            parsed = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadFederationRequest(f"the manifest is not JSON: {exc}") from exc
        if not isinstance(parsed, dict):
            raise BadFederationRequest("a manifest is a JSON object")
    b3 = blake3.blake3(body).hexdigest()

    def store() -> bool:
        key = held_key(caller.name, MANIFEST, full)
        with node.session() as session:
            held = find_held(caller.partner_id, MANIFEST, full, session=session)
            if held is not None:
                if held.b3 != b3:
                    raise Conflict(f"manifest {full} is already held with other bytes")
                if _holds_intact(holding_tier(node), key, b3):
                    return False
                # Lost or changed here since (our audit may not have run yet): the
                # partner is repairing its copy, so the proven bytes replace ours.
                with holding_tier(node).begin_put() as upload:
                    upload.write(body)
                    upload.promote(key, expect_b3=b3, replace=True)
                renew_held(caller.partner_id, MANIFEST, full, session=session)
                return True
            check_quota(caller.partner_id, caller.quota_bytes, size, session=session)
            with contextlib.suppress(ObjectExists):
                holding_tier(node).put(key, io.BytesIO(body), expect_b3=b3)
            record_held(caller.partner_id, MANIFEST, full, size, b3, session=session)
            return True

    if not await anyio.to_thread.run_sync(store):
        response.status_code = status.HTTP_200_OK
    return {"name": full, "size": size, "b3": b3}


def _holds_intact(tier: Tier, key: str, b3: str) -> bool:
    """Whether ``key`` still holds bytes hashing to ``b3`` (a manifest: small, read whole)."""
    hasher = blake3.blake3()
    try:
        with tier.open(key) as stream:
            while chunk := stream.read(CHUNK_SIZE):
                hasher.update(chunk)
    except ObjectNotFound:
        return False
    return hasher.hexdigest() == b3


@router.get("/manifests/{name:path}")
async def get_manifest(name: str, request: Request, caller: CallerDep) -> Response:
    node = node_of(request)
    full = check_manifest_name(name)

    def read() -> bytes:
        _held_or_404(node, caller, MANIFEST, full)
        try:
            with holding_tier(node).open(held_key(caller.name, MANIFEST, full)) as stream:
                return stream.read()
        except ObjectNotFound as exc:  # lost here: the partner must see it missing (404)
            raise NotFound(f"manifest {full} is recorded but gone from storage") from exc

    body = await anyio.to_thread.run_sync(read)
    return Response(body, media_type="application/octet-stream")


# -- inventory, usage, proofs -------------------------------------------------------------
@router.get("/inventory")
async def get_inventory(
    request: Request,
    caller: CallerDep,
    after: Annotated[str, Query(max_length=400, description="`kind:name` of the last seen")] = "",
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    kind: Annotated[str | None, Query(pattern="^(blob|manifest)$")] = None,
    state: Annotated[
        str | None, Query(pattern="^bad$", description="`bad`: only what our audit found bad")
    ] = None,
) -> dict[str, Any]:
    """What we hold for the caller, in ``kind:name`` order; pass ``next`` as ``after``.

    Each object carries the state our own audit of it left (``present``, ``damaged``,
    ``missing``) and when it was last verified; ``state=bad`` lists only the damaged and
    missing ones, so the caller learns of them before its next proof would.
    """
    node = node_of(request)

    def page() -> dict[str, Any]:
        with node.session() as session:
            rows = inventory(
                caller.partner_id,
                kind=kind,
                after=after,
                limit=limit,
                session=session,
                bad_only=state == "bad",
            )
            objects = [
                {
                    "kind": r.kind,
                    "name": r.name,
                    "size": r.size,
                    "b3": r.b3,
                    "state": r.state,
                    "last_verified_at": (
                        r.last_verified_at.isoformat() if r.last_verified_at else None
                    ),
                }
                for r in rows
            ]
        last = objects[-1] if len(objects) == limit else None
        return {"objects": objects, "next": f"{last['kind']}:{last['name']}" if last else None}

    return await anyio.to_thread.run_sync(page)


@router.get("/usage")
async def get_usage(request: Request, caller: CallerDep) -> dict[str, Any]:
    node = node_of(request)

    def read() -> tuple[int, int]:
        with node.session() as session:
            return usage(caller.partner_id, session=session)

    used, count = await anyio.to_thread.run_sync(read)
    return {
        "partner": caller.name,
        "used_bytes": used,
        "objects": count,
        "quota_bytes": caller.quota_bytes,
    }


@router.post("/proofs")
async def prove(request: Request, caller: CallerDep) -> dict[str, Any]:
    """Proof of possession: ``{"key": <64 hex>, "addresses": [...]}`` answers, per address,
    the keyed BLAKE3 of the bytes we hold (``null``: not held)."""
    node = node_of(request)
    media_type(request, "application/json")
    size = declared_length(request, MAX_PROOF_BODY)
    body = await receive(request, caller, size, None)
    key, addresses = _proof_request(body)

    def answer() -> list[dict[str, str | None]]:
        with node.session() as session:
            held = held_names(caller.partner_id, BLOB, addresses, session=session)
        return [
            {"address": a, "proof": _keyed_digest(node, caller, key, a) if a in held else None}
            for a in addresses
        ]

    return {"proofs": await anyio.to_thread.run_sync(answer)}


def _proof_request(body: bytes) -> tuple[bytes, list[str]]:
    try:
        parsed = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadFederationRequest(f"the proof request is not JSON: {exc}") from exc
    if not isinstance(parsed, dict) or set(parsed) != {"key", "addresses"}:
        raise BadFederationRequest('a proof request is {"key": ..., "addresses": [...]}')
    key, addresses = parsed["key"], parsed["addresses"]
    if not isinstance(key, str) or not ADDRESS.match(key):
        raise BadFederationRequest("the proof key is 32 bytes in 64 lowercase hex digits")
    if not isinstance(addresses, list) or len(addresses) > MAX_PROOF_ADDRESSES:
        raise BadFederationRequest(f"addresses: a list of at most {MAX_PROOF_ADDRESSES}")
    for address in addresses:
        if not isinstance(address, str):
            raise BadFederationRequest("addresses are strings")
        check_address(address)
    return bytes.fromhex(key), addresses


def _keyed_digest(node: ArchiveNode, caller: Caller, key: bytes, address: str) -> str | None:
    """The keyed BLAKE3 of one held blob's bytes as they are now (None: gone).

    A tier that hashes in place does (a folder maps the file in a helper process, so
    a disk error or a truncation, which raises SIGBUS in a mapped file, kills the
    helper and not this server); others are read, the next chunk while this one is
    hashed (:func:`tiers.read_ahead`).
    """
    tier = holding_tier(node)
    stored = held_key(caller.name, BLOB, address)
    try:
        if isinstance(tier, HashingTier):
            return tier.hash_object(stored, keyed=key)[0]
        hasher = blake3.blake3(key=key, max_threads=blake3.blake3.AUTO)
        with tier.open(stored) as stream:
            for chunk in read_ahead(stream):
                hasher.update(chunk)
    except ObjectNotFound:
        return None
    return hasher.hexdigest()
