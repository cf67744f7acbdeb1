"""Audits of partner copies by proof of possession (issue 5, DESIGN section 7).

A partner node (a :class:`tiers.ProvingTier`) is not asked for its bytes: for a batch
of copies we send a fresh random 32-byte key and it answers, for each, the keyed
BLAKE3 of the bytes it holds, which it cannot compute without reading all of them
(a stored digest does not help: the key is new). We compute what it must answer
from a good copy of our own (its BLAKE3 checked against ``stored_b3`` in the same
read, and sealed the same way when the partner tier encrypts), so nothing crosses
the network but the answers. When we have no readable copy of our own, the
partner's copy is read back and hashed instead, as for any other tier.

No answer for a copy: missing. A wrong answer: damaged. Either is asked once more
with another fresh key before it counts, like every failed audit. A partner that
does not answer at all is unreachable: nothing about its copies changes.

A partner also audits what it holds on its own schedule (``fixity.held``) and lists
what it found bad. Each pass asks for that list first and makes those copies due
(:func:`bring_reported_damage_forward`): they are proven in the same pass and repaired
after, instead of at their next scheduled audit, months later. The list is only a
hint: a copy is marked bad by our own proof, never by the partner's word.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import blake3
import sqlalchemy as sa
from sqlmodel import col

from archive.catalog import models
from archive.catalog.models import ReplicaState
from archive.retrieval import locate, read_stored
from fixity.checks import CheckResult, Finding, Level, Target, check
from fixity.schedule import AuditClaim
from tiers import ProvingTier, TierError

if TYPE_CHECKING:
    from fixity.audit import Auditor
    from fixity.report import AuditReport

BATCH = 256
PROOF = "proof of possession"

log = logging.getLogger(__name__)


def bring_reported_damage_forward(
    auditor: Auditor, tier_name: str, tier_id: int, *, now: dt.datetime
) -> int:
    """Make the copies the partner reports damaged or missing due now; how many.

    Only present copies not claimed by an audit are touched: one found bad already
    waits for repair, and a claimed one is being audited. A manifest copy's
    ``next_audit_at`` doubles as its lease, so only a schedule later than a lease can
    last is brought forward.
    """
    tier = auditor.node.tiers[tier_name]
    assert isinstance(tier, ProvingTier)
    try:
        keys = tier.reported_damage()
    except TierError:
        return 0  # the proofs of this pass find the partner unreachable, or not
    if not keys:
        return 0
    R, M = models.Replica, models.ManifestCopy
    moved = 0
    with auditor.node.session() as session:
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            replicas = session.execute(
                sa.update(R)
                .where(
                    col(R.tier_id) == tier_id,
                    col(R.key).in_(chunk),
                    col(R.state) == ReplicaState.PRESENT,
                    col(R.lease_owner).is_(None),
                    col(R.next_audit_at) > now,
                )
                .values(next_audit_at=now, updated_at=now)
            )
            manifests = session.execute(
                sa.update(M)
                .where(
                    col(M.tier_id) == tier_id,
                    col(M.key).in_(chunk),
                    col(M.state) == ReplicaState.PRESENT,
                    col(M.next_audit_at) > now + auditor.lease,
                )
                .values(next_audit_at=now, updated_at=now)
            )
            moved += replicas.rowcount + manifests.rowcount  # type: ignore[attr-defined]
    if moved:
        log.warning(
            "partner tier %s reports %d copies damaged or missing: %d proven in this pass",
            tier_name,
            len(keys),
            moved,
        )
    return moved


def audit_by_proof(
    auditor: Auditor, tier_name: str, claims: Sequence[AuditClaim], report: AuditReport
) -> int:
    """Audit ``claims`` on a proving tier; returns how many were audited."""
    tier = auditor.node.tiers[tier_name]
    assert isinstance(tier, ProvingTier)
    done = 0
    for start in range(0, len(claims), BATCH):
        batch = [(c, auditor._target(c)) for c in claims[start : start + BATCH]]
        targets = [(c, t) for c, t in batch if t is not None]
        results = _prove(auditor, tier, [t for _, t in targets])
        failed = [t for _, t in targets if results[t.key].is_damage]
        if failed:  # a fresh key and a fresh read before anything is called damage
            results.update(_prove(auditor, tier, failed))
        with auditor.node.session() as session:  # one transaction for the batch's results
            for claim, target in targets:
                result = results[target.key]
                auditor._record(
                    tier_name, claim, target, result, report, sampled=False, session=session
                )
                done += 1
    return done


def _prove(
    auditor: Auditor, tier: ProvingTier, targets: Sequence[Target]
) -> dict[str, CheckResult]:
    """Each target's result, by key."""
    challenge = os.urandom(32)
    try:
        answers = tier.prove([t.key for t in targets], challenge)
    except TierError as exc:
        down = CheckResult(Finding.UNREACHABLE, Level.STORED, detail=str(exc))
        return {t.key: down for t in targets}
    results: dict[str, CheckResult] = {}
    for target in targets:
        answer = answers.get(target.key)
        if answer is None:
            results[target.key] = CheckResult(
                Finding.MISSING,
                Level.STORED,
                detail=f"{PROOF}: the partner does not hold {target.key}",
            )
            continue
        expected = _expected(auditor, tier, target, challenge)
        if expected is None:  # no good copy at home: read the partner's back
            results[target.key] = check(tier, target, Level.STORED, rate=auditor.rate(tier.name))
        elif answer == expected:
            results[target.key] = CheckResult(
                Finding.OK, Level.STORED, target.stored_size or 0, detail=PROOF
            )
        else:
            results[target.key] = CheckResult(
                Finding.DAMAGED,
                Level.STORED,
                detail=f"{PROOF}: answered {answer[:16]}..., expected {expected[:16]}...",
            )
    return results


def _expected(auditor: Auditor, tier: ProvingTier, target: Target, challenge: bytes) -> str | None:
    """What the partner must answer, from a good copy at home (None: none readable)."""
    assert target.blob is not None
    with auditor.node.session() as session:
        sources = [loc for loc in locate(target.blob.b3, session=session) if loc.tier != tier.name]
    for loc in sources:
        source = auditor.node.tiers.get(loc.tier)
        if source is None or isinstance(source, ProvingTier) or source.capabilities.needs_restore:
            continue
        plain = blake3.blake3(max_threads=blake3.blake3.AUTO)

        def hashed(chunks: Iterable[bytes], plain: blake3.blake3 = plain) -> Iterable[bytes]:
            for chunk in chunks:
                plain.update(chunk)
                yield chunk

        try:
            expected = tier.expected_proof(
                hashed(read_stored(source, loc)),
                stored_b3=target.stored_b3,
                challenge=challenge,
            )
        except TierError:
            continue
        if plain.hexdigest() == target.stored_b3:
            return expected
    return None
