"""This node's identity: an Ed25519 key pair (issue 5, DESIGN section 7).

Partners know a node by its public key, which verifies the RFC 9421 signatures on
every federation request it sends. The private key lives in one PKCS#8 PEM file
under the data folder, readable by the owner only (mode 0600), made once by
``permafrost init`` and never sent anywhere. The public key is written as the 32 raw
bytes in unpadded base64url (RFC 8037's ``x`` of an OKP JWK), short enough to paste.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from archive.errors import ConfigError, InvalidInput

KEY_FILE_MODE = 0o600


def ensure_node_key(path: Path) -> tuple[Ed25519PrivateKey, bool]:
    """The key in ``path``, made (mode 0600, atomically) when there is none yet.

    Returns the key and whether it was just made.
    """
    if path.exists():
        return load_node_key(path), False
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_secret_file(path, pem)
    return key, True


def write_secret_file(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file only the owner can read; never replaces a file."""
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.link(staging, path)  # fails if another process made the file meanwhile
    finally:
        staging.unlink(missing_ok=True)


def load_node_key(path: Path) -> Ed25519PrivateKey:
    """Read this node's private key.

    Raises:
        ConfigError: no such file (run ``permafrost init``), or not an Ed25519 key.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"no node key at {path}: run `permafrost init`") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except ValueError as exc:
        raise ConfigError(f"{path} is not a PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
    return key


def public_key_text(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The raw public key in unpadded base64url (43 characters)."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def parse_public_key(text: str) -> Ed25519PublicKey:
    """The inverse of :func:`public_key_text`.

    Raises:
        InvalidInput: not 32 bytes of unpadded base64url.
    """
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError as exc:
        raise InvalidInput(f"public key {text!r} is not base64url: {exc}") from exc
    if len(raw) != 32 or public_key_text(Ed25519PublicKey.from_public_bytes(raw)) != text:
        raise InvalidInput(f"public key {text!r} is not a raw Ed25519 key in base64url")
    return Ed25519PublicKey.from_public_bytes(raw)
