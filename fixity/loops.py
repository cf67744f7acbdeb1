"""The audit and repair loops of a worker, registered by name (``permafrost.worker_loops``).

``archive.worker.Worker`` runs them after its own loops without importing this
package: the entry points in ``pyproject.toml`` name :func:`audit_step` and
:func:`repair_step`. Each takes the worker (its owner id, lease, backoff per tier)
and returns how many copies it handled, like every other loop.
"""

from __future__ import annotations

import logging

from archive.worker import Worker
from fixity.audit import Auditor
from fixity.repair import Repairer

log = logging.getLogger("permafrost.fixity")


def auditor_for(worker: Worker) -> Auditor:
    auditor: Auditor | None = getattr(worker, "_fixity_auditor", None)
    if auditor is None:
        auditor = Auditor(
            worker.node, owner=worker.owner, usable=worker.tier_usable, back_off=worker.back_off
        )
        worker._fixity_auditor = auditor  # type: ignore[attr-defined]
    return auditor


def audit_step(worker: Worker) -> int:
    """One pass over the copies whose audit is due."""
    report = auditor_for(worker).audit_pass()
    if not report.clean:
        log.warning("audit found %d damaged or missing copies", report.damage_found)
    return report.checked


def repair_step(worker: Worker) -> int:
    """One pass over damaged and missing copies."""
    repairer = Repairer(
        worker.node, owner=worker.owner, usable=worker.tier_usable, back_off=worker.back_off
    )
    return sum(o.result == "repaired" for o in repairer.repair_pass())
