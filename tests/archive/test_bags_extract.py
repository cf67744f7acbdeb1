"""Unpacking bags sent as zip or tar: every trick refused with its reason, nothing stored."""

from __future__ import annotations

import io
import os
import stat
import struct
import tarfile
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import bagit
import pytest

from archive.bag_import import import_bag
from archive.node import ArchiveNode
from archive.safe_extract import ExtractLimits, UnsafeArchive, member_path, safe_extract
from tests.support.archive_state import snapshot

MiB = 1024 * 1024
BAG = "bag"


def valid_bag_files(tmp_path: Path) -> dict[str, bytes]:
    """The files of a small valid bag, to pack with extra members."""
    folder = tmp_path / "made"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_bytes(b"alpha\n")
    (folder / "sub" / "b.txt").write_bytes(b"bravo\n")
    bagit.make_bag(str(folder), checksums=["sha256"])
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def make_zip(path: Path, files: dict[str, bytes], extra: Callable[[zipfile.ZipFile], None]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(f"{BAG}/{name}", data)
        extra(zf)
    return path


def make_tar(
    path: Path, files: dict[str, bytes], extra: Callable[[tarfile.TarFile], None], mode: str = "w"
) -> Path:
    with tarfile.open(path, mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{BAG}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        extra(tar)
    return path


def zip_member(name: str, data: bytes = b"x", mode: int = 0) -> Callable[[zipfile.ZipFile], None]:
    def add(zf: zipfile.ZipFile) -> None:
        info = zipfile.ZipInfo(name)
        if mode:
            info.external_attr = mode << 16
        with warnings.catch_warnings():  # zipfile warns of a duplicate name: that is the point
            warnings.simplefilter("ignore", UserWarning)
            zf.writestr(info, data)

    return add


def tar_member(name: str, kind: bytes, linkname: str = "") -> Callable[[tarfile.TarFile], None]:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = linkname
        tar.addfile(info)

    return add


ZIP_TRICKS = [
    pytest.param(zip_member("../evil.txt"), "'..' segment", id="zip-slip-dotdot"),
    pytest.param(zip_member(f"{BAG}/../../evil.txt"), "'..' segment", id="zip-slip-nested"),
    pytest.param(zip_member("/etc/evil.txt"), "absolute path", id="zip-absolute"),
    pytest.param(zip_member("..\\evil.txt"), "backslash", id="zip-backslash"),
    pytest.param(zip_member("C:/Windows/evil.txt"), "Windows drive", id="zip-drive"),
    pytest.param(
        zip_member(f"{BAG}/data/link", b"/etc/passwd", stat.S_IFLNK | 0o777),
        "a symbolic link",
        id="zip-symlink",
    ),
    pytest.param(zip_member(f"{BAG}/data/a.txt", b"again"), "appears twice", id="zip-duplicate"),
    pytest.param(zip_member(f"{BAG}/data/a.txt/under"), "lies below", id="zip-file-as-folder"),
]

TAR_TRICKS = [
    pytest.param(tar_member("../evil.txt", tarfile.REGTYPE), "'..' segment", id="tar-dotdot"),
    pytest.param(tar_member("/tmp/evil.txt", tarfile.REGTYPE), "absolute path", id="tar-abs"),
    pytest.param(
        tar_member(f"{BAG}/data/link", tarfile.SYMTYPE, "/etc/passwd"),
        "a symbolic link",
        id="tar-symlink",
    ),
    pytest.param(
        tar_member(f"{BAG}/data/hard", tarfile.LNKTYPE, "/etc/passwd"),
        "a hard link",
        id="tar-hardlink",
    ),
    pytest.param(tar_member(f"{BAG}/data/tty", tarfile.CHRTYPE), "character device", id="tar-chr"),
    pytest.param(tar_member(f"{BAG}/data/disk", tarfile.BLKTYPE), "block device", id="tar-blk"),
    pytest.param(tar_member(f"{BAG}/data/pipe", tarfile.FIFOTYPE), "FIFO", id="tar-fifo"),
]


def refuse(node: ArchiveNode, archive: Path, reason: str) -> UnsafeArchive:
    """Import must refuse ``archive`` with ``reason``, store nothing and leave no temp files."""
    before = snapshot(node)
    with pytest.raises(UnsafeArchive) as refused:
        import_bag(node, archive, "lab", "sent")
    assert snapshot(node) == before
    assert list((node.settings.data_dir / "tmp").iterdir()) == []
    assert any(reason in r for r in refused.value.reasons), refused.value.reasons
    assert refused.value.exit_code == 2 and refused.value.http_status == 422
    return refused.value


def test_a_safe_zip_and_tar_import(local_node: ArchiveNode, tmp_path: Path) -> None:
    files = valid_bag_files(tmp_path)
    zipped = import_bag(local_node, make_zip(tmp_path / "b.zip", files, lambda _: None), "lab")
    assert (zipped.dataset, zipped.files) == ("lab/bag", 2)
    tarred = make_tar(tmp_path / "b.tgz", files, lambda _: None, "w:gz")
    assert import_bag(local_node, tarred, "lab", "tarred").files == 2


@pytest.mark.parametrize(("trick", "reason"), ZIP_TRICKS)
def test_zip_tricks_are_refused(
    local_node: ArchiveNode, tmp_path: Path, trick: Callable[[zipfile.ZipFile], None], reason: str
) -> None:
    refuse(local_node, make_zip(tmp_path / "b.zip", valid_bag_files(tmp_path), trick), reason)
    assert not (tmp_path.parent / "evil.txt").exists()


@pytest.mark.parametrize(("trick", "reason"), TAR_TRICKS)
def test_tar_tricks_are_refused(
    local_node: ArchiveNode, tmp_path: Path, trick: Callable[[tarfile.TarFile], None], reason: str
) -> None:
    refuse(local_node, make_tar(tmp_path / "b.tar", valid_bag_files(tmp_path), trick), reason)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    def many(tar: tarfile.TarFile) -> None:
        for trick in TAR_TRICKS:
            trick.values[0](tar)  # type: ignore[operator]

    archive = make_tar(tmp_path / "b.tar", {}, many)
    with pytest.raises(UnsafeArchive) as refused:
        safe_extract(archive, tmp_path / "out")
    assert len(refused.value.reasons) == len(TAR_TRICKS)
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_zip_bomb_refused_before_a_byte_is_written(local_node: ArchiveNode, tmp_path: Path) -> None:
    def bomb(zf: zipfile.ZipFile) -> None:
        zf.writestr(f"{BAG}/data/zeros.bin", bytes(64 * MiB))  # deflates to about 64 KiB

    archive = make_zip(tmp_path / "bomb.zip", valid_bag_files(tmp_path), bomb)
    assert archive.stat().st_size < MiB
    limits = ExtractLimits(max_bytes=16 * MiB)
    with pytest.raises(UnsafeArchive, match="more than the limit of 16777216"):
        safe_extract(archive, tmp_path / "out", limits)
    assert not (tmp_path / "out").exists()  # refused from the headers: nothing written
    before = snapshot(local_node)
    with pytest.raises(UnsafeArchive):
        import_bag(local_node, archive, "lab", "bomb", limits=limits)
    assert snapshot(local_node) == before


def test_tar_gz_bomb_refused(tmp_path: Path) -> None:
    def bomb(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(f"{BAG}/data/zeros.bin")
        info.size = 64 * MiB
        tar.addfile(info, io.BytesIO(bytes(info.size)))

    archive = make_tar(tmp_path / "bomb.tar.gz", {}, bomb, "w:gz")
    with pytest.raises(UnsafeArchive, match="would expand to 67108864 bytes"):
        safe_extract(archive, tmp_path / "out", ExtractLimits(max_bytes=16 * MiB))
    assert not (tmp_path / "out").exists()


def test_a_header_that_lies_about_its_size_is_caught(tmp_path: Path) -> None:
    """A zip whose headers claim 1,000 bytes for 4 MiB of zeros: the check passes, the write
    does not (the bytes and their CRC do not add up), and the partial output is the caller's
    temporary folder to remove."""
    archive = make_zip(tmp_path / "liar.zip", {}, zip_member("zeros.bin", bytes(4 * MiB)))
    raw = bytearray(archive.read_bytes())
    local, central = raw.find(b"PK\x03\x04"), raw.find(b"PK\x01\x02")
    struct.pack_into("<I", raw, local + 22, 1000)
    struct.pack_into("<I", raw, central + 24, 1000)
    archive.write_bytes(bytes(raw))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(UnsafeArchive) as refused:
        safe_extract(archive, out, ExtractLimits(max_bytes=MiB))
    assert "corrupt" in refused.value.reasons[0] or "declares" in refused.value.reasons[0]
    assert sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) <= 1000


def test_too_many_members(local_node: ArchiveNode, tmp_path: Path) -> None:
    def crowd(zf: zipfile.ZipFile) -> None:
        for i in range(50):
            zf.writestr(f"{BAG}/data/f{i}", b"")

    archive = make_zip(tmp_path / "crowd.zip", valid_bag_files(tmp_path), crowd)
    before = snapshot(local_node)
    with pytest.raises(UnsafeArchive, match="more than the limit of 20"):
        import_bag(local_node, archive, "lab", "crowd", limits=ExtractLimits(max_files=20))
    assert snapshot(local_node) == before
    assert list((local_node.settings.data_dir / "tmp").iterdir()) == []


def test_not_an_archive(local_node: ArchiveNode, tmp_path: Path) -> None:
    junk = tmp_path / "junk.zip"
    junk.write_bytes(os.urandom(4096))
    refuse(local_node, junk, "not a zip or tar archive")


def test_extracted_files_are_private_and_plain(tmp_path: Path) -> None:
    def exec_bit(zf: zipfile.ZipFile) -> None:
        info = zipfile.ZipInfo(f"{BAG}/setuid")
        info.external_attr = (stat.S_IFREG | 0o4755) << 16
        zf.writestr(info, b"#!/bin/sh\n")

    archive = make_zip(tmp_path / "b.zip", {"a": b"a"}, exec_bit)
    out = tmp_path / "out"
    out.mkdir()
    report = safe_extract(archive, out)
    assert report.files == 2 and report.bytes == 11
    assert stat.S_IMODE((out / BAG / "setuid").stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("./a/b", "a/b"), ("a//b/", "a/b"), ("a/./b", "a/b"), (".", "")],
)
def test_member_path_normalisation(raw: str, expected: str) -> None:
    assert member_path(raw) == expected
