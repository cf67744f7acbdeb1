"""Where the objects we hold for partners live in our own storage (issue 5).

What a partner sends us is kept on the federation tier (``Settings.federation_tier``,
default the hot tier) under ``partners/<name>/``, in the layout of DESIGN section 3,
and recorded as :class:`archive.catalog.models.HeldObject` rows. The federation API
(``federation.api``) writes and serves these objects; our own audits
(``fixity.held``) read them on the holding tier's schedule.
"""

from __future__ import annotations

from archive.node import ArchiveNode
from tiers import Tier

BLOB, MANIFEST = "blob", "manifest"


def holding_tier_name(node: ArchiveNode) -> str:
    return node.settings.federation_tier or node.settings.hot_tier


def holding_tier(node: ArchiveNode) -> Tier:
    return node.tiers[holding_tier_name(node)]


def held_key(partner: str, kind: str, name: str) -> str:
    """Where an object held for ``partner`` lives in our tier (names are checked first)."""
    if kind == BLOB:
        return f"partners/{partner}/blobs/b3/{name[:2]}/{name[2:4]}/{name}"
    return f"partners/{partner}/manifests/{name}"
