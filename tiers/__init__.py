"""Storage tiers: where the bytes live. Imports nothing of ours.

Backends are registered by kind and imported lazily, so a missing optional
dependency only matters when a tier of that kind is configured (as fsspec does).
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any

from tiers.base import (
    CHUNK_SIZE,
    ColdTier,
    HashingTier,
    ObjectInfo,
    ProvingTier,
    RestoreState,
    RetrievalOption,
    Tier,
    TierCapabilities,
    Upload,
    exists_by_stat,
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
from tiers.reading import read_ahead

__all__ = [
    "CHUNK_SIZE",
    "ColdTier",
    "DigestMismatch",
    "HashingTier",
    "NeedsRestore",
    "ObjectExists",
    "ObjectInfo",
    "ObjectNotFound",
    "ProvingTier",
    "RestoreState",
    "RetrievalOption",
    "Tier",
    "TierCapabilities",
    "TierConfigError",
    "TierError",
    "TierUnavailable",
    "Upload",
    "exists_by_stat",
    "open_tier",
    "read_ahead",
    "restore_status_of",
]

#: kind -> (module, class, package that provides it)
_BACKENDS: dict[str, tuple[str, str, str]] = {
    "local": ("tiers.local", "LocalTier", "permafrost"),
    "local-cold": ("tiers.local_cold", "LocalColdTier", "permafrost"),
    "s3": ("tiers.s3", "S3Tier", "boto3"),
}


#: Entry point group through which other packages add tier kinds (``federation``), so
#: this package never imports them: ``kind = "module:Class"``.
PLUGIN_GROUP = "permafrost.tiers"


def _plugin_kinds() -> dict[str, Any]:
    return {point.name: point for point in entry_points(group=PLUGIN_GROUP)}


def open_tier(name: str, kind: str, **settings: Any) -> Tier:
    """Build the backend of ``kind`` named ``name`` from its settings.

    Kinds are the built-in ones of ``_BACKENDS`` and those registered in the
    ``permafrost.tiers`` entry point group.

    Raises:
        TierConfigError: unknown kind, unknown setting, or the backend's
            library is not installed.
    """
    if kind in _BACKENDS:
        module_name, class_name, package = _BACKENDS[kind]
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise TierConfigError(
                f"tier {name!r} of kind {kind!r} needs {package}: pip install {package}"
            ) from exc
        backend = getattr(module, class_name)
    else:
        plugins = _plugin_kinds()
        if kind not in plugins:
            known = ", ".join(sorted({*_BACKENDS, *plugins}))
            raise TierConfigError(f"tier {name!r}: unknown kind {kind!r} (known: {known})")
        try:
            backend = plugins[kind].load()
        except ImportError as exc:
            raise TierConfigError(f"tier {name!r} of kind {kind!r} cannot load: {exc}") from exc
    try:
        tier: Tier = backend(name=name, **settings)
    except TypeError as exc:
        raise TierConfigError(f"tier {name!r}: {exc}") from exc
    return tier
