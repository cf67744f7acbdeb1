"""Can the archive prove every copy was verified within its interval? Per tier, now.

``audit_status`` answers what ``permafrost audit status`` prints and ``/metrics``
exports: for each tier, how many copies it holds, how many were verified within
the tier's interval, how many are overdue (and so unproven), how many failed, the
oldest verification, the audit queue, and for cold tiers the share of copies whose
bytes were ever read by a sampled audit (coverage).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col

from archive.catalog import models
from archive.catalog.models import EventType, ReplicaState, utcnow
from archive.node import ArchiveNode

BAD = (ReplicaState.DAMAGED, ReplicaState.MISSING, ReplicaState.REPAIRING)


def audit_status(node: ArchiveNode, *, session: Session) -> dict[str, Any]:
    now = utcnow()
    R = models.Replica
    tiers: dict[str, Any] = {}
    for name, tier_id in sorted(node.tier_ids(session=session).items()):
        if name not in node.settings.tiers:
            continue
        policy = node.settings.audit_policy(name)
        since = now - dt.timedelta(seconds=policy.interval_seconds)
        on_tier = col(R.tier_id) == tier_id
        present = col(R.state) == ReplicaState.PRESENT
        row = session.execute(
            sa.select(
                sa.func.count().filter(col(R.state).in_([ReplicaState.PRESENT, *BAD])),
                sa.func.count().filter(present, col(R.last_verified_at) >= since),
                sa.func.count().filter(
                    present,
                    sa.or_(col(R.last_verified_at).is_(None), col(R.last_verified_at) < since),
                ),
                sa.func.count().filter(col(R.state).in_(BAD)),
                sa.func.min(col(R.last_verified_at)).filter(present),
                sa.func.count().filter(present, col(R.next_audit_at) <= now),
                sa.func.count().filter(
                    col(R.state).in_([ReplicaState.PRESENT, *BAD]), col(R.last_read_at).is_not(None)
                ),
            ).where(on_tier)
        ).one()
        copies, verified, overdue, damaged, oldest, due, read = row
        entry: dict[str, Any] = {
            "copies": copies,
            "verified_within_interval": verified,
            "overdue": overdue,
            "damaged": damaged,
            "oldest_verification": oldest.isoformat() if oldest else None,
            "due_now": due,
            "interval_days": policy.interval_days,
            "level": policy.level,
        }
        if node.tiers[name].capabilities.needs_restore:
            entry["sample_coverage"] = round(read / copies, 4) if copies else 1.0
            entry["restore_budget_bytes"] = policy.restore_budget_bytes
        tiers[name] = entry
    V = models.Version
    manifests = session.execute(
        sa.select(
            sa.func.count(),
            sa.func.count().filter(col(V.manifest_state) != ReplicaState.PRESENT),
            sa.func.count().filter(col(V.manifest_next_audit_at) <= now),
        )
    ).one()
    M = models.ManifestCopy
    copies = session.execute(
        sa.select(
            sa.func.count(),
            sa.func.count().filter(col(M.state) != ReplicaState.PRESENT),
            sa.func.count().filter(col(M.next_audit_at) <= now),
        )
    ).one()
    held = _held_status(node, session=session, now=now)
    return {
        "tiers": tiers,
        "manifests": {
            "count": manifests[0],
            "damaged": manifests[1],
            "due_now": manifests[2],
            "copies_elsewhere": copies[0],
            "copies_elsewhere_damaged": copies[1],
            "copies_elsewhere_due_now": copies[2],
        },
        "held_for_partners": held,
        "proven": all(t["overdue"] == 0 and t["damaged"] == 0 for t in tiers.values())
        and manifests[1] == 0
        and copies[1] == 0
        and held["damaged"] == 0,
    }


def _held_status(node: ArchiveNode, *, session: Session, now: dt.datetime) -> dict[str, Any]:
    """What we hold for partners, as our own audits of it found it (``fixity.held``)."""
    H = models.HeldObject
    tier = node.settings.federation_tier or node.settings.hot_tier
    since = now - dt.timedelta(seconds=node.settings.audit_policy(tier).interval_seconds)
    objects, verified, damaged, due = session.execute(
        sa.select(
            sa.func.count(),
            sa.func.count().filter(
                col(H.state) == ReplicaState.PRESENT, col(H.last_verified_at) >= since
            ),
            sa.func.count().filter(col(H.state) != ReplicaState.PRESENT),
            sa.func.count().filter(col(H.next_audit_at) <= now),
        )
    ).one()
    return {
        "tier": tier,
        "objects": objects,
        "verified_within_interval": verified,
        "damaged": damaged,
        "due_now": due,
    }


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_metrics(node: ArchiveNode, *, session: Session) -> str:
    """Prometheus text exposition (version 0.0.4) of the audit figures, from the catalog,
    so every worker process's audits count, not only this process's."""
    status = audit_status(node, session=session)
    lines: list[str] = []

    def metric(name: str, kind: str, doc: str, samples: list[tuple[dict[str, str], float]]) -> None:
        lines.append(f"# HELP {name} {doc}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            text = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
            lines.append(f"{name}{{{text}}} {value:g}" if text else f"{name} {value:g}")

    E = models.Event
    counts = session.execute(
        sa.select(col(E.tier), col(E.outcome), sa.func.count())
        .where(col(E.type) == EventType.FIXITY_CHECK, col(E.tier).is_not(None))
        .group_by(col(E.tier), col(E.outcome))
    ).all()
    metric(
        "permafrost_audits_total",
        "counter",
        "Fixity checks of copies, by tier and outcome.",
        [({"tier": t or "", "outcome": o}, n) for t, o, n in counts],
    )
    verified: dict[str, float] = {}
    for (detail,) in session.execute(
        sa.select(col(E.detail)).where(
            col(E.type) == EventType.FIXITY_CHECK, col(E.object_type) == "archive"
        )
    ):
        for tier, tally in (detail or {}).get("tiers", {}).items():
            verified[tier] = verified.get(tier, 0) + tally.get("bytes_read", 0)
    metric(
        "permafrost_audit_bytes_verified_total",
        "counter",
        "Stored bytes read and proven by audits.",
        [({"tier": t}, v) for t, v in sorted(verified.items())],
    )
    tiers = status["tiers"]
    metric(
        "permafrost_audit_failures",
        "gauge",
        "Copies now damaged, missing or being repaired.",
        [({"tier": t}, v["damaged"]) for t, v in tiers.items()],
    )
    metric(
        "permafrost_audit_coverage_ratio",
        "gauge",
        "Share of copies verified within their tier's interval.",
        [
            ({"tier": t}, v["verified_within_interval"] / v["copies"] if v["copies"] else 1.0)
            for t, v in tiers.items()
        ],
    )
    metric(
        "permafrost_audit_overdue",
        "gauge",
        "Copies not verified within their tier's interval.",
        [({"tier": t}, v["overdue"]) for t, v in tiers.items()],
    )
    metric(
        "permafrost_audit_queue_depth",
        "gauge",
        "Copies whose audit is due now.",
        [({"tier": t}, v["due_now"]) for t, v in tiers.items()],
    )
    metric(
        "permafrost_audit_sample_coverage_ratio",
        "gauge",
        "Cold tiers: share of copies whose bytes a sampled audit has read.",
        [({"tier": t}, v["sample_coverage"]) for t, v in tiers.items() if "sample_coverage" in v],
    )
    manifests = status["manifests"]
    metric(
        "permafrost_manifest_copies",
        "gauge",
        "Copies of version manifests: the hot tier's, and those on other tiers.",
        [
            ({"copy": "hot"}, manifests["count"]),
            ({"copy": "elsewhere"}, manifests["copies_elsewhere"]),
        ],
    )
    metric(
        "permafrost_manifest_failures",
        "gauge",
        "Manifest copies now damaged, missing or being repaired.",
        [
            ({"copy": "hot"}, manifests["damaged"]),
            ({"copy": "elsewhere"}, manifests["copies_elsewhere_damaged"]),
        ],
    )
    metric(
        "permafrost_manifest_queue_depth",
        "gauge",
        "Manifest copies whose audit is due now.",
        [
            ({"copy": "hot"}, manifests["due_now"]),
            ({"copy": "elsewhere"}, manifests["copies_elsewhere_due_now"]),
        ],
    )
    held = status["held_for_partners"]
    metric(
        "permafrost_held_objects",
        "gauge",
        "Blobs and manifests this node holds for partners, by what its own audits found.",
        [
            ({"state": "verified_within_interval"}, held["verified_within_interval"]),
            ({"state": "damaged"}, held["damaged"]),
            ({"state": "all"}, held["objects"]),
        ],
    )
    metric(
        "permafrost_held_queue_depth",
        "gauge",
        "Objects held for partners whose audit is due now.",
        [({}, held["due_now"])],
    )
    return "\n".join(lines) + "\n"
