"""The ``federation`` tier kind: a partner institution's node as one more tier.

Registered through the ``permafrost.tiers`` entry point group, so ``tiers`` never
imports this package. Partner copies are then ordinary replicas: the replication
engine sends them, the fixity engine audits them (by proof of possession, see
:class:`tiers.ProvingTier`) and repairs them, and reads come back through ``open``.

The partner names what it holds by the BLAKE3 of the bytes it holds. A blob's
stored bytes are sent as they are (address: the blob's ``stored_b3``) or, with
``encrypt``, sealed first (:mod:`federation.sealing`; address: the BLAKE3 of the
sealed bytes). Either way :meth:`FederationUpload.promote` returns the key
``blobs/b3/<aa>/<bb>/<address>``, which the catalog records as the replica's key.
Before it returns (unless ``prove_after_put`` is off), the partner must prove it holds
what was sent, under a key chosen before the bytes left, so an acknowledged copy is a
proven copy.

Bytes are staged in a spool (in memory up to 64 MiB per copy in
flight) while they are written, because the request that sends them must carry their
address and digest in its signed headers, before the body.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import io
import os
import re
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO, cast

import blake3

from archive.errors import ConfigError
from archive.identity import load_node_key
from archive.packs import blob_key
from federation.client import FederationClient, PartnerRefused
from federation.partners import ADDRESS, MANIFEST_NAME
from federation.sealing import SealBroken, Sealer, load_collection_key, plain_size
from tiers import (
    CHUNK_SIZE,
    DigestMismatch,
    ObjectInfo,
    ObjectNotFound,
    TierCapabilities,
    TierConfigError,
    TierError,
    exists_by_stat,
)
from tiers.errors import InvalidKey

SPOOL_IN_MEMORY = 64 * 1024 * 1024
PROOF_BATCH = 1000
_BLOB_KEY = re.compile(r"^blobs/b3/[0-9a-f]{2}/[0-9a-f]{2}/([0-9a-f]{64})$")
_MANIFEST_KEY = re.compile(r"^manifests/(" + MANIFEST_NAME.pattern.strip("^$") + r")$")


@dataclass(frozen=True)
class _Name:
    kind: str
    name: str


class FederationTier:
    """A partner node (``url``), reached with this node's key (``node_key_file``)."""

    capabilities = TierCapabilities(atomic_promote=True, native_digests=False)

    def __init__(
        self,
        *,
        name: str,
        url: str,
        node_key_file: str | Path | None = None,
        encrypt: bool = False,
        collection_key_file: str | Path | None = None,
        timeout_seconds: float = 60.0,
        prove_after_put: bool = True,
    ) -> None:
        if node_key_file is None:
            raise TierConfigError(f"tier {name!r}: node_key_file is not set", tier=name)
        if encrypt and collection_key_file is None:
            raise TierConfigError(f"tier {name!r}: encrypt needs collection_key_file", tier=name)
        self.name = name
        self.url = url
        self.encrypt = encrypt
        self.prove_after_put = prove_after_put
        self.put_check = "proof of possession" if prove_after_put else "address checked by partner"
        self._node_key_file = Path(node_key_file)
        self._collection_key_file = Path(collection_key_file) if collection_key_file else None
        self._timeout = timeout_seconds
        self._client: FederationClient | None = None
        self._sealer: Sealer | None = None
        self._lock = threading.Lock()

    # Keys are read on first use: ``permafrost init`` opens the tiers before it makes
    # the node key, and a node that never talks to its partner never needs them.
    @property
    def client(self) -> FederationClient:
        with self._lock:
            if self._client is None:
                try:
                    key = load_node_key(self._node_key_file)
                except ConfigError as exc:
                    raise TierConfigError(str(exc), tier=self.name) from exc
                self._client = FederationClient(
                    self.url, key, name=self.name, timeout=self._timeout
                )
            return self._client

    @property
    def sealer(self) -> Sealer | None:
        if not self.encrypt:
            return None
        with self._lock:
            if self._sealer is None:
                assert self._collection_key_file is not None
                try:
                    self._sealer = Sealer(load_collection_key(self._collection_key_file))
                except ConfigError as exc:
                    raise TierConfigError(str(exc), tier=self.name) from exc
            return self._sealer

    def _name(self, key: str) -> _Name:
        if match := _BLOB_KEY.match(key):
            return _Name("blob", match[1])
        if match := _MANIFEST_KEY.match(key):
            return _Name("manifest", match[1])
        raise InvalidKey(
            f"{key}: a partner holds loose blobs (named by their BLAKE3) and manifests only",
            tier=self.name,
            key=key,
        )

    # -- the five verbs ---------------------------------------------------------------
    def begin_put(self) -> FederationUpload:
        return FederationUpload(self)

    def put(self, key: str, source: BinaryIO, *, expect_b3: str | None = None) -> ObjectInfo:
        with self.begin_put() as upload:
            while chunk := source.read(CHUNK_SIZE):
                upload.write(chunk)
            return upload.promote(key, expect_b3=expect_b3)

    def open(
        self, key: str, *, offset: int = 0, length: int | None = None
    ) -> AbstractContextManager[BinaryIO]:
        if offset < 0 or (length is not None and length < 0):
            raise ValueError(f"negative range: offset={offset}, length={length}")
        return self._open(self._name(key), key, offset, length)

    @contextmanager
    def _open(self, name: _Name, key: str, offset: int, length: int | None) -> Iterator[BinaryIO]:
        sealer = self.sealer
        if name.kind == "manifest":
            data = self.client.get_manifest(name.name)
            chunks: Iterable[bytes] = [data]
            if sealer is not None:
                chunks = _unsealed(sealer, chunks, key, self.name)
            yield _reader(_window(chunks, offset, length))
            return
        if sealer is None:
            with self.client.get_blob(name.name, offset=offset, length=length) as body:
                yield _reader(body)
            return
        with self.client.get_blob(name.name) as body:
            yield _reader(_window(_unsealed(sealer, body, key, self.name), offset, length))

    def stat(self, key: str) -> ObjectInfo:
        name = self._name(key)
        if name.kind == "manifest":
            with self.open(key) as stream:
                return ObjectInfo(key=key, size=len(stream.read()))
        size = self.client.head_blob(name.name)
        return ObjectInfo(key=key, size=plain_size(size) if self.encrypt else size)

    def exists(self, key: str) -> bool:
        return exists_by_stat(self, key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        for item in self.client.inventory():
            key = blob_key(item["name"]) if item["kind"] == "blob" else f"manifests/{item['name']}"
            if key.startswith(prefix):
                size = item["size"]
                yield ObjectInfo(key=key, size=plain_size(size) if self.encrypt else size)

    def delete(self, key: str) -> None:
        name = self._name(key)
        if name.kind != "blob":
            raise TierError(f"{key}: manifests held by a partner are kept", tier=self.name, key=key)
        self.client.delete_blob(name.name)

    def sweep_staging(self, older_than: Any) -> int:
        return 0  # staging is a local temporary file, gone with its upload

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    # -- proofs of possession (tiers.ProvingTier) -------------------------------------
    def prove(self, keys: Sequence[str], challenge: bytes) -> dict[str, str | None]:
        addresses = {self._name(key).name: key for key in keys}
        answers: dict[str, str | None] = {}
        names = list(addresses)
        for start in range(0, len(names), PROOF_BATCH):
            batch = names[start : start + PROOF_BATCH]
            answers.update(self.client.prove(challenge, batch))
        return {key: answers.get(address) for address, key in addresses.items()}

    def reported_damage(self) -> builtins.list[str]:
        """Keys of the copies the partner's own audits found damaged or missing."""
        keys: builtins.list[str] = []
        for item in self.client.inventory(bad_only=True):
            kind, name = item.get("kind"), item.get("name")
            if kind == "blob" and isinstance(name, str) and ADDRESS.match(name):
                keys.append(blob_key(name))
            elif kind == "manifest" and isinstance(name, str) and MANIFEST_NAME.match(name):
                keys.append(f"manifests/{name}")
        return keys

    def expected_proof(self, stored: Iterable[bytes], *, stored_b3: str, challenge: bytes) -> str:
        hasher = blake3.blake3(key=challenge, max_threads=blake3.blake3.AUTO)
        sealer = self.sealer
        for chunk in sealer.seal(stored, plaintext_b3=stored_b3) if sealer else stored:
            hasher.update(chunk)
        return hasher.hexdigest()


class FederationUpload:
    """Bytes staged for a partner: spooled as written, sent at promote.

    Only what the signed request needs up front is computed while writing: the
    SHA-256 of the body (its ``Content-Digest``) and, when the partner must prove it
    holds the bytes afterwards, their keyed BLAKE3 under the fresh challenge. The
    BLAKE3 the blob must have is checked by the partner, which refuses a body that
    does not hash to its address (``AddressMismatch``: raised here as
    :class:`~tiers.DigestMismatch`); a sealed body is checked here, before sealing.
    """

    def __init__(self, tier: FederationTier) -> None:
        self.tier = tier
        self.spool = _Spool()
        self._sha256 = hashlib.sha256()
        self.challenge = os.urandom(32)
        self._keyed = (
            blake3.blake3(key=self.challenge, max_threads=blake3.blake3.AUTO)
            if tier.prove_after_put and not tier.encrypt
            else None
        )
        self._size = 0
        self._done = False

    @property
    def size(self) -> int:
        return self._size

    @property
    def b3(self) -> str:
        """BLAKE3 of the bytes written so far (read back from the spool)."""
        hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
        for chunk in self.spool.chunks():
            hasher.update(chunk)
        return hasher.hexdigest()

    def write(self, data: bytes | memoryview) -> None:
        if self._done:
            raise ValueError("write to an upload that was promoted or aborted")
        self.spool.write(data)
        self._sha256.update(data)
        if self._keyed is not None:
            self._keyed.update(data)
        self._size += len(data)

    def promote(
        self, key: str, *, expect_b3: str | None = None, replace: bool = False
    ) -> ObjectInfo:
        """Send the bytes; returns the key they are held under (see the module docstring).

        ``replace`` (repair): the partner keeps what it already holds under an address
        and answers "held" to a second copy, so the copy under ``key`` is deleted
        first. That is safe here: the bytes being sent are the good copy, from home.

        Raises:
            DigestMismatch: the bytes written do not hash to ``expect_b3``; nothing kept.
            TierError: the partner refused them (over quota: 507) or could not prove
                it holds them; TierUnavailable: the partner did not answer.
        """
        tier = self.tier
        if self._done:
            raise ValueError("promote of an upload that was promoted or aborted")
        expect_b3 = expect_b3.lower() if expect_b3 is not None else None
        try:
            name = tier._name(key)
            if replace and name.kind == "blob":
                with contextlib.suppress(ObjectNotFound):
                    tier.delete(key)
            sealer = tier.sealer
            if name.kind == "manifest" or sealer is not None or expect_b3 is None:
                b3 = self.b3
                if expect_b3 is not None and b3 != expect_b3:
                    raise DigestMismatch(key, "blake3", expect_b3, b3, tier=tier.name)
            else:
                b3 = expect_b3  # the partner checks it: AddressMismatch otherwise
            if name.kind == "manifest":
                body = b"".join(self.spool.chunks())
                if sealer is not None:
                    body = b"".join(sealer.seal([body], plaintext_b3=b3))
                tier.client.put_manifest(name.name, body, sealed=sealer is not None)
                return ObjectInfo(key=key, size=self._size, b3=b3)
            if sealer is not None:
                source, address, sha256, keyed, size = self._sealed(sealer, b3)
            else:
                source, address, sha256, size = self.spool, b3, self._sha256.digest(), self._size
                keyed = self._keyed.hexdigest() if self._keyed is not None else None
            try:
                tier.client.put_blob(address, source.chunks(), size=size, sha256=sha256)
            except PartnerRefused as exc:
                if exc.error == "AddressMismatch":  # what we sent hashes to what we have
                    raise DigestMismatch(key, "blake3", b3, self.b3, tier=tier.name) from exc
                raise
            if keyed is not None:
                self._check_proof(key, address, keyed)
            return ObjectInfo(key=blob_key(address), size=self._size, b3=b3)
        finally:
            self.abort()

    def _check_proof(self, key: str, address: str, keyed: str) -> None:
        proof = self.tier.client.prove(self.challenge, [address]).get(address)
        if proof != keyed:
            raise TierError(
                f"partner acknowledged {address} but could not prove it holds it "
                f"(answered {proof})",
                tier=self.tier.name,
                key=key,
            )

    def _sealed(self, sealer: Sealer, b3: str) -> tuple[_Spool, str, bytes, str | None, int]:
        sealed = _Spool()
        address = blake3.blake3(max_threads=blake3.blake3.AUTO)
        sha256 = hashlib.sha256()
        keyed = blake3.blake3(key=self.challenge, max_threads=blake3.blake3.AUTO)
        size = 0
        for chunk in sealer.seal(self.spool.chunks(), plaintext_b3=b3):
            sealed.write(chunk)
            address.update(chunk)
            sha256.update(chunk)
            keyed.update(chunk)
            size += len(chunk)
        self.spool.close()
        self.spool = sealed
        proof = keyed.hexdigest() if self.tier.prove_after_put else None
        return sealed, address.hexdigest(), sha256.digest(), proof, size

    def abort(self) -> None:
        self._done = True
        self.spool.close()

    def __enter__(self) -> FederationUpload:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()


class _Spool:
    """The bytes of one copy until they are sent: the chunks as written, up to
    :data:`SPOOL_IN_MEMORY` (immutable ``bytes`` are kept, not copied), then a
    temporary file. A ``SpooledTemporaryFile`` (a growing ``BytesIO``) cost 45 ms of
    CPU to write and read back each 64 MiB, a third of what sending the copy cost."""

    def __init__(self) -> None:
        self._held: list[bytes] = []
        self._size = 0
        self._file: IO[bytes] | None = None

    def write(self, data: bytes | memoryview) -> None:
        if self._file is None and self._size + len(data) > SPOOL_IN_MEMORY:
            self._file = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
            for chunk in self._held:
                self._file.write(chunk)
            self._held = []
        if self._file is not None:
            self._file.write(data)
        else:  # a view may be of a buffer its writer reuses: keep a copy of it
            self._held.append(data if type(data) is bytes else bytes(data))
        self._size += len(data)

    def chunks(self) -> Iterator[bytes]:
        """Everything written so far, from the start (again at each call)."""
        if self._file is None:
            yield from self._held
            return
        self._file.seek(0)
        while chunk := self._file.read(CHUNK_SIZE):
            yield chunk

    def close(self) -> None:
        self._held = []
        if self._file is not None:
            self._file.close()


def _unsealed(sealer: Sealer, chunks: Iterable[bytes], key: str, tier: str) -> Iterator[bytes]:
    """The plaintext; a seal that does not open is damage to the copy (its GCM tag, a
    MAC over every byte, does not match), not a failure of the partner to answer."""
    try:
        yield from sealer.open(chunks)
    except SealBroken as exc:
        raise DigestMismatch(
            key, "AES-256-GCM tag", "a seal that opens", str(exc), tier=tier
        ) from exc


def _window(chunks: Iterable[bytes], offset: int, length: int | None) -> Iterator[bytes]:
    """The bytes ``offset``..``offset+length`` of a stream (sealed copies are read whole)."""
    skip, left = offset, length
    for chunk in chunks:
        if skip >= len(chunk):
            skip -= len(chunk)
            continue
        piece = chunk[skip:]
        skip = 0
        if left is not None:
            piece = piece[:left]
            left -= len(piece)
        if piece:
            yield piece
        if left == 0:
            return


def _reader(chunks: Iterable[bytes]) -> BinaryIO:
    return cast(BinaryIO, _IteratorReader(chunks))


class _IteratorReader(io.RawIOBase):
    """A binary stream over an iterator of chunks."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        while not self._buffer:
            nxt = next(self._chunks, None)
            if nxt is None:
                return 0
            self._buffer = nxt
        n = min(len(view), len(self._buffer))
        view[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            parts = [self._buffer, *self._chunks]
            self._buffer = b""
            return b"".join(parts)
        while not self._buffer:
            nxt = next(self._chunks, None)
            if nxt is None:
                return b""
            self._buffer = nxt
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data
