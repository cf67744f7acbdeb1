"""Audit passes: claim due copies, check them, record what was found (issue 4).

One pass (:func:`audit_pass`) schedules new copies, claims a bounded batch of due
copies per tier, checks each at its level (``fixity.checks``), and commits the
outcome row by row, so a pass killed half-way keeps what it finished and the rest
comes due again when its lease runs out. A failed check is retried once with a
fresh read before anything is called damage, so a network fault is never called
bit rot; a tier that does not answer is *unreachable*, which is not damage: its
copies are released to be retried later with backoff, and no row changes state.

Every copy checked writes a PREMIS ``fixity check`` event (the object's history);
the pass as a whole writes one summary event and returns one :class:`AuditReport`:
that, not the per-copy events, is what people are told about.
"""

from __future__ import annotations

import datetime as dt
import random
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import sqlalchemy as sa
from sqlmodel import Session, col, select

from archive.catalog import models
from archive.catalog.models import ReplicaState, utcnow
from archive.config import AuditPolicy
from archive.node import ArchiveNode
from archive.reachability import mark_reachable, mark_unreachable
from fixity.checks import (
    AGENT,
    CheckResult,
    Finding,
    Level,
    Member,
    Target,
    check,
    check_event,
    event_detail,
)
from fixity.held import audit_held
from fixity.manifest_copies import audit_manifest_copies
from fixity.manifests import audit_manifests
from fixity.proofs import audit_by_proof, bring_reported_damage_forward
from fixity.ratelimit import ByteRate
from fixity.report import AuditReport, record_daily_summary
from fixity.schedule import (
    AuditClaim,
    auditors_of,
    claim_due,
    claim_sample,
    next_after_audit,
    schedule_new,
)
from tiers import ObjectNotFound, ProvingTier, TierError

SUMMARY_OBJECT = "archive"


@dataclass
class AuditOptions:
    """What one pass audits: by default what is due; ``audit run`` may force more."""

    tiers: list[str] | None = None
    level: Level | None = None
    """Force this level on every copy (cold copies that need a restore are skipped)."""
    limit: int | None = None
    due_only: bool = True
    manifests: bool = True
    """Version manifests too: the hot tier's copies and those on the tiers audited."""
    samples: bool = True
    """Cold tiers: read a random sample within the restore budget."""


class Auditor:
    """Audits for one worker: its identity, its rate limits, and where it backs off.

    ``back_off(tier, failures)`` returns the seconds to wait before the tier is tried
    again and ``usable(tier)`` says whether it may be tried now; the worker loops
    hand in their own so the audit shares the backoff of replication.
    """

    def __init__(
        self,
        node: ArchiveNode,
        *,
        owner: str,
        usable: Callable[[str], bool] | None = None,
        back_off: Callable[[str, int], float] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.node = node
        self.owner = owner
        self.rng = rng or random.Random()
        self.usable = usable or (lambda _tier: True)
        self.back_off = back_off or (
            lambda _tier, failures: min(
                node.settings.retry_max_seconds,
                node.settings.retry_base_seconds * 2 ** min(failures, 20),
            )
        )
        self._rates: dict[str, ByteRate] = {}
        self.lease = dt.timedelta(seconds=node.settings.lease_seconds)

    def policy(self, tier: str) -> AuditPolicy:
        return self.node.settings.audit_policy(tier)

    def rate(self, tier: str) -> ByteRate:
        rate = self._rates.get(tier)
        if rate is None:  # setdefault: two audit threads agree on one budget
            rate = self._rates.setdefault(tier, ByteRate(self.policy(tier).bytes_per_second))
        return rate

    def _share_rate(self, tier: str, tier_id: int, *, session: Session, now: dt.datetime) -> None:
        """This worker's part of the tier's budget: the whole, split evenly among the
        workers holding audit leases on it now (counted after each claim)."""
        total = self.policy(tier).bytes_per_second
        if total > 0:
            self.rate(tier).rate = total / auditors_of(session, tier_id, now, self.lease)

    # -- one pass ----------------------------------------------------------------------
    def audit_pass(self, options: AuditOptions | None = None) -> AuditReport:
        opts = options or AuditOptions()
        report = AuditReport(started_at=utcnow())
        now = report.started_at
        wanted = opts.tiers or list(self.node.settings.tiers)
        with self.node.session() as session:
            schedule_new(self.node, session=session, now=now, rng=self.rng)
            ids = self.node.tier_ids(session=session)
        left = opts.limit
        for tier in wanted:
            if left is not None and left <= 0:
                break
            if not self.usable(tier):
                report.tier_skipped(tier, "backing off after the tier was unreachable")
                continue
            limit = self.node.settings.audit_batch if left is None else left
            if isinstance(self.node.tiers[tier], ProvingTier):
                bring_reported_damage_forward(self, tier, ids[tier], now=utcnow())
            with self.node.session() as session:
                claimed_at = utcnow()
                claims = claim_due(
                    session=session,
                    owner=self.owner,
                    tier_ids=[ids[tier]],
                    limit=limit,
                    now=claimed_at,
                    lease=self.lease,
                    due=opts.due_only,
                )
                self._share_rate(tier, ids[tier], session=session, now=claimed_at)
            done = self._audit_claims(tier, claims, opts, report, sampled=False)
            if left is not None:
                left -= done
            if opts.samples and self._samples_due(tier) and self.usable(tier):
                self._audit_samples(tier, ids[tier], opts, report)
        if opts.manifests and self.node.settings.hot_tier in wanted:
            audit_manifests(self, opts, report)
        if opts.manifests:
            audit_manifest_copies(self, opts, report, wanted)
        audit_held(self, opts, report, wanted)
        report.finished_at = utcnow()
        with self.node.session() as session:
            if report.checked or report.unreachable:
                session.add(report.summary_event(agent=AGENT, object_id=SUMMARY_OBJECT))
            record_daily_summary(
                session, report.finished_at.date() - dt.timedelta(days=1), agent=AGENT
            )
        return report

    def _samples_due(self, tier: str) -> bool:
        return (
            self.node.tiers[tier].capabilities.needs_restore
            and self.policy(tier).restore_budget_bytes > 0
        )

    # -- copies ------------------------------------------------------------------------
    def _level(self, tier: str, claim: AuditClaim, forced: Level | None, *, sampled: bool) -> Level:
        cold = self.node.tiers[tier].capabilities.needs_restore
        if sampled:
            return Level.DEEP
        if cold:
            return Level.LIGHT  # reading a cold copy costs a restore: only sampled reads do
        if forced is not None:
            return forced
        policy = self.policy(tier)
        if policy.deep_every and (claim.audit_count + 1) % policy.deep_every == 0:
            return Level.DEEP
        return Level(policy.level)

    def _audit_claims(
        self,
        tier: str,
        claims: Iterable[AuditClaim],
        opts: AuditOptions,
        report: AuditReport,
        *,
        sampled: bool,
    ) -> int:
        pending = list(claims)
        done = 0
        if isinstance(self.node.tiers[tier], ProvingTier) and not sampled and opts.level is None:
            # A partner proves possession of a batch at once (fixity.proofs).
            loose = [c for c in pending if c.blob_b3 is not None]
            pending = [c for c in pending if c.blob_b3 is None]
            done = audit_by_proof(self, tier, loose, report)

        recorder = _Recorder(self, tier, report, sampled=sampled)

        def audit_one(claim: AuditClaim) -> int:
            if not self.usable(tier):  # the tier failed meanwhile: leave the rest for later
                self._release([claim], delay=0.0)
                return 0
            level = self._level(tier, claim, opts.level, sampled=sampled)
            target = self._target(claim)
            if target is None:  # the row vanished (e.g. the copy was dropped meanwhile)
                return 0
            recorder.add(claim, target, self.check_twice(tier, target, level))
            return 1

        threads = min(self.node.settings.audit_threads, len(pending))
        try:
            if threads <= 1:
                return done + sum(audit_one(claim) for claim in pending)
            with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="audit") as pool:
                return done + sum(pool.map(audit_one, pending))
        finally:
            recorder.flush()

    def check_twice(self, tier: str, target: Target, level: Level) -> CheckResult:
        """A failed check is repeated once with a fresh read before it counts."""
        first = check(self.node.tiers[tier], target, level, rate=self.rate(tier))
        if not first.is_damage:
            return first
        second = check(self.node.tiers[tier], target, level, rate=self.rate(tier))
        if second.ok:
            return CheckResult(
                Finding.OK,
                level,
                first.bytes_read + second.bytes_read,
                f"first read failed ({first.detail}); a fresh read was good",
                second.provider_checksum,
            )
        if second.finding == Finding.MISSING and not self._tier_holds_others(tier, target.key):
            return CheckResult(
                Finding.UNREACHABLE,
                level,
                detail=f"{target.key} is missing and so are the tier's other copies probed: "
                "unmounted or emptied? Not recorded as damage; a person should look",
            )
        return second

    def _tier_holds_others(self, tier: str, key: str, probes: int = 3) -> bool:
        """Whether other copies on the tier are still there (a few, most recently proven).

        A folder tier whose disk is not mounted answers "no such object" for every key,
        exactly like a deleted copy: one missing copy among present ones is damage, all
        of them at once is the tier. A tier with no other copy cannot tell: damage.
        """
        R = models.Replica
        with self.node.session() as session:
            tier_id = self.node.tier_ids(session=session)[tier]
            keys = session.execute(
                sa.select(col(R.key))
                .where(
                    col(R.tier_id) == tier_id,
                    col(R.state) == ReplicaState.PRESENT,
                    col(R.key) != key,
                    col(R.last_verified_at).is_not(None),
                )
                .order_by(col(R.last_verified_at).desc())
                .limit(probes)
            ).scalars()
            others = [k for k in keys if k is not None]
        if not others:
            return True
        store = self.node.tiers[tier]
        for other in others:
            try:
                store.stat(other)
                return True
            except ObjectNotFound:
                continue
            except TierError:
                return False
        return False

    def _target(self, claim: AuditClaim) -> Target | None:
        with self.node.session() as session:
            if claim.blob_b3 is not None:
                blob = session.get(models.Blob, claim.blob_b3)
                if blob is None:
                    return None
                return Target(
                    "blob",
                    blob.b3,
                    claim.key,
                    blob.stored_size,
                    blob.stored_b3,
                    blob=blob,
                    provider_checksum=claim.provider_checksum,
                )
            assert claim.pack_id is not None
            return pack_target(claim.pack_id, claim.key, claim.provider_checksum, session=session)

    def _record(
        self,
        tier: str,
        claim: AuditClaim,
        target: Target,
        result: CheckResult,
        report: AuditReport,
        *,
        sampled: bool,
        session: Session,
    ) -> None:
        """Write down one copy's result in ``session``: its row and its event."""
        now = utcnow()
        R = models.Replica
        mine = sa.and_(col(R.id) == claim.replica_id, col(R.lease_owner) == self.owner)
        interval = dt.timedelta(seconds=self.policy(tier).interval_seconds)
        if result.finding in (Finding.UNREACHABLE, Finding.NEEDS_RESTORE):
            delay = self.back_off(tier, claim.failures + 1)
            report.unreachable_copy(tier, result.detail, sampled=sampled)
            if result.finding == Finding.UNREACHABLE:
                mark_unreachable(tier, now, session=session)
            values: dict[str, object] = {
                "lease_owner": None,
                "lease_expires_at": None,
                "failures": col(R.failures) + 1,
                "updated_at": now,
            }
            if not sampled:  # the copy is still due: retry after the backoff
                values["next_audit_at"] = now + dt.timedelta(seconds=delay)
            session.execute(sa.update(R).where(mine).values(**values))
            return
        if result.ok:
            values = {
                "state": ReplicaState.PRESENT,
                "last_verified_at": now,
                "last_audit_level": result.level,
                "audit_count": col(R.audit_count) + 1,
                "failures": 0,
                "lease_owner": None,
                "lease_expires_at": None,
                "updated_at": now,
            }
            if not sampled:
                values["next_audit_at"] = next_after_audit(now, interval, self.rng)
            if result.level != Level.LIGHT:
                values["last_read_at"] = now
                values["provider_checksum"] = result.provider_checksum
            elif claim.provider_checksum is None and result.provider_checksum:
                values["provider_checksum"] = result.provider_checksum
        else:
            state = (
                ReplicaState.MISSING if result.finding == Finding.MISSING else ReplicaState.DAMAGED
            )
            values = {
                "state": state,
                "last_audit_level": result.level,
                "lease_owner": None,
                "lease_expires_at": None,
                "next_audit_at": None,
                "updated_at": now,
            }
            if result.level != Level.LIGHT:  # the bytes were read (and found bad)
                values["last_read_at"] = now
        changed = session.execute(sa.update(R).where(mine).values(**values))
        if changed.rowcount == 0:  # type: ignore[attr-defined]
            return  # our lease ran out and another worker took the copy over
        mark_reachable(tier, session=session)
        detail = event_detail(target, result, sampled=sampled)
        session.add(check_event(target.kind, target.object_id, tier, result, detail, now))
        report.copy_checked(tier, target, result)

    def _release(self, claims: Iterable[AuditClaim], *, delay: float) -> None:
        now = utcnow()
        R = models.Replica
        with self.node.session() as session:
            session.execute(
                sa.update(R)
                .where(
                    col(R.id).in_([c.replica_id for c in claims]), col(R.lease_owner) == self.owner
                )
                .values(
                    lease_owner=None,
                    lease_expires_at=None,
                    next_audit_at=now + dt.timedelta(seconds=delay),
                    updated_at=now,
                )
            )

    # -- cold samples --------------------------------------------------------------------
    def _audit_samples(
        self, tier: str, tier_id: int, opts: AuditOptions, report: AuditReport
    ) -> None:
        policy = self.policy(tier)
        now = utcnow()
        with self.node.session() as session:
            claims = claim_sample(
                session=session,
                owner=self.owner,
                tier_id=tier_id,
                budget_bytes=policy.restore_budget_bytes,
                period=dt.timedelta(seconds=policy.interval_seconds),
                now=now,
                lease=self.lease,
                limit=self.node.settings.audit_batch,
            )
        readable: list[AuditClaim] = []
        cold = self.node.tiers[tier]
        restore = getattr(cold, "restore", None)
        status_of = getattr(cold, "restore_status", None)
        for claim in claims:
            try:
                status = status_of(claim.key) if status_of else None
                if status is not None and status.status == "not-started" and restore is not None:
                    restore(claim.key, days=1, speed="bulk" if _has_bulk(cold) else "standard")
                    status = status_of(claim.key) if status_of else None
                if status is None or status.readable:
                    readable.append(claim)
                else:
                    report.sample_waiting(tier)
                    self._release_sample(claim)
            except TierError as exc:  # the sample waits for the next pass
                report.unreachable_copy(tier, str(exc), sampled=True)
                self._release_sample(claim)
        self._audit_claims(tier, readable, opts, report, sampled=True)

    def _release_sample(self, claim: AuditClaim) -> None:
        R = models.Replica
        with self.node.session() as session:
            session.execute(
                sa.update(R)
                .where(col(R.id) == claim.replica_id, col(R.lease_owner) == self.owner)
                .values(lease_owner=None, lease_expires_at=None)
            )


def _has_bulk(tier: object) -> bool:
    options = getattr(tier, "retrieval_options", None)
    return bool(options and any(o.speed == "bulk" for o in options()))


def pack_target(
    pack_id: str, key: str, provider_checksum: str | None, *, session: Session
) -> Target | None:
    pack = session.get(models.Pack, pack_id)
    if pack is None:
        return None
    rows = session.exec(
        select(models.PackMember, models.Blob)
        .join(models.Blob, col(models.Blob.b3) == col(models.PackMember.blob_b3))
        .where(models.PackMember.pack_id == pack_id)
    ).all()
    members = tuple(Member(blob, m.offset, m.length) for m, blob in rows)
    return Target(
        "pack",
        pack.id,
        key,
        pack.size,
        pack.id,
        members=members,
        provider_checksum=provider_checksum,
    )


class _Recorder:
    """Results of one tier's copies, written in groups of up to :attr:`size` copies or
    :attr:`seconds` of audits, one transaction each: a commit (a WAL sync on SQLite)
    costs as much as the statements of a record. A crash loses at most one group,
    whose leases then run out, so those copies are audited again."""

    size = 64
    seconds = 1.0

    def __init__(self, auditor: Auditor, tier: str, report: AuditReport, *, sampled: bool) -> None:
        self.auditor = auditor
        self.tier = tier
        self.report = report
        self.sampled = sampled
        self._lock = threading.Lock()
        self._pending: list[tuple[AuditClaim, Target, CheckResult]] = []
        self._since = time.monotonic()

    def add(self, claim: AuditClaim, target: Target, result: CheckResult) -> None:
        with self._lock:
            if not self._pending:
                self._since = time.monotonic()
            self._pending.append((claim, target, result))
            if (
                len(self._pending) >= self.size
                or time.monotonic() - self._since >= self.seconds
                or result.finding in (Finding.UNREACHABLE, Finding.NEEDS_RESTORE)
            ):  # an unreachable tier is known (backoff) before the next copy is tried
                self._write()

    def flush(self) -> None:
        with self._lock:
            self._write()

    def _write(self) -> None:
        pending, self._pending = self._pending, []
        if not pending:
            return
        with self.auditor.node.session() as session:
            for claim, target, result in pending:
                self.auditor._record(
                    self.tier,
                    claim,
                    target,
                    result,
                    self.report,
                    sampled=self.sampled,
                    session=session,
                )
