"""Candidate fixes for the small-file ingest path, measured by patching them in.

Each variant runs the real ``ingest_tree`` in-process on a fresh embedded archive
(SQLite + local tier, fsync on) with some functions replaced by faster versions
that produce the same bytes and rows; nothing under archive/ is edited. Variants
run interleaved for ``--repeat`` rounds; reported are medians of wall and process
CPU seconds of ``ingest_tree`` alone (interpreter start-up is measured elsewhere).

    .venv/bin/python bench/experiments/small_variants.py DATA_DIR [--repeat 3]
        [--variants base,header,insert,presence,manifest,batch,all]

Patches:
  header    tar member header from a precomputed USTAR template (byte-identical to
            ``tarfile.TarInfo.tobuf``, checked at start-up) instead of tarfile.
  insert    ``insert_ignore``/``insert_all`` through the driver's ``executemany``
            with the columns' own bind processors, not SQLAlchemy's per-row compile.
  presence  ``present_blobs`` as one plain SQL UNION per batch of 900 addresses.
  manifest  ``_manifest_entries`` reads sha256/size with one plain SQL per 900.
  batch     the small-file pool takes 64 files per task instead of one.
  all       every patch above (same bytes, same rows).
  packevent DATA-MODEL CHANGE: one PREMIS digest event per pack, not one per blob.
  trust     DATA-MODEL CHANGE: the manifest takes sha256/size from this ingest's own
            digests (ingest computed them) instead of reading them back from the catalog.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
if os.environ.get("BENCH_CODE"):  # a snapshot (bench/ingest.py --code) instead of the tree
    sys.path.insert(0, os.environ["BENCH_CODE"])

os.environ.pop("PERMAFROST_CONFIG", None)

# ----------------------------------------------------------------------------------------
# header: a USTAR header without tarfile (name < 100 bytes, mode 0444, mtime 0, uid 0).

_USTAR = bytearray(512)
_USTAR[100:108] = b"0000444\0"
_USTAR[108:116] = b"0000000\0"
_USTAR[116:124] = b"0000000\0"
_USTAR[136:148] = b"00000000000\0"
_USTAR[148:156] = b"        "
_USTAR[156:157] = b"0"
_USTAR[257:265] = b"ustar\x0000"
_TEMPLATE_SUM = sum(_USTAR)


def fast_header(name: str, size: int) -> bytes:
    raw = name.encode()
    if len(raw) > 100 or size >= 8**11:
        return _tar_header(name, size)
    size_field = b"%011o\0" % size
    header = bytearray(_USTAR)
    header[0 : len(raw)] = raw
    header[124:136] = size_field
    # the template's name and size fields are zero bytes: add what replaces them
    checksum = _TEMPLATE_SUM + sum(raw) + sum(size_field)
    header[148:156] = b"%06o\0 " % checksum
    return bytes(header)


def _tar_header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o444
    info.mtime = 0
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def _check_header() -> None:
    import random

    for _ in range(2000):
        name = f"blobs/b3/00/01/{os.urandom(32).hex()}"
        size = random.choice([0, 1, 100, 511, 512, 513, 32768, 10**6, random.randrange(2**33)])
        assert fast_header(name, size) == _tar_header(name, size), (name, size)


# ----------------------------------------------------------------------------------------
# insert: driver-level executemany with the columns' own bind processors.

_STATEMENTS: dict[tuple[str, tuple[str, ...], bool], tuple[str, list[Any]]] = {}


def _fast_insert(session: Any, model: Any, rows: Any, *, ignore: bool) -> None:
    if not rows:
        return
    table = model.__table__
    conn = session.connection()
    dialect = conn.dialect
    names = tuple(rows[0].keys())
    key = (table.name, names, ignore)
    cached = _STATEMENTS.get(key)
    if cached is None:
        quote = dialect.identifier_preparer.quote
        cols = ", ".join(quote(table.c[n].name) for n in names)
        mark = "?" if dialect.paramstyle == "qmark" else "%s"
        values = ", ".join([mark] * len(names))
        sql = f"INSERT INTO {quote(table.name)} ({cols}) VALUES ({values})"  # noqa: S608
        if ignore:
            sql += " ON CONFLICT DO NOTHING"
        procs = [table.c[n].type._cached_bind_processor(dialect) for n in names]
        cached = _STATEMENTS[key] = (sql, procs)
    sql, procs = cached
    pairs = list(zip(names, procs, strict=True))
    params = [tuple(p(r[n]) if p else r[n] for n, p in pairs) for r in rows]
    conn.exec_driver_sql(sql, params)


def fast_insert_ignore(session: Any, model: Any, rows: Any) -> None:
    _fast_insert(session, model, rows, ignore=True)


def fast_insert_all(session: Any, model: Any, rows: Any) -> None:
    _fast_insert(session, model, rows, ignore=False)


# ----------------------------------------------------------------------------------------
# presence and manifest: plain SQL per 900 addresses.


def fast_present_blobs(b3s: Any, *, session: Any) -> set[str]:
    from archive.catalog.models import ReplicaState

    wanted = sorted(set(b3s))
    present: set[str] = set()
    conn = session.connection()
    for i in range(0, len(wanted), 900):
        batch = wanted[i : i + 900]
        marks = ", ".join("?" * len(batch))
        loose = f"SELECT blob_b3 FROM replica WHERE state = ? AND blob_b3 IN ({marks})"  # noqa: S608
        join = "packmember pm JOIN replica r ON r.pack_id = pm.pack_id"
        packed = f"SELECT pm.blob_b3 FROM {join} WHERE r.state = ? AND pm.blob_b3 IN ({marks})"  # noqa: S608
        sql = f"{loose} UNION {packed}"
        state = str(ReplicaState.PRESENT)
        rows = conn.exec_driver_sql(sql, (state, *batch, state, *batch)).all()
        present.update(r[0] for r in rows if r[0])
    return present


def fast_manifest_entries(entries: Any, *, session: Any) -> list[Any]:
    import archive.datasets as datasets
    from archive.errors import InvalidInput, MissingBlobs
    from archive.manifest import ManifestEntry

    missing = datasets.blobs_missing([e.b3 for e in entries], session=session)
    if missing:
        raise MissingBlobs(missing)
    wanted = sorted({e.b3 for e in entries})
    known: dict[str, tuple[str, int]] = {}
    conn = session.connection()
    for i in range(0, len(wanted), 900):
        batch = wanted[i : i + 900]
        marks = ", ".join("?" * len(batch))
        sql = f"SELECT b3, sha256, size FROM blob WHERE b3 IN ({marks})"  # noqa: S608
        known.update({b3: (sha, size) for b3, sha, size in conn.exec_driver_sql(sql, tuple(batch))})
    out = []
    for e in entries:
        sha256, size = known[e.b3]
        if (e.sha256 is not None and e.sha256 != sha256) or (e.size is not None and e.size != size):
            raise InvalidInput(f"{e.path}: claimed sha256/size differ from those of blob {e.b3}")
        out.append(ManifestEntry(e.path, e.b3, sha256, size))
    out.sort(key=lambda m: m.path)
    return out


# ----------------------------------------------------------------------------------------
# batch: the pool reads and encodes 64 files per task.

BATCH_FILES = 64


def batched_small(self: Any, files: list[Any]) -> None:
    import archive.ingest as ingest

    def work(group: list[Any]) -> list[Any]:
        return [self._read_small(f) for f in group]

    groups = [files[i : i + BATCH_FILES] for i in range(0, len(files), BATCH_FILES)]
    window = max(2, ingest.WINDOW_FILES // BATCH_FILES) * self.threads

    def ordered() -> Iterator[Any]:
        with ThreadPoolExecutor(self.threads, thread_name_prefix="ingest") as pool:
            pending: list[Future[list[Any]]] = []
            it = iter(groups)
            for g in it:
                pending.append(pool.submit(work, g))
                if len(pending) >= window:
                    break
            while pending:
                yield from pending.pop(0).result()
                nxt = next(it, None)
                if nxt is not None:
                    pending.append(pool.submit(work, nxt))

    batch: list[Any] = []
    batch_bytes = 0
    for item in ordered():
        batch.append(item)
        batch_bytes += len(item[2])
        if batch_bytes >= ingest.BATCH_BYTES or len(batch) >= 512:
            self._store_small(batch)
            batch, batch_bytes = [], 0
    self._store_small(batch)


# ----------------------------------------------------------------------------------------


def pack_event(digests: Any, tier: str, now: Any, *rest: Any) -> list[dict[str, Any]]:
    from archive.catalog.models import EventOutcome, EventType

    digests = list(digests)
    if len(digests) == 1:
        return ORIGINAL_EVENTS(digests, tier, now, *rest)
    return [
        {
            "type": rest[0] if rest else EventType.MESSAGE_DIGEST_CALCULATION,
            "object_type": "pack",
            "object_id": digests[0].b3,
            "tier": tier,
            "outcome": EventOutcome.SUCCESS,
            "detail": {"blobs": len(digests), "bytes": sum(d.size for d in digests)},
            "agent": rest[1] if len(rest) > 1 else "permafrost/ingest",
            "created_at": now,
        }
    ]


ORIGINAL_EVENTS: Any = None


def trusted_manifest_entries(entries: Any, *, session: Any) -> list[Any]:
    import archive.datasets as datasets
    from archive.errors import MissingBlobs
    from archive.manifest import ManifestEntry

    missing = datasets.blobs_missing([e.b3 for e in entries], session=session)
    if missing:
        raise MissingBlobs(missing)
    out = [ManifestEntry(e.path, e.b3, e.sha256, e.size) for e in entries]
    out.sort(key=lambda m: m.path)
    return out


def apply(patches: set[str]) -> None:
    import archive.blobstore as blobstore
    import archive.catalog.bulk as bulk
    import archive.datasets as datasets
    import archive.ingest as ingest
    import archive.packs as packs

    if "header" in patches:
        packs._header = fast_header  # type: ignore[assignment]
    if "insert" in patches:
        for mod in (bulk, blobstore, datasets):
            if hasattr(mod, "insert_ignore"):
                mod.insert_ignore = fast_insert_ignore  # type: ignore[attr-defined]
            if hasattr(mod, "insert_all"):
                mod.insert_all = fast_insert_all  # type: ignore[attr-defined]
    if "presence" in patches:
        for mod in (blobstore, ingest, datasets):
            if hasattr(mod, "present_blobs"):
                mod.present_blobs = fast_present_blobs  # type: ignore[attr-defined]
    if "manifest" in patches:
        datasets._manifest_entries = fast_manifest_entries  # type: ignore[assignment]
    if "batch" in patches:
        ingest._Ingest.small = batched_small  # type: ignore[method-assign]
    if "packevent" in patches:
        global ORIGINAL_EVENTS
        ORIGINAL_EVENTS = blobstore._digest_events
        blobstore._digest_events = pack_event  # type: ignore[assignment]
    if "trust" in patches:
        datasets._manifest_entries = trusted_manifest_entries  # type: ignore[assignment]


ALL = {"header", "insert", "presence", "manifest", "batch"}


def child(source: Path, variant: str, work: Path, *, verify: bool) -> None:
    """One measured ingest (run in a fresh interpreter so patches never leak)."""
    _check_header()
    os.environ["PERMAFROST_DATA_DIR"] = str(work / "data")
    os.chdir(work)
    from archive.config import load_settings
    from archive.datasets import parse_ref
    from archive.ingest import ingest_tree
    from archive.node import ArchiveNode

    names = set(variant.split("+"))
    patches = (ALL if "all" in names else set()) | (names - {"all", "base"})
    apply(patches)
    settings = load_settings()
    node = ArchiveNode.open(settings)
    node.close()
    node = ArchiveNode.open(settings)
    t0, c0 = time.perf_counter(), time.process_time()
    report = ingest_tree(node, source, parse_ref(f"bench/{source.name}"))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    node.close()
    # Same bytes as the unpatched code: pack objects are named by their BLAKE3, so the
    # list of pack names is a fingerprint of every byte written. `permafrost verify`
    # (unpatched) re-reads every blob through the catalog rows the variant wrote.
    packs = sorted(p.name for p in (work / "data" / "tiers" / "hot" / "packs").glob("*.tar"))
    import hashlib

    fingerprint = hashlib.blake2b("".join(packs).encode(), digest_size=6).hexdigest()
    ok = "unverified"
    if verify:
        checked = subprocess.run(
            [str(Path(sys.executable).parent / "permafrost"), "verify", f"bench/{source.name}"],
            env={**os.environ},
            capture_output=True,
            check=False,
        )
        ok = "verified" if checked.returncode == 0 else f"VERIFY-FAILED({checked.returncode})"
    print(f"{wall:.4f} {cpu:.4f} {report.files} {report.stored_bytes}:{fingerprint}:{ok}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data", type=Path)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--variants", default="base,header,insert,presence,manifest,batch,all")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--verify", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    source = args.data.resolve()
    if args.child:
        child(source, args.child, args.work, verify=args.verify)
        return
    names = [v for v in args.variants.split(",") if v]
    results: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    stored: dict[str, str] = {n: "" for n in names}
    for rep in range(args.repeat):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            work = ROOT / ".bench" / "runs" / f"small-variant-{name}"
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            os.sync()
            env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
            out = subprocess.run(
                [sys.executable, __file__, str(source), "--child", name, "--work", str(work)]
                + (["--verify"] if rep == 0 else []),
                capture_output=True,
                text=True,
                env=env,
                check=False,
            )
            if out.returncode:
                print(out.stderr[-3000:])
                raise SystemExit(f"variant {name} failed")
            wall, cpu, _files, stored_bytes = out.stdout.split()[-4:]
            results[name].append((float(wall), float(cpu)))
            stored[name] = stored[name] if rep else stored_bytes
            print(
                f"  [{rep + 1}] {name:<10} {float(wall):6.2f} s wall {float(cpu):6.2f} s cpu "
                f"(load {os.getloadavg()[0]:.1f})",
                flush=True,
            )
            shutil.rmtree(work, ignore_errors=True)
    base = results.get("base")
    base_wall = statistics.median(w for w, _ in base) if base else None
    base_cpu = statistics.median(c for _, c in base) if base else None
    print(f"\n{source.name}: medians of ingest_tree (speed-up = base / variant)")
    for name in names:
        wall = statistics.median(w for w, _ in results[name])
        cpu = statistics.median(c for _, c in results[name])
        rel = f"wall x{base_wall / wall:4.2f}  cpu x{base_cpu / cpu:4.2f}" if base_wall else ""
        print(f"  {name:<10} {wall:6.2f} s  cpu {cpu:6.2f} s  {rel}  stored {stored[name]}")


if __name__ == "__main__":
    main()
