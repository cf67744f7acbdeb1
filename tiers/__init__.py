"""Storage tiers: where the bytes live. Imports nothing of ours.

Backends are registered by kind and imported lazily, so a missing optional
dependency only matters when a tier of that kind is configured (as fsspec does).
"""

from __future__ import annotations

import importlib
from typing import Any

from tiers.base import (
    CHUNK_SIZE,
    ColdTier,
    ObjectInfo,
    RestoreState,
    RetrievalOption,
    Tier,
    TierCapabilities,
    Upload,
    restore_status_of,
)
from tiers.errors import (
    DigestMismatch,
    NeedsRestore,
    ObjectExists,
    ObjectNotFound,
    TierConfigError,
    TierError,
    TierUnavailable,
)

__all__ = [
    "CHUNK_SIZE",
    "ColdTier",
    "DigestMismatch",
    "NeedsRestore",
    "ObjectExists",
    "ObjectInfo",
    "ObjectNotFound",
    "RestoreState",
    "RetrievalOption",
    "Tier",
    "TierCapabilities",
    "TierConfigError",
    "TierError",
    "TierUnavailable",
    "Upload",
    "open_tier",
    "restore_status_of",
]

#: kind -> (module, class, package that provides it)
_BACKENDS: dict[str, tuple[str, str, str]] = {
    "local": ("tiers.local", "LocalTier", "permafrost"),
    "local-cold": ("tiers.local_cold", "LocalColdTier", "permafrost"),
    "s3": ("tiers.s3", "S3Tier", "boto3"),
}


def open_tier(name: str, kind: str, **settings: Any) -> Tier:
    """Build the backend of ``kind`` named ``name`` from its settings.

    Raises:
        TierConfigError: unknown kind, unknown setting, or the backend's
            library is not installed.
    """
    try:
        module_name, class_name, package = _BACKENDS[kind]
    except KeyError:
        known = ", ".join(sorted(_BACKENDS))
        raise TierConfigError(f"tier {name!r}: unknown kind {kind!r} (known: {known})") from None
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise TierConfigError(
            f"tier {name!r} of kind {kind!r} needs {package}: pip install {package}"
        ) from exc
    backend = getattr(module, class_name)
    try:
        tier: Tier = backend(name=name, **settings)
    except TypeError as exc:
        raise TierConfigError(f"tier {name!r}: {exc}") from exc
    return tier
