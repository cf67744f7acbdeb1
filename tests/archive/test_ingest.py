"""Ingest end to end on real tiers and catalogs: digests, dedupe, versions, bytes back."""

from __future__ import annotations

import hashlib
import json
import os
import random
import unicodedata
from pathlib import Path

import blake3
import pytest
from sqlmodel import select

from archive import blobstore
from archive.catalog import models
from archive.checkout import checkout
from archive.datasets import get_dataset, get_version, iter_entries, list_versions, parse_ref
from archive.ingest import ingest_tree
from archive.manifest import parse
from archive.node import ArchiveNode
from archive.packs import blob_key
from archive.verify import verify_version

MiB = 1024 * 1024


def make_tree(root: Path, seed: int = 1) -> dict[str, bytes]:
    """A research-data-like folder: tiny, small, compressible and random large files."""
    rng = random.Random(seed)
    files = {
        "README.md": b"# Run 42\nSee data/.\n",
        "empty.dat": b"",
        "data/measurements.csv": b"".join(
            f"{i},{rng.random():.6f},{rng.choice(['ok', 'warn', 'fail'])}\n".encode()
            for i in range(300_000)
        ),
        "data/raw/detector.bin": rng.randbytes(3 * MiB),
        "data/raw/dup-of-readme.md": b"# Run 42\nSee data/.\n",
        "notes/ünïcödé naïve.txt": "café résumé\n".encode(),
        "notes/small/" + "a" * 200 + ".txt": b"long name",
    }
    for i in range(40):
        files[f"data/chunks/part-{i:03}.json"] = json.dumps(
            {"i": i, "values": [rng.random() for _ in range(rng.randint(1, 400))]}
        ).encode()
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return files


def test_ingest_records_every_digest_and_gives_bytes_back(
    node: ArchiveNode, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    files = make_tree(src)
    report = ingest_tree(node, src, parse_ref("lab/run42"), message="first")
    assert report.created and report.version == 1
    assert report.files == len(files)
    assert report.new_blobs == len(set(files.values()))  # the duplicate is stored once
    assert report.deduplicated == 1

    with node.session() as session:
        dataset = get_dataset("lab", "run42", session=session)
        version = get_version(dataset, None, session=session)
        assert version.id is not None
        entries = {e.path: e for e in iter_entries(version.id, session=session)}
        assert set(entries) == set(files)
        for path, content in files.items():
            assert entries[path].b3 == blake3.blake3(content).hexdigest()
            assert entries[path].sha256 == hashlib.sha256(content).hexdigest()
            assert entries[path].size == len(content)
        codecs = {p: e.codec for p, e in entries.items()}
        assert codecs["data/measurements.csv"] == "zstd"
        assert codecs["data/raw/detector.bin"] == "raw"  # random: compression does not pay
        assert (
            entries["data/measurements.csv"].stored_size < len(files["data/measurements.csv"]) / 2
        )

        out = tmp_path / "out"
        result = checkout(version, out, session=session, tiers=node.tiers)
        assert result.files == len(files) and not result.problems
    for path, content in files.items():
        assert (out / path).read_bytes() == content


def test_large_blobs_are_loose_and_small_ones_packed(node: ArchiveNode, tmp_path: Path) -> None:
    src = tmp_path / "src"
    files = make_tree(src)
    ingest_tree(node, src, parse_ref("lab/run42"))
    keys = {info.key for info in node.hot.list("")}
    big = blake3.blake3(files["data/raw/detector.bin"]).hexdigest()
    small = blake3.blake3(files["README.md"]).hexdigest()
    assert blob_key(big) in keys
    assert blob_key(small) not in keys
    packs = [k for k in keys if k.startswith("packs/") and k.endswith(".tar")]
    assert len(packs) == 1
    # The pack is named by the BLAKE3 of its own bytes.
    with node.hot.open(packs[0]) as stream:
        assert blake3.blake3(stream.read()).hexdigest() == packs[0][len("packs/") : -len(".tar")]


def test_a_pack_is_sealed_at_its_member_limit(
    node: ArchiveNode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Packs close at PACK_MEMBERS members, so their rows are recorded while the next
    fills; every file still comes back and the commit checks presence per pack."""
    monkeypatch.setattr(blobstore, "PACK_MEMBERS", 3)
    src = tmp_path / "src"
    src.mkdir()
    files = {f"f{i}.txt": f"file {i}\n".encode() * (i + 1) for i in range(8)}
    for name, data in files.items():
        (src / name).write_bytes(data)
    ingest_tree(node, src, parse_ref("lab/many"))
    with node.reading() as session:
        packs = session.exec(select(models.Pack)).all()
        assert sorted(p.member_count for p in packs) == [2, 3, 3]
        version = get_version(get_dataset("lab", "many", session=session), None, session=session)
        assert version.id is not None
        got = {e.path: e.b3 for e in iter_entries(version.id, session=session)}
        out = tmp_path / "out"
        result = checkout(version, out, session=session, tiers=node.tiers)
        assert result.files == len(files) and not result.problems
    assert got == {name: blake3.blake3(data).hexdigest() for name, data in files.items()}
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files


def test_second_version_stores_only_what_changed(node: ArchiveNode, tmp_path: Path) -> None:
    src = tmp_path / "src"
    files = make_tree(src)
    ingest_tree(node, src, parse_ref("lab/run42"))
    before = {info.key for info in node.hot.list("blobs/")} | {
        info.key for info in node.hot.list("packs/")
    }
    (src / "data/measurements.csv").write_bytes(files["data/measurements.csv"] + b"1,2,3\n")
    (src / "new.txt").write_bytes(b"a new file")
    (src / "README.md").unlink()

    report = ingest_tree(node, src, parse_ref("lab/run42"), message="second")
    assert (report.version, report.created) == (2, True)
    assert report.new_blobs == 2
    assert report.new_bytes == len(files["data/measurements.csv"]) + 6 + len(b"a new file")
    after = {info.key for info in node.hot.list("blobs/")} | {
        info.key for info in node.hot.list("packs/")
    }
    added = after - before
    assert len([k for k in added if k.startswith("blobs/")]) == 1  # the changed large file
    assert len([k for k in added if k.endswith(".tar")]) == 1  # one pack holding new.txt
    assert before <= after

    with node.session() as session:
        dataset = get_dataset("lab", "run42", session=session)
        v1, v2 = list_versions(dataset.id or 0, session=session)
        assert v1.id is not None and v2.id is not None
        paths1 = {e.path for e in iter_entries(v1.id, session=session)}
        paths2 = {e.path for e in iter_entries(v2.id, session=session)}
    assert "README.md" in paths1 and "README.md" not in paths2
    assert "new.txt" in paths2


def test_rerun_of_an_unchanged_tree_creates_nothing(node: ArchiveNode, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src)
    ingest_tree(node, src, parse_ref("lab/run42"))
    report = ingest_tree(node, src, parse_ref("lab/run42"))
    assert (report.version, report.created, report.new_blobs) == (1, False, 0)


def test_content_is_deduplicated_across_datasets(node: ArchiveNode, tmp_path: Path) -> None:
    src = tmp_path / "src"
    files = make_tree(src)
    ingest_tree(node, src, parse_ref("lab/a"))
    report = ingest_tree(node, src, parse_ref("other/b"))
    assert report.new_blobs == 0
    assert report.deduplicated == len(files)
    with node.session() as session:
        assert len(session.exec(select(models.Blob)).all()) == len(set(files.values()))


def test_manifests_are_canonical_and_hash_chained(node: ArchiveNode, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src)
    ingest_tree(node, src, parse_ref("lab/run42"), message="one")
    (src / "more.txt").write_text("more")
    ingest_tree(node, src, parse_ref("lab/run42"), message="two")
    with node.session() as session:
        dataset = get_dataset("lab", "run42", session=session)
        v1, v2 = list_versions(dataset.id or 0, session=session)
    raw = {}
    for v in (v1, v2):
        with node.hot.open(v.manifest_key) as stream:
            raw[v.number] = stream.read()
        assert blake3.blake3(raw[v.number]).hexdigest() == v.manifest_b3
        doc = parse(raw[v.number])
        canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert canonical.encode() == raw[v.number]
        assert doc["version"] == v.number
        assert doc["dataset"]["pid"] == dataset.pid
    assert parse(raw[1])["previous"] is None
    assert parse(raw[2])["previous"] == v1.manifest_b3 == v2.previous_b3
    assert [e["path"] for e in parse(raw[2])["entries"]] == sorted(
        e["path"] for e in parse(raw[2])["entries"]
    )


def test_nfd_names_on_disk_are_archived_as_nfc(local_node: ArchiveNode, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    nfd = unicodedata.normalize("NFD", "résumé.txt")
    (src / nfd).write_bytes(b"cv")
    ingest_tree(local_node, src, parse_ref("lab/nfd"))
    with local_node.session() as session:
        version = get_version(get_dataset("lab", "nfd", session=session), None, session=session)
        assert [e.path for e in iter_entries(version.id or 0, session=session)] == ["résumé.txt"]


def test_case_only_collisions_are_a_warning(local_node: ArchiveNode, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "Data.csv").write_text("1")
    (src / "data.csv").write_text("2")
    report = ingest_tree(local_node, src, parse_ref("lab/case"))
    assert report.created and report.files == 2
    assert any("Data.csv" in w and "data.csv" in w for w in report.warnings)


def test_verify_reads_every_copy_and_finds_damage(local_node: ArchiveNode, tmp_path: Path) -> None:
    src = tmp_path / "src"
    files = make_tree(src)
    ingest_tree(local_node, src, parse_ref("lab/run42"))
    with local_node.session() as session:
        version = get_version(get_dataset("lab", "run42", session=session), None, session=session)
        report = verify_version(version, session=session, tiers=local_node.tiers)
        assert report.failures == [] and report.blobs == len(set(files.values()))
    # Flip one bit in the loose copy of the large random file.
    b3 = blake3.blake3(files["data/raw/detector.bin"]).hexdigest()
    path = Path(local_node.settings.tiers["hot"].path) / blob_key(b3)  # type: ignore[union-attr]
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[12345] ^= 0x01
    path.write_bytes(bytes(data))
    with local_node.session() as session:
        version = get_version(get_dataset("lab", "run42", session=session), None, session=session)
        report = verify_version(version, session=session, tiers=local_node.tiers)
        assert [f.b3 for f in report.failures] == [b3]
        assert report.blobs_without_good_copy == [b3]
        events = session.exec(
            select(models.Event).where(
                models.Event.type == "fixity check", models.Event.outcome == "failure"
            )
        ).all()
        assert [e.object_id for e in events] == [b3]
