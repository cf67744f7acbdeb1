"""Replication policies: how many copies of a collection's blobs, and where (DESIGN section 5).

A policy asks for a number of copies per tier role (hot, cold, partner), and may
name tiers that must each hold a copy, and ask that copies of one role sit in
distinct regions. The tiers that satisfy it are chosen from the configuration in
declaration order, so the choice is stable: the same policy on the same
configuration always names the same targets, and workers never disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from archive.errors import ConfigError, InvalidInput


class ReplicationPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    copies: dict[str, int] = Field(default_factory=lambda: {"hot": 1, "cold": 1})
    """Copies wanted per role: ``{"hot": 1, "cold": 1, "partner": 1}``."""
    tiers: list[str] = Field(default_factory=list)
    """Tiers that must each hold a copy, whatever the counts say."""
    distinct_regions: bool = False
    """Copies of one role go to tiers in different regions."""

    def describe(self) -> str:
        parts = [f"{role} {n}" for role, n in self.copies.items() if n]
        parts += [f"tier {t}" for t in self.tiers]
        return ", ".join(parts) + (" (distinct regions)" if self.distinct_regions else "")


def parse_policy(data: dict[str, Any] | None, default: ReplicationPolicy) -> ReplicationPolicy:
    """A collection's stored policy, or the default when it has none.

    Raises:
        InvalidInput: the policy document is malformed.
    """
    if not data:
        return default
    try:
        policy = ReplicationPolicy.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(f"invalid replication policy: {exc}") from exc
    for role, n in policy.copies.items():
        if role not in ("hot", "cold", "partner") or n < 0:
            raise InvalidInput(f"invalid replication policy: {role}={n}")
    return policy


@dataclass(frozen=True)
class TierInfo:
    name: str
    role: str
    region: str | None


def target_tiers(policy: ReplicationPolicy, tiers: Sequence[TierInfo]) -> list[str]:
    """The tiers that must hold a copy of every blob under ``policy``.

    Raises:
        ConfigError: the configuration cannot satisfy the policy (too few tiers of a
            role or region, or a named tier that does not exist).
    """
    by_name = {t.name: t for t in tiers}
    chosen: list[str] = []
    for name in policy.tiers:
        if name not in by_name:
            raise ConfigError(f"the policy names tier {name!r}, which is not configured")
        chosen.append(name)
    for role, wanted in policy.copies.items():
        have = [by_name[n] for n in chosen if by_name[n].role == role]
        regions = {t.region for t in have}
        for tier in tiers:
            if len(have) >= wanted:
                break
            if tier.role != role or tier.name in chosen:
                continue
            if policy.distinct_regions and tier.region in regions:
                continue
            chosen.append(tier.name)
            have.append(tier)
            regions.add(tier.region)
        if len(have) < wanted:
            where = " in distinct regions" if policy.distinct_regions else ""
            raise ConfigError(
                f"the policy wants {wanted} {role} copies{where}, but only {len(have)} "
                f"{role} tier(s) qualify"
            )
    return chosen
