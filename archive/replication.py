"""Replication: planning the copies each policy asks for, and making them (DESIGN section 5).

The catalog is the queue. :func:`plan` turns policies into ``pending`` replica rows
(one set-based INSERT per collection and target tier, idempotent); workers claim
rows (archive.worker) and call :func:`copy_loose` or :func:`copy_packed`. A copy is
streamed tier to tier (never whole in memory) from the cheapest readable copy; the
target tier hashes what it writes and refuses to promote bytes whose BLAKE3 is not
the blob's ``stored_b3``, so a damaged source can never become a copy; and where the
target can be read at once, the copy is read back and hashed again before the row
becomes ``present``. Cold tiers cannot be read back without a restore: there the
write-time digest (and the provider's own checksum) stand until the first audit.
Small blobs bound for cold tiers travel in tar packs, so one restore brings back
many and a million small files do not become a million cold objects.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import blake3
import sqlalchemy as sa
from sqlmodel import Session, col, select

from archive.blobstore import record_pack
from archive.catalog import models
from archive.catalog.bulk import dialect_insert
from archive.catalog.models import EventType, ReplicaState, utcnow
from archive.encoding import BlobDigest
from archive.errors import Unavailable
from archive.node import ArchiveNode
from archive.packs import PackWriter, SealedPack, blob_key, pack_index_key, pack_key
from archive.policy import TierInfo, parse_policy, target_tiers
from archive.retrieval import Location, locate, read_stored
from tiers import CHUNK_SIZE, DigestMismatch, ObjectExists, ObjectInfo, ProvingTier, Tier, TierError

AGENT = "permafrost/replicate"


def configured_tiers(node: ArchiveNode) -> list[TierInfo]:
    return [TierInfo(name, cfg.role, cfg.region) for name, cfg in node.settings.tiers.items()]


def targets_of(node: ArchiveNode, collection: models.Collection) -> list[str]:
    policy = parse_policy(collection.policy, node.settings.policy)
    return target_tiers(policy, configured_tiers(node))


def _blob_key_sql(b3: Any) -> Any:
    return (
        sa.literal("blobs/b3/")
        + sa.func.substr(b3, 1, 2)
        + sa.literal("/")
        + sa.func.substr(b3, 3, 2)
        + sa.literal("/")
        + b3
    )


def plan(
    node: ArchiveNode,
    *,
    session: Session,
    collection: str | None = None,
    version_id: int | None = None,
    since: dt.datetime | None = None,
) -> int:
    """Add a ``pending`` replica for every blob lacking a copy on a target tier.

    Returns how many rows were added. Idempotent: a blob that has a replica row on
    the tier in any state, or sits in a pack with a replica there, is left alone.
    By default every entry of the archive (or of ``collection``) is considered; an
    ingest passes its new ``version_id``, and the worker passes ``since`` (versions
    created from then on), so planning costs what is new, not the whole archive.
    """
    tier_ids = node.tier_ids(session=session)
    stmt = select(models.Collection)
    if collection is not None:
        stmt = stmt.where(models.Collection.name == collection)
    added = 0
    now = utcnow()
    for coll in session.exec(stmt).all():
        for tier_name in targets_of(node, coll):
            tier_id = tier_ids[tier_name]
            entry, version, dataset = models.Entry, models.Version, models.Dataset
            loose = sa.exists().where(
                col(models.Replica.blob_b3) == col(entry.blob_b3),
                col(models.Replica.tier_id) == tier_id,
            )
            packed = (
                sa.exists()
                .where(col(models.PackMember.blob_b3) == col(entry.blob_b3))
                .where(col(models.Replica.pack_id) == col(models.PackMember.pack_id))
                .where(col(models.Replica.tier_id) == tier_id)
            )
            source = (
                sa.select(
                    col(entry.blob_b3),
                    sa.literal(tier_id),
                    sa.literal(str(ReplicaState.PENDING)),
                    _blob_key_sql(col(entry.blob_b3)),
                    sa.literal(0),
                    sa.literal(now, type_=models.UTCDateTime()),
                    sa.literal(now, type_=models.UTCDateTime()),
                )
                .join(version, col(version.id) == col(entry.version_id))
                .join(dataset, col(dataset.id) == col(version.dataset_id))
                .where(col(dataset.collection_id) == coll.id, ~loose, ~packed)
                # No DISTINCT: a blob named twice conflicts with its own first row and is
                # skipped. In address order, the unique index grows page by page. For
                # 20,000 entries SQLite took 0.55 - 0.70 s with DISTINCT, 0.31 - 0.37 s so.
                .order_by(col(entry.blob_b3))
            )
            if version_id is not None:
                source = source.where(col(version.id) == version_id)
            if since is not None:
                source = source.where(col(version.created_at) >= since)
            insert = dialect_insert(session, models.Replica)
            result = session.execute(
                insert.from_select(
                    ["blob_b3", "tier_id", "state", "key", "failures", "created_at", "updated_at"],
                    source,
                )
                .on_conflict_do_nothing()
                # Counted by RETURNING: psycopg reports rowcount -1 for INSERT ... SELECT
                # ... ON CONFLICT, so the count was 0 on PostgreSQL (found by the test).
                .returning(col(models.Replica.id))
            )
            added += len(result.all())
    return added


@dataclass(frozen=True)
class Claimed:
    replica_id: int
    blob: models.Blob
    tier: str


def _digest(blob: models.Blob) -> BlobDigest:
    return BlobDigest(blob.b3, blob.sha256, blob.size, blob.stored_size, blob.stored_b3, blob.codec)


def sources_of(b3: str, target: str, *, session: Session) -> list[Location]:
    """Present copies to copy from, cheapest first, never the target itself."""
    return [loc for loc in locate(b3, session=session) if loc.tier != target]


def _stream_from_any(
    node: ArchiveNode, sources: Sequence[Location], target: Tier, blob: models.Blob
) -> ObjectInfo:
    """Copy stored bytes to ``target`` from the first source that yields them whole.

    Raises:
        ObjectExists: the target already holds the key (proven by the caller).
        TierError: the target failed (the caller backs off that tier).
        Unavailable: no source could be read whole.
    """
    errors: list[str] = []
    for loc in sources:
        tier = node.tiers.get(loc.tier)
        if tier is None:
            continue
        try:
            with target.begin_put() as upload:
                for chunk in read_stored(tier, loc):
                    upload.write(chunk)
                return upload.promote(blob_key(blob.b3), expect_b3=blob.stored_b3)
        except ObjectExists:
            raise
        except DigestMismatch as exc:  # the source copy is damaged: try the next one
            errors.append(f"{loc.tier}: {exc}")
        except TierError as exc:
            if exc.tier == target.name:
                raise
            errors.append(f"{loc.tier}: {exc}")
    raise Unavailable(f"no readable source for blob {blob.b3}: " + ("; ".join(errors) or "none"))


def _read_back(tier: Tier, key: str, *, offset: int = 0, length: int | None = None) -> str:
    hasher = blake3.blake3()
    with tier.open(key, offset=offset, length=length) as stream:
        while chunk := stream.read(CHUNK_SIZE):
            hasher.update(chunk)
    return hasher.hexdigest()


@dataclass(frozen=True)
class Copied:
    verified: str | None
    """How the copy was proven: ``read back``, ``proof of possession`` (a partner node
    proved it holds the bytes sent), or None (cold: the write-time digest stands)."""
    key: str
    """Where the copy is: the blob's key, or the one a partner tier named it by."""


def copy_loose(node: ArchiveNode, item: Claimed, sources: Sequence[Location]) -> Copied:
    """Make one blob's copy on ``item.tier`` exist and prove it (idempotent).

    Returns how the copy was proven, and its key (a :class:`~tiers.ProvingTier` names
    what it holds by its own digest; the caller records that key).

    Raises:
        TierError: the target (or every source) failed; the caller retries later.
        Unavailable: no source copy is readable now.
    """
    target = node.tiers[item.tier]
    blob = item.blob
    key = blob_key(blob.b3)
    # ObjectExists: an earlier attempt (or a crashed worker) promoted it; proven below.
    with contextlib.suppress(ObjectExists):
        key = _stream_from_any(node, sources, target, blob).key
    if isinstance(target, ProvingTier):  # the partner checked the address, maybe proved it
        return Copied(target.put_check, key)
    if not target.capabilities.needs_restore:
        found = _read_back(target, key)
        if found != blob.stored_b3:
            target.delete(key)
            raise TierError(
                f"read-back of {key} on {item.tier}: blake3 {found}, expected {blob.stored_b3}",
                tier=item.tier,
                key=key,
            )
        return Copied("read back", key)
    if target.stat(key).size != blob.stored_size:
        raise TierError(f"{key} on {item.tier} has the wrong size", tier=item.tier, key=key)
    return Copied(None, key)


def copy_packed(
    node: ArchiveNode,
    tier_name: str,
    blobs: Sequence[models.Blob],
    sources: dict[str, list[Location]],
) -> SealedPack | None:
    """Copy many small blobs to ``tier_name`` as one tar pack; returns the sealed pack.

    Blobs with no readable source are left out (and stay pending).
    """
    target = node.tiers[tier_name]
    writer = PackWriter(target)
    for blob in blobs:
        for loc in sources.get(blob.b3, []):
            tier = node.tiers.get(loc.tier)
            if tier is None:
                continue
            try:
                data = b"".join(read_stored(tier, loc))
            except TierError:
                continue
            if blake3.blake3(data).hexdigest() == blob.stored_b3:
                writer.add(_digest(blob), data)
                break
    pack = writer.seal()
    if pack is None:
        return None
    if not target.capabilities.needs_restore and _read_back(target, pack_key(pack.id)) != pack.id:
        target.delete(pack_key(pack.id))
        raise TierError(f"read-back of pack {pack.id} failed", tier=tier_name)
    return pack


def record_pack_copy(
    pack: SealedPack, replica_ids: dict[str, int], tier_id: int, tier: str, *, session: Session
) -> None:
    """The pack is on the tier: its rows replace the member blobs' pending rows."""
    record_pack(
        pack,
        tier=tier,
        tier_id=tier_id,
        session=session,
        event_type=EventType.REPLICATION,
        agent=AGENT,
    )
    packed = [replica_ids[m.digest.b3] for m in pack.members if m.digest.b3 in replica_ids]
    if packed:
        session.execute(sa.delete(models.Replica).where(col(models.Replica.id).in_(packed)))


@dataclass(frozen=True)
class ExtraCopy:
    """A copy no policy asks for: one loose blob, or a whole pack (``pack_id``)."""

    tier: str
    key: str
    replica_id: int
    blob_b3: str | None
    pack_id: str | None = None
    members: int = 0


def extra_copies(node: ArchiveNode, *, session: Session) -> list[ExtraCopy]:
    """Copies on tiers that no policy asks for any more.

    A blob's copy on a tier is extra when no collection holding the blob targets
    that tier. A pack's copy is extra only when that holds for every blob in it: a
    pack still holding one wanted blob is kept whole. The hot tier that ingest
    writes to always keeps its copies, and a blob no dataset names is kept.
    """
    ids = node.tier_ids(session=session)
    names = {tid: name for name, tid in ids.items()}
    wanted: dict[str, set[str]] = {}
    for coll in session.exec(select(models.Collection)).all():
        targets = set(targets_of(node, coll))
        rows = session.execute(
            sa.select(col(models.Entry.blob_b3))
            .join(models.Version, col(models.Version.id) == col(models.Entry.version_id))
            .join(models.Dataset, col(models.Dataset.id) == col(models.Version.dataset_id))
            .where(col(models.Dataset.collection_id) == coll.id)
            .distinct()
        )
        for (b3,) in rows:
            wanted.setdefault(b3, set()).update(targets)
    extra: list[ExtraCopy] = []
    replicas = session.exec(
        select(models.Replica).where(col(models.Replica.blob_b3).is_not(None))
    ).all()
    for replica in replicas:
        tier = names.get(replica.tier_id, "")
        if tier == node.settings.hot_tier or replica.blob_b3 is None or replica.id is None:
            continue
        if tier not in wanted.get(replica.blob_b3, {tier}):
            extra.append(ExtraCopy(tier, replica.key, replica.id, replica.blob_b3))
    packs = session.exec(
        select(models.Replica).where(col(models.Replica.pack_id).is_not(None))
    ).all()
    candidates = [r for r in packs if names.get(r.tier_id, "") not in ("", node.settings.hot_tier)]
    members: dict[str, list[str]] = {}
    pack_ids = sorted({r.pack_id for r in candidates if r.pack_id is not None})
    for i in range(0, len(pack_ids), 900):
        for pack_id, b3 in session.execute(
            sa.select(col(models.PackMember.pack_id), col(models.PackMember.blob_b3)).where(
                col(models.PackMember.pack_id).in_(pack_ids[i : i + 900])
            )
        ):
            members.setdefault(pack_id, []).append(b3)
    for replica in candidates:
        tier = names[replica.tier_id]
        inside = members.get(replica.pack_id or "", [])
        if replica.id is None or not inside:
            continue
        if all(tier not in wanted.get(b3, {tier}) for b3 in inside):
            extra.append(
                ExtraCopy(tier, replica.key, replica.id, None, replica.pack_id, len(inside))
            )
    return extra


def drop_copies(node: ArchiveNode, copies: Sequence[ExtraCopy], *, session: Session) -> int:
    """Delete extra copies from their tiers and the catalog, each recorded as a PREMIS
    ``deletion`` event. The caller must have shown them and had them confirmed."""
    for copy in copies:
        tier = node.tiers.get(copy.tier)
        if tier is not None:
            tier.delete(copy.key)
            if copy.pack_id is not None:
                tier.delete(pack_index_key(copy.pack_id))
        session.execute(sa.delete(models.Replica).where(col(models.Replica.id) == copy.replica_id))
        detail: dict[str, Any] = {"key": copy.key, "reason": "no longer required by any policy"}
        if copy.pack_id is not None:
            detail["members"] = copy.members
        session.add(
            models.Event(
                type=EventType.DELETION,
                object_type="pack" if copy.pack_id is not None else "blob",
                object_id=copy.pack_id or copy.blob_b3 or "",
                tier=copy.tier,
                outcome="success",
                detail=detail,
                agent=AGENT,
            )
        )
    return len(copies)
