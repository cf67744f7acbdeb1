"""Bad input gets a clear error and changes nothing: catalog and every tier as they were."""

from __future__ import annotations

import os
import subprocess
import sys
import unicodedata
from collections.abc import Callable
from pathlib import Path

import blake3
import pytest
from sqlmodel import select

from archive.blobstore import present_blobs
from archive.catalog.models import Blob, Pack, PackMember, Replica, ReplicaState
from archive.config import Settings
from archive.datasets import (
    NewEntry,
    PackedHere,
    commit_version,
    get_dataset,
    get_version,
    iter_entries,
    parse_ref,
)
from archive.errors import InvalidTree, MissingBlobs, UnsupportedFile
from archive.ingest import ingest_tree
from archive.node import ArchiveNode
from archive.packs import blob_key, pack_index_key
from tests.archive.conftest import Cli
from tests.support.archive_state import snapshot
from tiers import TierError
from tiers.local import LocalTier


@pytest.fixture
def seeded(node: ArchiveNode, tmp_path: Path) -> ArchiveNode:
    """An archive that already holds one version, so 'unchanged' is a real claim."""
    src = tmp_path / "seed"
    src.mkdir()
    (src / "a.txt").write_text("already archived")
    (src / "big.bin").write_bytes(os.urandom(2 * 1024 * 1024))
    ingest_tree(node, src, parse_ref("lab/seed"))
    return node


def _bad_symlink_out(src: Path) -> None:
    (src / "escape").symlink_to("/etc/hostname")


def _bad_symlink_dotdot(src: Path) -> None:
    outside = src.parent / "outside.txt"
    outside.write_text("secret")
    (src / "up").symlink_to("../outside.txt")


def _bad_dangling(src: Path) -> None:
    (src / "dangling").symlink_to(src / "nothing-here")


def _bad_loop(src: Path) -> None:
    (src / "sub").mkdir()
    (src / "sub" / "loop").symlink_to(src)


def _bad_fifo(src: Path) -> None:
    os.mkfifo(src / "pipe")


def _bad_backslash(src: Path) -> None:
    (src / "win\\dows.txt").write_text("x")


def _bad_control(src: Path) -> None:
    (src / "bell\x07.txt").write_text("x")


def _bad_newline(src: Path) -> None:
    (src / "two\nlines.txt").write_text("x")


def _bad_nfc_collision(src: Path) -> None:
    (src / "café.txt").write_text("nfc")
    (src / unicodedata.normalize("NFD", "café.txt")).write_text("nfd")


def _bad_undecodable(src: Path) -> None:
    with open(os.path.join(os.fsencode(src), b"bad\xffname.txt"), "wb") as fh:
        fh.write(b"x")


def _bad_drive(src: Path) -> None:
    (src / "C:evil.txt").write_text("x")


CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    "symlink-out-of-tree": (_bad_symlink_out, "leaves the tree"),
    "symlink-dotdot": (_bad_symlink_dotdot, "leaves the tree"),
    "dangling-symlink": (_bad_dangling, "dangling"),
    "symlink-loop": (_bad_loop, "loop"),
    "fifo": (_bad_fifo, "FIFO"),
    "backslash": (_bad_backslash, "backslash"),
    "control-character": (_bad_control, "control character"),
    "newline": (_bad_newline, "control character"),
    "nfc-nfd-collision": (_bad_nfc_collision, "collide"),
    "undecodable-name": (_bad_undecodable, "UTF-8"),
    "windows-drive": (_bad_drive, "drive"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_tree_is_refused_whole_and_nothing_changes(
    seeded: ArchiveNode, tmp_path: Path, case: str
) -> None:
    make_bad, reason = CASES[case]
    src = tmp_path / "src"
    src.mkdir()
    (src / "good.txt").write_text("a good file that must not be stored either")
    (src / "large-good.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    make_bad(src)
    before = snapshot(seeded)
    with pytest.raises(InvalidTree) as info:
        ingest_tree(seeded, src, parse_ref("lab/bad"))
    assert reason in str(info.value)
    assert info.value.exit_code == 2
    assert snapshot(seeded) == before


def test_all_problems_are_reported_at_once(seeded: ArchiveNode, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _bad_fifo(src)
    _bad_symlink_out(src)
    _bad_control(src)
    with pytest.raises(InvalidTree) as info:
        ingest_tree(seeded, src, parse_ref("lab/bad"))
    assert len(info.value.problems) == 3


def test_missing_path_is_a_clear_error(seeded: ArchiveNode, tmp_path: Path) -> None:
    before = snapshot(seeded)
    with pytest.raises(UnsupportedFile, match="No such file"):
        ingest_tree(seeded, tmp_path / "does-not-exist", parse_ref("lab/bad"))
    assert snapshot(seeded) == before


def test_commit_naming_a_missing_blob_is_refused(seeded: ArchiveNode) -> None:
    before = snapshot(seeded)
    ghost = "f" * 64
    with pytest.raises(MissingBlobs) as info, seeded.session() as session:
        commit_version(
            parse_ref("lab/ghost"), [NewEntry("x.txt", ghost)], session=session, tier=seeded.hot
        )
    assert info.value.digests == [ghost]
    assert info.value.http_status == 409
    assert snapshot(seeded) == before


def test_a_commit_vouching_for_packs_without_a_present_copy_is_refused(
    seeded: ArchiveNode,
) -> None:
    """``packed`` spares the per-blob lookups only while the pack itself is held."""
    with seeded.reading() as session:
        pack = session.exec(select(Pack)).one()
        b3 = session.exec(select(PackMember.blob_b3).where(PackMember.pack_id == pack.id)).one()
        blob = session.exec(select(Blob).where(Blob.b3 == b3)).one()
    vouched = {b3: PackedHere(pack.id, blob.sha256, blob.size)}
    unknown = {b3: PackedHere("0" * 64, blob.sha256, blob.size)}
    with seeded.session() as session:
        for replica in session.exec(select(Replica).where(Replica.pack_id == pack.id)):
            replica.state = ReplicaState.DAMAGED
    before = snapshot(seeded)
    for packed in (vouched, unknown):
        with pytest.raises(MissingBlobs) as info, seeded.session() as session:
            commit_version(
                parse_ref("lab/vouched"),
                [NewEntry("a.txt", b3)],
                session=session,
                tier=seeded.hot,
                packed=packed,
            )
        assert info.value.digests == [b3]
        assert snapshot(seeded) == before


def test_unreadable_file_is_refused(tmp_path: Path) -> None:
    """Root reads everything, so the scan runs without the capabilities that allow it."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "ok.txt").write_text("fine")
    secret = src / "secret.txt"
    secret.write_text("nobody may read this")
    secret.chmod(0o000)
    script = (
        "import sys; from pathlib import Path\n"
        "from archive.scan import scan_tree\n"
        "from archive.errors import InvalidTree\n"
        "try:\n    scan_tree(Path(sys.argv[1]))\n"
        "except InvalidTree as exc:\n    print(exc); sys.exit(exc.exit_code)\n"
    )
    runner: list[str] = []
    if os.geteuid() == 0:
        runner = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    result = subprocess.run(
        [*runner, sys.executable, "-c", script, str(src)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "secret.txt" in result.stdout and "not readable" in result.stdout


def test_hard_links_are_two_entries_of_one_blob(local_node: ArchiveNode, tmp_path: Path) -> None:
    src = tmp_path / "links"
    (src / "a").mkdir(parents=True)
    data = os.urandom(3 * 1024 * 1024)
    (src / "a" / "original.bin").write_bytes(data)
    os.link(src / "a" / "original.bin", src / "twin.bin")  # same inode, another name
    report = ingest_tree(local_node, src, parse_ref("lab/links"))
    assert (report.files, report.new_blobs, report.deduplicated) == (2, 1, 1)
    with local_node.session() as session:
        entries = {e.path: e.b3 for e in iter_entries(1, session=session)}
    assert set(entries) == {"a/original.bin", "twin.bin"}
    assert len(set(entries.values())) == 1


def test_a_name_of_a_thousand_bytes(local_node: ArchiveNode, tmp_path: Path) -> None:
    """Four 250-byte segments: 1,003 bytes in all, under the 2,048-byte path limit."""
    src = tmp_path / "long"
    deep = src.joinpath(*["é" * 125] * 3)  # 250 bytes of UTF-8 per segment
    deep.mkdir(parents=True)
    (deep / ("x" * 250)).write_bytes(b"far down\n")
    report = ingest_tree(local_node, src, parse_ref("lab/long"))
    assert report.files == 1
    with local_node.session() as session:
        (entry,) = list(iter_entries(1, session=session))
    assert len(entry.path.encode()) == 1003


@pytest.mark.slow
def test_a_hundred_thousand_files_in_one_folder(cli: Cli, tmp_path: Path) -> None:
    """Through the CLI: every file catalogued with the digest of its own bytes."""
    src = tmp_path / "flat"
    src.mkdir()
    count = 100_000
    for i in range(count):
        fd = os.open(src / f"f{i:06d}.txt", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, b"%d\n" % i)  # distinct, so 100,000 blobs as well
        os.close(fd)
    report = cli.json("ingest", str(src), "-C", "lab", "-D", "flat")
    assert isinstance(report, dict)
    assert (report["files"], report["new_blobs"], report["version"]) == (count, count, 1)
    node = ArchiveNode.open(Settings(data_dir=cli.cwd / "permafrost-data"), upgrade=False)
    try:
        with node.session() as session:
            got = {e.path: (e.b3, e.size) for e in iter_entries(1, session=session)}
    finally:
        node.close()
    want = {
        f"f{i:06d}.txt": (blake3.blake3(b"%d\n" % i).hexdigest(), len(b"%d\n" % i))
        for i in range(count)
    }
    assert got == want
    assert cli("get", "lab/flat", "f099999.txt", "-o", "-").stdout == "99999\n"


def test_a_blob_that_cannot_be_stored_fails_the_ingest_and_leaves_nothing(
    local_node: ArchiveNode, tmp_path: Path
) -> None:
    """Large blobs are made durable and promoted in the background while the next
    file encodes: a failure there must still fail the ingest before anything is
    committed, drop every staged byte, and let a rerun finish once it is fixed."""
    src = tmp_path / "src"
    src.mkdir()
    doomed = os.urandom(3 * 1024 * 1024)
    (src / "a-doomed.bin").write_bytes(doomed)
    for i in range(3):  # queued behind it: still pending or stored when it fails
        (src / f"b-{i}.bin").write_bytes(os.urandom(2 * 1024 * 1024))
    (src / "small.txt").write_text("packed")
    address = blake3.blake3(doomed).hexdigest()
    hot = local_node.hot
    assert isinstance(hot, LocalTier)
    blocker = hot.root / "blobs" / "b3" / address[:2]
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_bytes(b"an object where the blob's folder must go")
    blob_tables = ("blob", "replica", "event", "pack", "packmember")
    before = snapshot(local_node, ignore_tables=blob_tables).rows

    with pytest.raises(TierError, match="a folder cannot also hold keys below it"):
        ingest_tree(local_node, src, parse_ref("lab/doomed"))

    # No dataset, version or entry; blobs stored before the failure are recorded
    # (a rerun reuses them), and nothing else is left in the tier, staged or not.
    assert snapshot(local_node, ignore_tables=blob_tables).rows == before
    assert not hot.staging.exists() or not any(hot.staging.iterdir())
    with local_node.session() as session:
        recorded = set(session.exec(select(Replica.key)).all())
        # A pack sealed before the failure may be stored and recorded too (its work
        # had started): its index object goes with it.
        recorded |= {pack_index_key(p) for p in session.exec(select(Pack.id)).all()}
    left = {info.key for info in hot.list("")} - {f"blobs/b3/{address[:2]}"}
    assert left <= recorded and blob_key(address) not in recorded

    blocker.unlink()
    report = ingest_tree(local_node, src, parse_ref("lab/doomed"))
    assert (report.version, report.files) == (1, 5)
    with local_node.session() as session:
        dataset = get_dataset("lab", "doomed", session=session)
        version = get_version(dataset, None, session=session)
        assert version.id is not None
        entries = {e.path: e.b3 for e in iter_entries(version.id, session=session)}
        assert present_blobs(entries.values(), session=session) == set(entries.values())
    assert entries["a-doomed.bin"] == address
    with hot.open(blob_key(address)) as stored:
        assert blake3.blake3(stored.read()).hexdigest() == address  # random bytes: stored raw
