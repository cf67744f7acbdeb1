"""Sealing copies for a partner: AES-256-GCM under per-object keys that stay at home.

A partner tier with ``encrypt = true`` sends only sealed bytes::

    b"PFS1" | salt (32) | AES-256-GCM ciphertext of the stored bytes | tag (16)

The object's key and nonce come from HKDF-SHA256 (RFC 5869) of the *collection key*
(32 random bytes in a file under the node's data folder, mode 0600, named by the
tier's ``collection_key_file``; it never leaves this node) with the salt. The salt
is the keyed BLAKE3 of the plaintext's own BLAKE3 under a key derived from the
collection key: the same stored bytes always seal to the same ciphertext (so a
re-sent or repaired copy lands on the same address, and we can compute what a proof
of possession must answer from our own plaintext copy), while the partner learns
nothing it could match against known content. Every object has its own key, so the
fixed derivation never reuses a (key, nonce) pair with different plaintexts.

Lose the collection key and every sealed copy is noise: back it up apart from the
partner, with the catalog.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from archive.errors import ConfigError
from archive.identity import write_secret_file

MAGIC = b"PFS1"
SALT_SIZE = 32
TAG_SIZE = 16
HEADER_SIZE = len(MAGIC) + SALT_SIZE
OVERHEAD = HEADER_SIZE + TAG_SIZE
KEY_SIZE = 32


class SealBroken(ValueError):
    """Sealed bytes that are not ours, or were changed: wrong header or GCM tag."""


def make_collection_key(path: Path) -> bool:
    """Write 32 random bytes to ``path`` (mode 0600) unless it exists; whether it did."""
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    write_secret_file(path, os.urandom(KEY_SIZE))
    return True


def load_collection_key(path: Path) -> bytes:
    """Raises: ConfigError: missing, or not 32 bytes."""
    try:
        key = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the collection key {path}: {exc}") from exc
    if len(key) != KEY_SIZE:
        raise ConfigError(f"{path} holds {len(key)} bytes; a collection key is {KEY_SIZE}")
    return key


class Sealer:
    """Seals and opens objects under one collection key."""

    def __init__(self, collection_key: bytes) -> None:
        self._key = collection_key
        self._salt_key = blake3.blake3(
            collection_key, derive_key_context="permafrost 2026 partner copy salt v1"
        ).digest()

    def salt_for(self, plaintext_b3: str) -> bytes:
        return blake3.blake3(bytes.fromhex(plaintext_b3), key=self._salt_key).digest()

    def _cipher(self, salt: bytes) -> Cipher[modes.GCM]:
        material = HKDF(
            algorithm=hashes.SHA256(), length=KEY_SIZE + 12, salt=salt, info=b"permafrost seal v1"
        ).derive(self._key)
        return Cipher(algorithms.AES(material[:KEY_SIZE]), modes.GCM(material[KEY_SIZE:]))

    def seal(self, chunks: Iterable[bytes], *, plaintext_b3: str) -> Iterator[bytes]:
        """The sealed form of ``chunks`` (whose BLAKE3 is ``plaintext_b3``), streamed."""
        salt = self.salt_for(plaintext_b3)
        encryptor = self._cipher(salt).encryptor()
        yield MAGIC + salt
        for chunk in chunks:
            yield encryptor.update(chunk)
        yield encryptor.finalize() + encryptor.tag

    def open(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """The plaintext of sealed ``chunks``, streamed; the tag is checked at the end.

        Raises:
            SealBroken: not a sealed object, or its tag fails (after the last chunk:
                a caller that must not use unauthenticated bytes hashes them first).
        """
        source = iter(chunks)
        held = b""
        for chunk in source:
            held += chunk
            if len(held) >= HEADER_SIZE:
                break
        if len(held) < HEADER_SIZE or not held.startswith(MAGIC):
            raise SealBroken("not a sealed object")
        decryptor = self._cipher(held[len(MAGIC) : HEADER_SIZE]).decryptor()
        held = held[HEADER_SIZE:]
        for chunk in source:
            held += chunk
            if len(held) > TAG_SIZE:
                yield decryptor.update(held[:-TAG_SIZE])
                held = held[-TAG_SIZE:]
        if len(held) < TAG_SIZE:
            raise SealBroken("sealed object too short")
        if len(held) > TAG_SIZE:
            yield decryptor.update(held[:-TAG_SIZE])
            held = held[-TAG_SIZE:]
        try:
            yield decryptor.finalize_with_tag(held)
        except InvalidTag as exc:
            raise SealBroken("the GCM tag does not match: the sealed bytes were changed") from exc


def sealed_size(plain_size: int) -> int:
    return plain_size + OVERHEAD


def plain_size(sealed: int) -> int:
    return sealed - OVERHEAD
