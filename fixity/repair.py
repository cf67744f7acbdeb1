"""Repair: make a damaged or missing copy whole again from a copy proven good now.

A repair never trusts the catalog's word that a source is good: the source is
audited afresh (deep where it can be read), the bytes are streamed to the damaged
copy's tier and promoted only if their BLAKE3 is the blob's ``stored_b3`` (the
tier checks it while writing), and the result is audited again. Each step writes
a PREMIS event (``fixity check`` of the source, ``replication`` of the bytes,
``fixity check`` of the result, then ``repair``). A source that fails its fresh
audit is itself marked damaged, so bad data is never copied.

A pack is rebuilt byte for byte: packs are deterministic, so good copies of its
members (from other tiers, or the members of the damaged pack that still prove
good) laid out in the same order make the same bytes, proven by the pack's id.
When some member has no good copy anywhere, the members that do are salvaged as
loose copies on the tier, and the rest are *lost*.

When no good copy of a blob exists, the copy stays damaged or missing, a ``repair``
event with outcome failure and ``lost: true`` records it, and ``permafrost status``
names the blob and every version holding it. A copy whose only sources are
unreachable or need a restore is retried later: that is not loss.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from archive.catalog import models
from archive.catalog.bulk import insert_ignore
from archive.catalog.models import EventOutcome, EventType, ReplicaState, utcnow
from archive.datasets import dataset_document
from archive.manifest import ManifestEntry, render
from archive.node import ArchiveNode
from archive.packs import TAR_END, blob_key, pack_key, tar_member
from archive.retrieval import Location, locate, read_stored
from fixity.audit import AGENT as AUDIT_AGENT
from fixity.audit import pack_target
from fixity.checks import CheckResult, Finding, Level, Member, Target, check, member_problem
from tiers import ColdTier, ObjectExists, ObjectNotFound, Tier, TierError

AGENT = "permafrost/repair"
LOST_RETRY = dt.timedelta(days=1)
"""How soon a copy with no good source is tried again (a copy may come back)."""


@dataclass
class RepairOutcome:
    tier: str
    object_type: str
    object_id: str
    result: str
    """``repaired``, ``lost``, ``waiting`` (sources unreachable or being restored)."""
    detail: str = ""
    lost_blobs: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "tier": self.tier,
            "object_type": self.object_type,
            "object_id": self.object_id,
            "result": self.result,
            "detail": self.detail,
            **({"lost_blobs": self.lost_blobs} if self.lost_blobs else {}),
        }


@dataclass(frozen=True)
class RepairClaim:
    replica_id: int
    tier_id: int
    blob_b3: str | None
    pack_id: str | None
    key: str
    state: str
    failures: int


def retry_delay(node: ArchiveNode, failures: int) -> float:
    """The configured exponential backoff (without the worker's jitter)."""
    s = node.settings
    return float(min(s.retry_max_seconds, s.retry_base_seconds * 2 ** min(failures, 20)))


class _NoGoodSource(Exception):
    def __init__(self, waiting: bool, why: str) -> None:
        super().__init__(why)
        self.waiting = waiting


class Repairer:
    def __init__(
        self,
        node: ArchiveNode,
        *,
        owner: str,
        usable: Callable[[str], bool] | None = None,
        back_off: Callable[[str, int], float] | None = None,
    ) -> None:
        self.node = node
        self.owner = owner
        self._usable = usable or (lambda _tier: True)
        self._back_off = back_off or (lambda _tier, failures: retry_delay(node, failures))
        self.lease = dt.timedelta(seconds=node.settings.lease_seconds)

    # -- claiming ----------------------------------------------------------------------
    def _claim(self, limit: int) -> list[RepairClaim]:
        R = models.Replica
        now = utcnow()
        with self.node.session() as session:
            names = {tid: n for n, tid in self.node.tier_ids(session=session).items()}
            usable = [tid for tid, n in names.items() if n in self.node.tiers and self._usable(n)]
            if not usable:
                return []
            free = sa.or_(col(R.lease_expires_at).is_(None), col(R.lease_expires_at) <= now)
            stmt = (
                sa.select(
                    col(R.id),
                    col(R.tier_id),
                    col(R.blob_b3),
                    col(R.pack_id),
                    col(R.key),
                    col(R.state),
                    col(R.failures),
                )
                .where(
                    col(R.state).in_(
                        [ReplicaState.DAMAGED, ReplicaState.MISSING, ReplicaState.REPAIRING]
                    ),
                    col(R.tier_id).in_(usable),
                    free,
                )
                .order_by(col(R.id))
                .limit(limit)
            )
            if session.get_bind().dialect.name == "postgresql":
                stmt = stmt.with_for_update(skip_locked=True, of=R)
            claims = [RepairClaim(*row) for row in session.execute(stmt).all()]
            if claims:
                session.execute(
                    sa.update(R)
                    .where(col(R.id).in_([c.replica_id for c in claims]))
                    .values(
                        state=ReplicaState.REPAIRING,
                        lease_owner=self.owner,
                        lease_expires_at=now + self.lease,
                        updated_at=now,
                    )
                )
        return claims

    def repair_pass(self, limit: int | None = None) -> list[RepairOutcome]:
        outcomes: list[RepairOutcome] = []
        claims = self._claim(limit or self.node.settings.audit_batch)
        with self.node.session() as session:
            names = {tid: n for n, tid in self.node.tier_ids(session=session).items()}
        for claim in claims:
            tier = names[claim.tier_id]
            # A copy left "repairing" by a dead worker returns to what the audit found.
            state = claim.state if claim.state != ReplicaState.REPAIRING else ReplicaState.DAMAGED
            if claim.blob_b3 is not None:
                outcome = self._repair_loose(tier, claim, state)
            else:
                outcome = self._repair_pack(tier, claim, state)
            outcomes.append(outcome)
        outcomes += self._repair_manifests(limit or self.node.settings.audit_batch)
        return outcomes

    # -- loose blobs -------------------------------------------------------------------
    def _repair_loose(self, tier_name: str, claim: RepairClaim, state: str) -> RepairOutcome:
        assert claim.blob_b3 is not None
        target_tier = self.node.tiers[tier_name]
        with self.node.session() as session:
            blob = session.get(models.Blob, claim.blob_b3)
            assert blob is not None
            sources = [loc for loc in locate(blob.b3, session=session) if loc.tier != tier_name]
        target = Target("blob", blob.b3, claim.key, blob.stored_size, blob.stored_b3, blob=blob)
        try:
            source = self._good_source(blob, sources)
        except _NoGoodSource as exc:
            return self._unrepaired(tier_name, claim, state, "blob", blob.b3, exc)
        try:
            with contextlib.suppress(ObjectNotFound):
                target_tier.delete(claim.key)
            src_tier = self.node.tiers[source.tier]
            with target_tier.begin_put() as upload:
                for chunk in read_stored(src_tier, source):
                    upload.write(chunk)
                upload.promote(claim.key, expect_b3=blob.stored_b3)
        except (TierError, OSError) as exc:
            return self._unrepaired(
                tier_name, claim, state, "blob", blob.b3, _NoGoodSource(True, f"copy failed: {exc}")
            )
        self._event(
            EventType.REPLICATION,
            "blob",
            blob.b3,
            tier_name,
            True,
            {"from": source.tier, "key": claim.key, "purpose": "repair"},
        )
        result = self._verify_result(target_tier, target)
        return self._finish(tier_name, claim, state, target, result, source.tier)

    def _good_source(self, blob: models.Blob, sources: list[Location]) -> Location:
        """The first source that passes a fresh audit now.

        Raises:
            _NoGoodSource: none did; ``waiting`` when some could not be read now
                (unreachable, or cold and being restored), so the blob is not lost.
        """
        waiting: list[str] = []
        for loc in sources:
            tier = self.node.tiers.get(loc.tier)
            if tier is None or not self._usable(loc.tier):
                waiting.append(f"{loc.tier}: not usable now")
                continue
            if loc.pack_id is None:
                target = Target(
                    "blob", blob.b3, loc.key, blob.stored_size, blob.stored_b3, blob=blob
                )
                result = check(tier, target, Level.DEEP)
                if result.is_damage:
                    result = check(tier, target, Level.DEEP)  # a fresh read before blaming it
                self._event(
                    EventType.FIXITY_CHECK,
                    "blob",
                    blob.b3,
                    loc.tier,
                    result.ok,
                    {
                        "key": loc.key,
                        "level": "deep",
                        "purpose": "repair source",
                        **({"error": result.detail} if result.detail else {}),
                    },
                )
                if result.ok:
                    return loc
                if result.finding == Finding.NEEDS_RESTORE and self._ask_restore(tier, loc.key):
                    result = check(tier, target, Level.DEEP)  # restored at once (local cold)
                    self._event(
                        EventType.FIXITY_CHECK,
                        "blob",
                        blob.b3,
                        loc.tier,
                        result.ok,
                        {
                            "key": loc.key,
                            "level": "deep",
                            "purpose": "repair source",
                            **({"error": result.detail} if result.detail else {}),
                        },
                    )
                    if result.ok:
                        return loc
                if result.is_damage:
                    self._mark_source(loc, result)
                else:
                    waiting.append(f"{loc.tier}: {result.finding}")
            else:
                try:
                    stored = b"".join(read_stored(tier, loc))
                except TierError as exc:
                    if not self._ask_restore(tier, pack_key(loc.pack_id)):
                        waiting.append(f"{loc.tier}: {exc}")
                        continue
                    try:
                        stored = b"".join(read_stored(tier, loc))
                    except TierError as again:
                        waiting.append(f"{loc.tier}: {again}")
                        continue
                member = Member(blob, loc.offset, loc.length or 0)
                problem = member_problem(stored, member, deep=True)
                self._event(
                    EventType.FIXITY_CHECK,
                    "blob",
                    blob.b3,
                    loc.tier,
                    problem is None,
                    {
                        "key": loc.key,
                        "pack": loc.pack_id,
                        "level": "deep",
                        "purpose": "repair source",
                        **({"error": problem} if problem else {}),
                    },
                )
                if problem is None:
                    return loc
                self._mark_source(loc, CheckResult(Finding.DAMAGED, Level.DEEP, detail=problem))
        if waiting:
            raise _NoGoodSource(True, "; ".join(waiting))
        raise _NoGoodSource(False, "no other copy passes an audit")

    def _ask_restore(self, tier: Tier, key: str) -> bool:
        """Ask a cold tier to restore ``key``; whether it is readable right away."""
        if not isinstance(tier, ColdTier):
            return False
        try:
            return tier.restore(key, days=tier.restore_days).readable
        except TierError:
            return False

    def _mark_source(self, loc: Location, result: CheckResult) -> None:
        """A would-be source failed its fresh audit: it is damaged too (and repaired in
        its turn), never copied from."""
        R = models.Replica
        with self.node.session() as session:
            tier_id = self.node.tier_ids(session=session)[loc.tier]
            which = col(R.pack_id) == loc.pack_id if loc.pack_id else col(R.key) == loc.key
            session.execute(
                sa.update(R)
                .where(which, col(R.tier_id) == tier_id, col(R.state) == ReplicaState.PRESENT)
                .values(
                    state=ReplicaState.MISSING
                    if result.finding == Finding.MISSING
                    else ReplicaState.DAMAGED,
                    next_audit_at=None,
                    updated_at=utcnow(),
                )
            )

    def _verify_result(self, tier: Tier, target: Target) -> CheckResult:
        level = Level.LIGHT if tier.capabilities.needs_restore else Level.DEEP
        result = check(tier, target, level)
        self._event(
            EventType.FIXITY_CHECK,
            target.kind,
            target.object_id,
            tier.name,
            result.ok,
            {
                "key": target.key,
                "level": level,
                "purpose": "repair result",
                **({"error": result.detail} if result.detail else {}),
            },
        )
        return result

    def _finish(
        self,
        tier: str,
        claim: RepairClaim,
        state: str,
        target: Target,
        result: CheckResult,
        source: str,
    ) -> RepairOutcome:
        now = utcnow()
        R = models.Replica
        mine = sa.and_(col(R.id) == claim.replica_id, col(R.lease_owner) == self.owner)
        if not result.ok:
            return self._unrepaired(
                tier,
                claim,
                state,
                target.kind,
                target.object_id,
                _NoGoodSource(True, f"the repaired copy failed its audit: {result.detail}"),
            )
        with self.node.session() as session:
            session.execute(
                sa.update(R)
                .where(mine)
                .values(
                    state=ReplicaState.PRESENT,
                    last_verified_at=now,
                    last_read_at=now if result.level != Level.LIGHT else None,
                    last_audit_level=result.level,
                    provider_checksum=result.provider_checksum,
                    next_audit_at=None,  # scheduled afresh by the next audit pass
                    failures=0,
                    lease_owner=None,
                    lease_expires_at=None,
                    updated_at=now,
                )
            )
            session.add(
                self._event_row(
                    EventType.REPAIR,
                    target.kind,
                    target.object_id,
                    tier,
                    True,
                    {"key": target.key, "from": source, "was": state, "verified": result.level},
                )
            )
        return RepairOutcome(tier, target.kind, target.object_id, "repaired", f"from {source}")

    def _unrepaired(
        self,
        tier: str,
        claim: RepairClaim,
        state: str,
        object_type: str,
        object_id: str,
        why: _NoGoodSource,
        lost_blobs: list[str] | None = None,
    ) -> RepairOutcome:
        now = utcnow()
        R = models.Replica
        retry = (
            dt.timedelta(seconds=self._back_off(tier, claim.failures + 1))
            if why.waiting
            else LOST_RETRY
        )
        lost = lost_blobs if lost_blobs is not None else ([] if why.waiting else [object_id])
        with self.node.session() as session:
            session.execute(
                sa.update(R)
                .where(col(R.id) == claim.replica_id, col(R.lease_owner) == self.owner)
                .values(
                    state=state,
                    failures=col(R.failures) + 1,
                    lease_owner=None,
                    lease_expires_at=now + retry,
                    updated_at=now,
                )
            )
            detail: dict[str, Any] = {"key": claim.key, "reason": str(why), "state": state}
            if lost:
                detail |= {"lost": True, "lost_blobs": lost}
            session.add(
                self._event_row(
                    EventType.REPAIR,
                    object_type,
                    object_id,
                    tier,
                    False,
                    detail,
                    outcome=EventOutcome.WARNING if why.waiting and not lost else None,
                )
            )
            for b3 in lost:
                if b3 == object_id and object_type == "blob":
                    continue
                session.add(
                    self._event_row(
                        EventType.REPAIR,
                        "blob",
                        b3,
                        tier,
                        False,
                        {"lost": True, "reason": str(why), "pack": object_id},
                    )
                )
        result = "waiting" if why.waiting and not lost else "lost"
        return RepairOutcome(tier, object_type, object_id, result, str(why), lost)

    # -- packs -------------------------------------------------------------------------
    def _repair_pack(self, tier_name: str, claim: RepairClaim, state: str) -> RepairOutcome:
        assert claim.pack_id is not None
        tier = self.node.tiers[tier_name]
        with self.node.session() as session:
            target = pack_target(claim.pack_id, claim.key, None, session=session)
            assert target is not None
            others = {
                m.blob.b3: [
                    loc
                    for loc in locate(m.blob.b3, session=session)
                    if not (loc.tier == tier_name and loc.pack_id == claim.pack_id)
                ]
                for m in target.members
            }
        members = sorted(target.members, key=lambda m: m.offset)
        good: dict[str, bytes] = {}
        waiting: list[str] = []
        for m in members:
            own = self._member_from(tier, claim.key, m)
            if own is not None:
                good[m.blob.b3] = own
                continue
            try:
                loc = self._good_source(m.blob, others[m.blob.b3])
            except _NoGoodSource as exc:
                if exc.waiting:
                    waiting.append(f"{m.blob.b3}: {exc}")
                continue
            good[m.blob.b3] = b"".join(read_stored(self.node.tiers[loc.tier], loc))
        if waiting:
            return self._unrepaired(
                tier_name,
                claim,
                state,
                "pack",
                claim.pack_id,
                _NoGoodSource(True, "; ".join(waiting[:5])),
            )
        lost = [m.blob.b3 for m in members if m.blob.b3 not in good]
        if lost:
            salvaged = self._salvage(tier_name, members, good)
            why = _NoGoodSource(
                False,
                f"{len(lost)} member(s) have no good copy; {salvaged} salvaged as loose copies",
            )
            return self._unrepaired(tier_name, claim, state, "pack", claim.pack_id, why, lost)
        try:
            with tier.begin_put() as upload:
                for m in members:
                    upload.write(tar_member(m.blob.b3, good[m.blob.b3]))
                upload.write(TAR_END)
                if upload.b3 != claim.pack_id:
                    raise TierError(f"rebuilt pack hashes to {upload.b3}", tier=tier_name)
                with contextlib.suppress(ObjectNotFound):
                    tier.delete(claim.key)
                upload.promote(claim.key, expect_b3=claim.pack_id)
        except (TierError, OSError) as exc:
            return self._unrepaired(
                tier_name,
                claim,
                state,
                "pack",
                claim.pack_id,
                _NoGoodSource(True, f"rebuild failed: {exc}"),
            )
        self._event(
            EventType.REPLICATION,
            "pack",
            claim.pack_id,
            tier_name,
            True,
            {"key": claim.key, "purpose": "repair", "rebuilt_from_members": len(members)},
        )
        result = self._verify_result(tier, target)
        return self._finish(tier_name, claim, state, target, result, "member copies")

    def _member_from(self, tier: Tier, key: str, member: Member) -> bytes | None:
        """A member's stored bytes from the damaged pack itself, if they still prove good."""
        try:
            with tier.open(key, offset=member.offset, length=member.length) as stream:
                stored = stream.read()
        except TierError:
            return None
        return stored if member_problem(stored, member, deep=True) is None else None

    def _salvage(self, tier_name: str, members: list[Member], good: dict[str, bytes]) -> int:
        """Write the good members of an unrebuildable pack as loose copies on its tier."""
        tier = self.node.tiers[tier_name]
        rows: list[dict[str, Any]] = []
        now = utcnow()
        for m in members:
            if m.blob.b3 not in good:
                continue
            key = blob_key(m.blob.b3)
            try:
                tier.put(key, io.BytesIO(good[m.blob.b3]), expect_b3=m.blob.stored_b3)
            except ObjectExists:
                pass
            except TierError:
                continue
            rows.append(
                {
                    "blob_b3": m.blob.b3,
                    "pack_id": None,
                    "key": key,
                    "state": ReplicaState.PRESENT,
                    "last_verified_at": now,
                    "last_read_at": now,
                    "failures": 0,
                    "audit_count": 0,
                    "created_at": now,
                    "updated_at": now,
                }
            )
        with self.node.session() as session:
            tier_id = self.node.tier_ids(session=session)[tier_name]
            insert_ignore(session, models.Replica, [{**r, "tier_id": tier_id} for r in rows])
        return len(rows)

    # -- manifests ---------------------------------------------------------------------
    def _repair_manifests(self, limit: int) -> list[RepairOutcome]:
        V = models.Version
        now = utcnow()
        tier_name = self.node.settings.hot_tier
        if not self._usable(tier_name):
            return []
        with self.node.session() as session:
            stmt = (
                sa.select(col(V.id), col(V.manifest_state))
                .where(
                    sa.or_(
                        col(V.manifest_state).in_([ReplicaState.DAMAGED, ReplicaState.MISSING]),
                        sa.and_(
                            col(V.manifest_state) == ReplicaState.REPAIRING,
                            col(V.manifest_next_audit_at) <= now,
                        ),
                    )
                )
                .limit(limit)
            )
            if session.get_bind().dialect.name == "postgresql":
                stmt = stmt.with_for_update(skip_locked=True)
            rows = session.execute(stmt).all()
            until = now + self.lease
            if rows:
                session.execute(
                    sa.update(V)
                    .where(col(V.id).in_([r[0] for r in rows]))
                    .values(manifest_state=ReplicaState.REPAIRING, manifest_next_audit_at=until)
                )
        return [self._repair_manifest(tier_name, vid, st, until) for vid, st in rows]

    def _repair_manifest(
        self, tier_name: str, version_id: int, state: str, until: dt.datetime
    ) -> RepairOutcome:
        """Re-render the manifest from the catalog; it is written back only if its
        BLAKE3 is the one recorded at ingest (manifests are canonical JSON)."""
        tier = self.node.tiers[tier_name]
        if state == ReplicaState.REPAIRING:
            state = ReplicaState.DAMAGED
        V = models.Version
        with self.node.session() as session:
            version = session.get(V, version_id)
            assert version is not None
            object_id, pieces = _manifest_pieces(version, session=session)
        upload = tier.begin_put()
        ok = False
        detail = ""
        try:
            with upload:
                for piece in pieces:
                    upload.write(piece)
                if upload.b3 != version.manifest_b3:
                    detail = (
                        f"re-rendered manifest hashes to {upload.b3}, not {version.manifest_b3} "
                        "(the dataset's metadata changed since)"
                    )
                else:
                    with contextlib.suppress(ObjectNotFound):
                        tier.delete(version.manifest_key)
                    upload.promote(version.manifest_key, expect_b3=version.manifest_b3)
                    ok = True
        except TierError as exc:
            detail = f"rewrite failed: {exc}"
        target = Target("manifest", object_id, version.manifest_key, None, version.manifest_b3)
        result = self._verify_result(tier, target) if ok else None
        now = utcnow()
        repaired = result is not None and result.ok
        with self.node.session() as session:
            mine = sa.and_(col(V.id) == version_id, col(V.manifest_next_audit_at) == until)
            values: dict[str, Any] = (
                {
                    "manifest_state": ReplicaState.PRESENT,
                    "manifest_verified_at": now,
                    "manifest_next_audit_at": None,
                }
                if repaired
                else {"manifest_state": state, "manifest_next_audit_at": None}
            )
            session.execute(sa.update(V).where(mine).values(**values))
            session.add(
                self._event_row(
                    EventType.REPAIR,
                    "manifest",
                    object_id,
                    tier_name,
                    repaired,
                    {
                        "key": version.manifest_key,
                        "source": "re-rendered from the catalog",
                        **({"reason": detail} if detail else {}),
                    },
                )
            )
        return RepairOutcome(
            tier_name, "manifest", object_id, "repaired" if repaired else "lost", detail
        )

    # -- events ------------------------------------------------------------------------
    def _event_row(
        self,
        event_type: EventType,
        object_type: str,
        object_id: str,
        tier: str,
        ok: bool,
        detail: dict[str, Any],
        *,
        outcome: EventOutcome | None = None,
    ) -> models.Event:
        return models.Event(
            type=event_type,
            object_type=object_type,
            object_id=object_id,
            tier=tier,
            outcome=outcome or (EventOutcome.SUCCESS if ok else EventOutcome.FAILURE),
            detail=detail,
            agent=AGENT if event_type != EventType.FIXITY_CHECK else AUDIT_AGENT,
            created_at=utcnow(),
        )

    def _event(
        self,
        event_type: EventType,
        object_type: str,
        object_id: str,
        tier: str,
        ok: bool,
        detail: dict[str, Any],
    ) -> None:
        with self.node.session() as session:
            session.add(self._event_row(event_type, object_type, object_id, tier, ok, detail))


def _manifest_pieces(version: models.Version, *, session: Session) -> tuple[str, list[bytes]]:
    dataset = session.get(models.Dataset, version.dataset_id)
    assert dataset is not None
    collection = session.get(models.Collection, dataset.collection_id)
    assert collection is not None
    rows = session.exec(
        select(models.Entry.path, models.Blob.b3, models.Blob.sha256, models.Blob.size)
        .join(models.Blob, col(models.Blob.b3) == col(models.Entry.blob_b3))
        .where(models.Entry.version_id == version.id)
    ).all()
    entries = sorted((ManifestEntry(p, b, s, n) for p, b, s, n in rows), key=lambda e: e.path)
    pieces = list(
        render(
            dataset=dataset_document(collection.name, dataset),
            number=version.number,
            created=version.created_at,
            message=version.message,
            previous_b3=version.previous_b3,
            entries=entries,
        )
    )
    return f"{dataset.pid}@v{version.number}", pieces
