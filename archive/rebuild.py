"""Rebuild a lost catalog from what the tiers hold (DESIGN section 3: storage is self-describing).

1. **Manifests** of one tier (``--from``) give every collection, dataset, version and
   entry, with each blob's BLAKE3, SHA-256 and size. Each dataset's manifests are
   read in version order and their hash chain is checked: version N+1 names the
   BLAKE3 of version N's manifest bytes, so a manifest altered after the fact is
   named exactly (the next version no longer vouches for it). The newest manifest
   of a dataset has no successor, which the report says.
2. **Stored bytes** of every readable tier are listed and proven: each loose blob
   and each member of each pack (found through the pack's index sidecar) is
   decoded and must hash to its address. What it decodes to gives the blob's
   stored size, stored BLAKE3 and codec. Bytes that do not prove are not recorded.
3. **Copies** on tiers that need a restore before reading (cold) are recreated from
   the listing alone when a readable tier proved the blob and the sizes agree; a
   cold pack, whose index cannot be read without a restore, is reported instead.

Every copy recreated is ``present`` and due for audit at once. The rebuild writes into
an empty catalog only (``--into`` another database, or after dropping the lost one),
in one transaction, so a failed rebuild leaves nothing half-made.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import blake3
import zstandard
from sqlmodel import Session, func, select

from archive.blobstore import adopt_existing
from archive.catalog import models
from archive.catalog.bulk import insert_all, insert_ignore
from archive.catalog.models import Codec, EventOutcome, EventType, ReplicaState, utcnow
from archive.encoding import BlobDigest
from archive.errors import BlobDigestMismatch, InvalidInput
from archive.manifest import parse as parse_manifest
from archive.node import ArchiveNode
from archive.packs import PACK_FORMAT, blob_key, pack_index_key, pack_key
from tiers import NeedsRestore, Tier, TierError

AGENT = "permafrost/rebuild"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
LIST_SHOWN = 50


@dataclass
class RebuildReport:
    source: str
    collections: int = 0
    datasets: int = 0
    versions: int = 0
    entries: int = 0
    blobs: int = 0
    packs: int = 0
    copies: dict[str, int] = field(default_factory=dict)
    chain_breaks: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    lost_blobs: list[str] = field(default_factory=list)
    unproven: list[str] = field(default_factory=list)
    unindexed_packs: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when the history is whole and every blob it names was found and proven."""
        return not (self.chain_breaks or self.unreadable or self.lost_blobs)

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "ok": self.ok}


@dataclass
class _Version:
    collection: str
    dataset: str
    number: int
    key: str
    manifest_b3: str
    doc: dict[str, Any]


def rebuild_catalog(node: ArchiveNode, source: str) -> RebuildReport:
    """Recreate the catalog of ``node`` (which must be empty) from tier ``source``.

    Raises:
        InvalidInput: ``source`` is not a configured tier, or the catalog is not empty.
    """
    started = time.perf_counter()
    if source not in node.tiers:
        raise InvalidInput(f"no tier named {source!r}; configured: {', '.join(node.tiers)}")
    with node.session() as session:
        held = session.scalar(select(func.count()).select_from(models.Version)) or 0
        if held:
            raise InvalidInput(
                f"the catalog already holds {held} versions: rebuild into an empty one "
                "(--into another database URL, or move the damaged one aside)"
            )
    report = RebuildReport(source)
    versions = _read_chains(node.tiers[source], report)
    wanted: dict[str, tuple[str, int]] = {}
    for v in versions:
        for e in v.doc["entries"]:
            wanted.setdefault(e["b3"], (e["sha256"], e["size"]))
    now = utcnow()
    proven: dict[str, BlobDigest] = {}
    loose: dict[str, list[tuple[str, str]]] = {}  # tier -> [(b3, key)]
    packs: dict[str, tuple[int, list[tuple[str, int, int]]]] = {}  # id -> (size, members)
    pack_copies: dict[str, list[str]] = {}  # tier -> [pack id]
    for name, tier in node.tiers.items():
        _scan_tier(name, tier, wanted, proven, loose, packs, pack_copies, report)
    _cold_only(node, wanted, proven, loose, report)
    with node.session() as session:
        tier_ids = node.tier_ids(session=session)
        _write_blobs(session, wanted, proven, now, report)
        _write_history(session, versions, now, report)
        cold = {n: t.capabilities.needs_restore for n, t in node.tiers.items()}
        _write_copies(session, tier_ids, proven, loose, packs, pack_copies, cold, now, report)
        report.seconds = time.perf_counter() - started
        session.add(
            models.Event(
                type=EventType.VALIDATION,
                object_type="catalog",
                object_id=f"rebuild from {source}",
                tier=source,
                outcome=EventOutcome.SUCCESS if report.ok else EventOutcome.WARNING,
                detail=_summary(report),
                agent=AGENT,
            )
        )
    return report


# -- manifests and their hash chains -------------------------------------------------
def _read_chains(tier: Tier, report: RebuildReport) -> list[_Version]:
    found: dict[tuple[str, str], dict[int, str]] = {}
    for info in tier.list("manifests/"):
        parts = info.key.split("/")
        if len(parts) != 4 or not parts[3].startswith("v") or not parts[3].endswith(".json"):
            report.unreadable.append(f"{info.key}: not a manifest key")
            continue
        try:
            number = int(parts[3][1:-5])
        except ValueError:
            report.unreadable.append(f"{info.key}: not a manifest key")
            continue
        found.setdefault((parts[1], parts[2]), {})[number] = info.key
    versions: list[_Version] = []
    for (collection, dataset), keys in sorted(found.items()):
        previous: _Version | None = None
        for number in range(1, max(keys) + 1):
            name = f"{collection}/{dataset}@v{number}"
            key = keys.get(number)
            if key is None:
                report.chain_breaks.append(f"{name}: manifest missing from the tier")
                previous = None
                continue
            try:
                data = _read_all(tier, key)
                doc = parse_manifest(data)
                _check_document(doc, collection, dataset, number)
            except (ValueError, KeyError, TypeError) as exc:
                report.unreadable.append(f"{name} ({key}): {exc}")
                previous = None
                continue
            version = _Version(
                collection, dataset, number, key, blake3.blake3(data).hexdigest(), doc
            )
            claimed = doc.get("previous")
            if number == 1 and claimed is not None:
                report.chain_breaks.append(f"{name}: the first version names a predecessor")
            elif previous is not None and claimed != previous.manifest_b3:
                report.chain_breaks.append(
                    f"{collection}/{dataset}@v{number - 1}: its manifest hashes to "
                    f"{previous.manifest_b3}, but v{number} records {claimed}: "
                    f"v{number - 1} was altered or replaced after v{number} was committed"
                )
            versions.append(version)
            previous = version
        report.notes.append(
            f"{collection}/{dataset}@v{max(keys)}: the newest manifest has no successor "
            "to vouch for it"
        )
    return versions


def _check_document(doc: dict[str, Any], collection: str, dataset: str, number: int) -> None:
    ds = doc["dataset"]
    if ds["collection"] != collection or ds["name"] != dataset or doc["version"] != number:
        raise ValueError("the manifest names another dataset or version than its key")
    for e in doc["entries"]:
        if not (isinstance(e["path"], str) and len(e["b3"]) == 64 and isinstance(e["size"], int)):
            raise ValueError("malformed entry")


def _read_all(tier: Tier, key: str) -> bytes:
    with tier.open(key) as stream:
        return stream.read()


# -- stored bytes --------------------------------------------------------------------
def _measure(data: bytes, codec: str, size: int) -> BlobDigest | None:
    """What stored bytes decode to, if they decode with ``codec`` into at most ``size``."""
    if codec == Codec.ZSTD:
        try:
            content = zstandard.ZstdDecompressor().decompress(data, max_output_size=size + 1)
        except zstandard.ZstdError:
            return None
    else:
        content = data
    return BlobDigest(
        blake3.blake3(content).hexdigest(),
        hashlib.sha256(content).hexdigest(),
        len(content),
        len(data),
        blake3.blake3(data).hexdigest(),
        codec,
    )


def _prove_loose(tier: Tier, b3: str, wanted: dict[str, tuple[str, int]]) -> BlobDigest | None:
    """A loose blob, streamed and decoded in bounded memory (``adopt_existing`` proves
    it hashes to its address); it must also carry the manifest's SHA-256 and size."""
    try:
        digest = adopt_existing(tier, b3)
    except BlobDigestMismatch:
        return None
    return digest if (digest.sha256, digest.size) == wanted[b3] else None


def _prove(data: bytes, b3: str, wanted: dict[str, tuple[str, int]]) -> BlobDigest | None:
    """A pack member, already in memory (members are small: under ``pack_below``)."""
    sha256, size = wanted[b3]
    codecs = [Codec.ZSTD, Codec.RAW] if data[:4] == ZSTD_MAGIC else [Codec.RAW]
    for codec in codecs:
        digest = _measure(data, codec, size)
        if digest is not None and (digest.b3, digest.sha256, digest.size) == (b3, sha256, size):
            return digest
    return None


def _scan_tier(
    name: str,
    tier: Tier,
    wanted: dict[str, tuple[str, int]],
    proven: dict[str, BlobDigest],
    loose: dict[str, list[tuple[str, str]]],
    packs: dict[str, tuple[int, list[tuple[str, int, int]]]],
    pack_copies: dict[str, list[str]],
    report: RebuildReport,
) -> None:
    readable = not tier.capabilities.needs_restore
    try:
        for info in tier.list("blobs/"):
            b3 = info.key.rsplit("/", 1)[-1]
            if info.key != blob_key(b3) or b3 not in wanted:
                continue  # not a blob key, or content no manifest names
            if readable:
                digest = _prove_loose(tier, b3, wanted)
                if digest is None:
                    report.unproven.append(f"{name}:{info.key}")
                    continue
                proven.setdefault(b3, digest)
            loose.setdefault(name, []).append((b3, info.key))
        for info in tier.list("packs/"):
            if not info.key.endswith(".tar"):
                continue
            pack_id = info.key[len("packs/") : -len(".tar")]
            if info.key != pack_key(pack_id):
                continue
            if not readable:
                report.unindexed_packs.append(f"{name}:{info.key}")
                continue
            members = _scan_pack(name, tier, pack_id, wanted, proven, report)
            if members is not None:
                packs.setdefault(pack_id, (info.size, members))
                pack_copies.setdefault(name, []).append(pack_id)
    except (TierError, NeedsRestore) as exc:
        report.notes.append(f"tier {name} could not be read whole: {exc}")


def _scan_pack(
    name: str,
    tier: Tier,
    pack_id: str,
    wanted: dict[str, tuple[str, int]],
    proven: dict[str, BlobDigest],
    report: RebuildReport,
) -> list[tuple[str, int, int]] | None:
    """Prove a pack (its bytes hash to its name) and every member; None if it fails."""
    try:
        index = json.loads(_read_all(tier, pack_index_key(pack_id)))
        if index["format"] != PACK_FORMAT:
            raise ValueError(f"format {index['format']!r}")
        listed = sorted((m["offset"], m["length"], m["b3"]) for m in index["members"])
    except (TierError, ValueError, KeyError, TypeError) as exc:
        report.unproven.append(f"{name}:{pack_key(pack_id)}: index unreadable ({exc})")
        return None
    members: list[tuple[str, int, int]] = []
    whole = blake3.blake3()
    position = 0
    with tier.open(pack_key(pack_id)) as stream:
        for offset, length, b3 in listed:
            gap = stream.read(offset - position)
            data = stream.read(length)
            whole.update(gap)
            whole.update(data)
            position = offset + length
            if b3 not in wanted:
                continue
            digest = _prove(data, b3, wanted)
            if digest is None:
                report.unproven.append(f"{name}:{pack_key(pack_id)} member {b3}")
                continue
            proven.setdefault(b3, digest)
            members.append((b3, offset, length))
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            whole.update(chunk)
    if whole.hexdigest() != pack_id:
        report.unproven.append(f"{name}:{pack_key(pack_id)}: bytes do not hash to its name")
        return None
    return members


def _cold_only(
    node: ArchiveNode,
    wanted: dict[str, tuple[str, int]],
    proven: dict[str, BlobDigest],
    loose: dict[str, list[tuple[str, str]]],
    report: RebuildReport,
) -> None:
    """Drop unreadable copies no readable tier vouches for; name the blobs lost."""
    for name, tier in node.tiers.items():
        if not tier.capabilities.needs_restore or name not in loose:
            continue
        kept = []
        for b3, key in loose[name]:
            if b3 in proven and tier.stat(key).size == proven[b3].stored_size:
                kept.append((b3, key))
            else:
                report.unproven.append(f"{name}:{key}: only a restore can prove it")
        loose[name] = kept
    report.lost_blobs = sorted(b3 for b3 in wanted if b3 not in proven)


# -- catalog rows --------------------------------------------------------------------
def _write_blobs(
    session: Session,
    wanted: dict[str, tuple[str, int]],
    proven: dict[str, BlobDigest],
    now: dt.datetime,
    report: RebuildReport,
) -> None:
    rows = []
    for b3, (sha256, size) in wanted.items():
        d = proven.get(b3)
        # A blob found nowhere keeps its manifest digests and no copy: status names it lost.
        stored = (d.stored_size, d.stored_b3, d.codec) if d else (size, b3, Codec.RAW)
        rows.append(
            {
                "b3": b3,
                "sha256": sha256,
                "size": size,
                "stored_size": stored[0],
                "stored_b3": stored[1],
                "codec": stored[2],
                "created_at": now,
            }
        )
    insert_ignore(session, models.Blob, rows)
    report.blobs = len(rows)


def _write_history(
    session: Session, versions: list[_Version], now: dt.datetime, report: RebuildReport
) -> None:
    collections: dict[str, models.Collection] = {}
    datasets: dict[tuple[str, str], models.Dataset] = {}
    for v in versions:
        coll = collections.get(v.collection)
        if coll is None:
            coll = collections[v.collection] = models.Collection(name=v.collection)
            session.add(coll)
            session.flush()
        doc = v.doc["dataset"]
        ds = datasets.get((v.collection, v.dataset))
        if ds is None:
            assert coll.id is not None
            ds = models.Dataset(collection_id=coll.id, name=v.dataset, pid=doc["pid"])
            datasets[(v.collection, v.dataset)] = ds
        ds.title, ds.metadata_ = doc.get("title") or "", doc.get("metadata") or {}
        session.add(ds)
        session.flush()
        assert ds.id is not None
        entries = v.doc["entries"]
        version = models.Version(
            dataset_id=ds.id,
            number=v.number,
            manifest_b3=v.manifest_b3,
            manifest_key=v.key,
            previous_b3=v.doc.get("previous"),
            message=v.doc.get("message", ""),
            file_count=len(entries),
            total_size=sum(e["size"] for e in entries),
            created_at=_parse_time(v.doc["created"]),
        )
        session.add(version)
        session.flush()
        insert_all(
            session,
            models.Entry,
            [{"version_id": version.id, "path": e["path"], "blob_b3": e["b3"]} for e in entries],
        )
        report.versions += 1
        report.entries += len(entries)
    report.collections, report.datasets = len(collections), len(datasets)


def _parse_time(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)


def _write_copies(
    session: Session,
    tier_ids: dict[str, int],
    proven: dict[str, BlobDigest],
    loose: dict[str, list[tuple[str, str]]],
    packs: dict[str, tuple[int, list[tuple[str, int, int]]]],
    pack_copies: dict[str, list[str]],
    node_tiers_cold: dict[str, bool],
    now: dt.datetime,
    report: RebuildReport,
) -> None:
    insert_ignore(
        session,
        models.Pack,
        [
            {"id": pid, "size": size, "member_count": len(members), "created_at": now}
            for pid, (size, members) in packs.items()
        ],
    )
    insert_ignore(
        session,
        models.PackMember,
        [
            {"pack_id": pid, "blob_b3": b3, "offset": offset, "length": length}
            for pid, (_, members) in packs.items()
            for b3, offset, length in members
        ],
    )
    report.packs = len(packs)
    for name in sorted(set(loose) | set(pack_copies)):
        verified = None if node_tiers_cold.get(name) else now
        rows = [
            _copy(tier_ids[name], key, now, verified, blob_b3=b3)
            for b3, key in loose.get(name, [])
            if b3 in proven
        ]
        rows += [
            _copy(tier_ids[name], pack_key(p), now, verified, pack_id=p)
            for p in pack_copies.get(name, [])
        ]
        insert_ignore(session, models.Replica, rows)
        report.copies[name] = len(rows)


def _copy(
    tier_id: int, key: str, now: dt.datetime, verified: dt.datetime | None, **target: str
) -> dict[str, Any]:
    return {
        "blob_b3": None,
        "pack_id": None,
        **target,
        "tier_id": tier_id,
        "state": ReplicaState.PRESENT,
        "key": key,
        "last_verified_at": verified,  # the rebuild read and proved it (not on cold tiers)
        "next_audit_at": now,  # due for audit at once, as a new copy would be
        "failures": 0,
        "created_at": now,
        "updated_at": now,
    }


def _summary(report: RebuildReport) -> dict[str, Any]:
    data = report.as_dict()
    for key in ("chain_breaks", "unreadable", "lost_blobs", "unproven", "unindexed_packs"):
        data[key] = data[key][:LIST_SHOWN]
    data.pop("notes")
    return data


def iter_problems(report: RebuildReport) -> Iterator[str]:
    """Every problem the report holds, as lines for a person."""
    yield from (f"hash chain: {p}" for p in report.chain_breaks)
    yield from (f"unreadable manifest: {p}" for p in report.unreadable)
    yield from (f"lost (on no tier): blob {b3}" for b3 in report.lost_blobs)
    yield from (f"not recorded (did not prove): {p}" for p in report.unproven)
    yield from (f"cold pack not indexed (restore it first): {p}" for p in report.unindexed_packs)
