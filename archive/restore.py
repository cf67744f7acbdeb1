"""Restores: bringing cold copies back to readable, with the cost shown first (DESIGN 6).

A file whose only copies sit in a Glacier-like tier cannot be read at once. The
archive finds, for each such blob, the cold object that holds it (its loose copy,
or the tar pack it travelled in: one restore then serves every file of the pack),
prices the restore for every retrieval speed the tier offers, and on request asks
the tier (S3 ``RestoreObject``) and records a ``RestoreRequest`` that workers
follow until the bytes are readable. Reads then find the restored copy.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from sqlmodel import Session, col, select

from archive.catalog import models
from archive.catalog.models import EventOutcome, EventType, RestoreState, utcnow
from archive.datasets import EntryView, iter_entries
from archive.errors import InvalidInput, NotFound
from archive.node import ArchiveNode
from archive.packs import pack_key
from archive.retrieval import locate
from tiers import ColdTier, TierError
from tiers.base import restore_status_of

GiB = 1024**3


@dataclass(frozen=True)
class ColdObject:
    tier: str
    key: str
    size: int
    blobs: tuple[str, ...]


@dataclass
class RestorePlan:
    files: int = 0
    readable_now: int = 0
    objects: dict[tuple[str, str], ColdObject] = field(default_factory=dict)
    unavailable: list[str] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(o.size for o in self.objects.values())

    def options(self, node: ArchiveNode) -> list[dict[str, Any]]:
        """For each tier and speed: bytes, typical delay and price of restoring the plan."""
        per_tier: dict[str, int] = {}
        for obj in self.objects.values():
            per_tier[obj.tier] = per_tier.get(obj.tier, 0) + obj.size
        out: list[dict[str, Any]] = []
        for tier_name, size in per_tier.items():
            tier = node.tiers[tier_name]
            if not isinstance(tier, ColdTier):
                continue
            for option in tier.retrieval_options():
                out.append(
                    {
                        "tier": tier_name,
                        "speed": option.speed,
                        "bytes": size,
                        "typical_delay_seconds": option.typical_delay.total_seconds(),
                        "price_per_gib": option.price_per_gib,
                        "cost": round(size / GiB * option.price_per_gib, 4),
                    }
                )
        return out

    def as_dict(self, node: ArchiveNode) -> dict[str, Any]:
        return {
            "files": self.files,
            "readable_now": self.readable_now,
            "objects": len(self.objects),
            "bytes": self.bytes,
            "unavailable": self.unavailable,
            "options": self.options(node),
        }


def _readable_now(node: ArchiveNode, tier_name: str, key: str) -> bool:
    tier = node.tiers.get(tier_name)
    if tier is None:
        return False
    try:
        return restore_status_of(tier, key).status in ("ready", "not-needed")
    except TierError:
        return False  # gone or unreachable: not a copy to read now


def plan_restore(
    node: ArchiveNode, version: models.Version, path: str | None, *, session: Session
) -> RestorePlan:
    """What must be restored to read ``path`` (a file or folder; None: all) of a version.

    Raises:
        NotFound: no such file or folder in the version.
    """
    assert version.id is not None
    plan = RestorePlan()
    entries: list[EntryView] = [
        e
        for e in iter_entries(version.id, session=session, prefix=path or "")
        if path is None or e.path == path or e.path.startswith(path.rstrip("/") + "/")
    ]
    if path is not None and not entries:
        raise NotFound(f"no file or folder {path!r} in this version")
    for entry in entries:
        plan.files += 1
        cold: list[tuple[str, str, int]] = []
        readable = False
        for loc in locate(entry.b3, session=session):
            key = pack_key(loc.pack_id) if loc.pack_id else loc.key
            if _readable_now(node, loc.tier, key):
                readable = True
                break
            if isinstance(node.tiers.get(loc.tier), ColdTier):
                size = (
                    _pack_size(loc.pack_id, session=session) if loc.pack_id else entry.stored_size
                )
                cold.append((loc.tier, key, size))
        if readable:
            plan.readable_now += 1
        elif cold:
            tier, key, size = cold[0]
            known = plan.objects.get((tier, key))
            blobs = (*known.blobs, entry.b3) if known else (entry.b3,)
            plan.objects[(tier, key)] = ColdObject(tier, key, size, blobs)
        else:
            plan.unavailable.append(entry.path)
    return plan


def _pack_size(pack_id: str | None, *, session: Session) -> int:
    pack = session.get(models.Pack, pack_id)
    return pack.size if pack else 0


def request_restore(
    node: ArchiveNode,
    plan: RestorePlan,
    *,
    session: Session,
    speed: str = "standard",
    days: int | None = None,
    dataset: str = "",
    path: str = "",
    requested_by: str = "",
) -> list[models.RestoreRequest]:
    """Ask the tiers to restore every object of the plan; record one request per object.

    An object already being restored (or restored) is not asked for again.

    Raises:
        InvalidInput: the speed is not offered by a tier of the plan.
    """
    ids = node.tier_ids(session=session)
    requests: list[models.RestoreRequest] = []
    now = utcnow()
    for (tier_name, key), obj in plan.objects.items():
        tier = node.tiers[tier_name]
        assert isinstance(tier, ColdTier)
        offered = {o.speed: o for o in tier.retrieval_options()}
        if speed not in offered:
            raise InvalidInput(
                f"tier {tier_name} offers restore speeds {', '.join(offered)}, not {speed!r}"
            )
        active = session.exec(
            select(models.RestoreRequest).where(
                models.RestoreRequest.tier_id == ids[tier_name],
                models.RestoreRequest.key == key,
                col(models.RestoreRequest.state).in_(
                    [RestoreState.REQUESTED, RestoreState.IN_PROGRESS, RestoreState.READY]
                ),
            )
        ).first()
        if active is not None:
            requests.append(active)
            continue
        restore_days = days or node.settings.tiers[tier_name].model_dump().get("restore_days", 7)
        state = tier.restore(key, days=restore_days, speed=speed)
        ready_at = state.ready_at or (now + offered[speed].typical_delay)
        request = models.RestoreRequest(
            tier_id=ids[tier_name],
            key=key,
            blob_b3=obj.blobs[0],
            dataset=dataset,
            path=path,
            speed=speed,
            days=restore_days,
            state=RestoreState.READY if state.status == "ready" else RestoreState.IN_PROGRESS,
            ready_at=ready_at,
            expires_at=state.expires_at,
            requested_by=requested_by,
        )
        session.add(request)
        session.add(
            models.Event(
                type=EventType.RESTORE,
                object_type="pack" if key.startswith("packs/") else "blob",
                object_id=key,
                tier=tier_name,
                outcome=EventOutcome.SUCCESS,
                detail={
                    "requested": True,
                    "speed": speed,
                    "days": restore_days,
                    "bytes": obj.size,
                    "files": len(obj.blobs),
                },
                agent=requested_by or "permafrost/restore",
            )
        )
        requests.append(request)
    session.flush()
    return requests


def latest_ready_at(requests: list[models.RestoreRequest]) -> dt.datetime | None:
    times = [r.ready_at for r in requests if r.ready_at is not None]
    return max(times) if times else None
