"""LocalTier: the conformance suite, plus what only a folder can get wrong."""

from __future__ import annotations

import errno
import io
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import blake3
import pytest

from archive.config import LocalTierConfig
from tiers import open_tier
from tiers.base import Tier
from tiers.errors import InvalidKey, TierConfigError, TierError
from tiers.local import LocalTier
from tiers.testing import TierConformance


class TestLocalTier(TierConformance):
    @pytest.fixture
    def tier(self, tmp_path: Path) -> Iterator[LocalTier]:
        tier = LocalTier("local-test", tmp_path / "tier")
        yield tier
        tier.close()

    def staged_leftovers(self, tier: Tier) -> list[str]:
        assert isinstance(tier, LocalTier)
        return sorted(os.listdir(tier.staging))


def test_objects_are_plain_files_named_by_key(tmp_path: Path) -> None:
    tier = LocalTier("t", tmp_path)
    data = b"some blob"
    digest = blake3.blake3(data).hexdigest()
    key = f"blobs/b3/{digest[:2]}/{digest[2:4]}/{digest}"
    tier.put(key, io.BytesIO(data), expect_b3=digest)
    stored = tmp_path / "blobs" / "b3" / digest[:2] / digest[2:4] / digest
    assert stored.read_bytes() == data
    assert blake3.blake3(stored.read_bytes()).hexdigest() == stored.name  # b3sum-checkable
    assert sorted(os.listdir(tmp_path)) == [".staging", "blobs"]


def test_open_tier_builds_it_from_the_config(tmp_path: Path) -> None:
    config = LocalTierConfig(path=tmp_path / "hot", fsync=False)
    tier = open_tier("hot", "local", **config.backend_settings())
    assert isinstance(tier, LocalTier)
    assert (tier.name, tier.root, tier.fsync) == ("hot", tmp_path / "hot", False)


@pytest.fixture
def fsynced(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every path ``os.fsync`` is called on (resolved through /proc/self/fd)."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc/self/fd to name fsynced files")
    calls: list[Path] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        calls.append(Path(os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    return calls


def test_fsync_covers_file_new_folders_and_their_parents(
    tmp_path: Path, fsynced: list[Path]
) -> None:
    tier = LocalTier("t", tmp_path)
    tier.put("x/y/one", io.BytesIO(b"1"))
    staged, *folders = fsynced
    assert staged.parent == tmp_path / ".staging"
    assert sorted(folders) == [tmp_path, tmp_path / "x", tmp_path / "x" / "y"]

    fsynced.clear()
    tier.put("x/y/two", io.BytesIO(b"2"))  # folders exist: the file and its folder only
    assert fsynced[1:] == [tmp_path / "x" / "y"]

    fsynced.clear()
    tier.delete("x/y/one")
    assert fsynced == [tmp_path / "x" / "y"]


def test_fsync_off_means_no_fsync(tmp_path: Path, fsynced: list[Path]) -> None:
    tier = LocalTier("t", tmp_path, fsync=False)
    tier.put("x/y/one", io.BytesIO(b"1"))
    tier.delete("x/y/one")
    assert fsynced == []


@pytest.mark.parametrize("key", ["../outside", "a/../../outside", "/tmp/outside", "a\\..\\b"])
def test_keys_cannot_escape_the_folder(tmp_path: Path, key: str) -> None:
    tier = LocalTier("t", tmp_path / "tier")
    with pytest.raises(InvalidKey) as caught:
        tier.put(key, io.BytesIO(b"x"))
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, TierError)
    assert sorted(os.listdir(tmp_path)) == ["tier"]
    assert os.listdir(tmp_path / "tier" / ".staging") == []


def test_a_key_below_an_object_is_refused_clearly(tmp_path: Path) -> None:
    tier = LocalTier("t", tmp_path)
    tier.put("a", io.BytesIO(b"1"))
    with pytest.raises(TierError, match="'a' is an object"):
        tier.put("a/b", io.BytesIO(b"2"))
    assert os.listdir(tmp_path / ".staging") == []


def test_crash_leftovers_in_staging_are_never_listed(tmp_path: Path) -> None:
    tier = LocalTier("t", tmp_path)
    (tmp_path / ".staging" / "upload-from-a-crash").write_bytes(b"partial")
    tier.put("k", io.BytesIO(b"1"))
    assert [info.key for info in tier.list()] == ["k"]


def test_a_file_as_root_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(TierConfigError, match="cannot use folder"):
        LocalTier("t", tmp_path / "file")


@pytest.fixture
def make_read_only() -> Iterator[Callable[[Path], None]]:
    """Make folders read-only in a way that holds even for root (who ignores modes)."""
    done: list[Path] = []

    def make(folder: Path) -> None:
        if os.geteuid() != 0:
            folder.chmod(0o555)
        elif shutil.which("chattr"):
            subprocess.run(["chattr", "+i", str(folder)], check=False, capture_output=True)
        done.append(folder)
        try:
            (folder / "probe").mkdir()
        except OSError:
            return
        (folder / "probe").rmdir()
        pytest.skip("cannot make a folder read-only here (root without chattr +i)")

    yield make
    for folder in done:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(folder)], check=False, capture_output=True)
        folder.chmod(0o755)


def test_read_only_folder_gives_a_clear_tier_error(
    tmp_path: Path, make_read_only: Callable[[Path], None]
) -> None:
    tier = LocalTier("t", tmp_path / "tier")
    make_read_only(tmp_path / "tier")
    with pytest.raises(TierError, match="permission denied or read-only") as caught:
        tier.put("blobs/x", io.BytesIO(b"1"))
    assert isinstance(caught.value.__cause__, PermissionError)
    assert not caught.value.retryable
    assert os.listdir(tmp_path / "tier" / ".staging") == []

    (tmp_path / "empty").mkdir()
    make_read_only(tmp_path / "empty")
    with pytest.raises(TierConfigError, match="cannot use folder"):
        LocalTier("t", tmp_path / "empty")


@pytest.mark.parametrize(
    ("code", "reason"),
    [(errno.ENOSPC, "no space left"), (errno.EIO, "I/O error"), (errno.EROFS, "read-only")],
)
def test_os_errors_on_promote_are_translated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, reason: str
) -> None:
    """Disks that fill up or fail cannot be made on demand; inject the errno instead."""
    tier = LocalTier("t", tmp_path)

    def failing_link(source: object, target: object) -> None:
        raise OSError(code, os.strerror(code), str(target))

    monkeypatch.setattr(os, "link", failing_link)
    with pytest.raises(TierError, match=reason) as caught:
        tier.put("k", io.BytesIO(b"1"))
    assert type(caught.value) is TierError
    assert isinstance(caught.value.__cause__, OSError)
    assert caught.value.__cause__.errno == code
    assert os.listdir(tmp_path / ".staging") == []
    assert not tier.exists("k")


def test_no_hard_links_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tier = LocalTier("t", tmp_path)

    def failing_link(source: object, target: object) -> None:
        raise OSError(errno.EPERM, os.strerror(errno.EPERM), str(target))

    monkeypatch.setattr(os, "link", failing_link)
    with pytest.raises(TierConfigError, match="cannot hard-link"):
        tier.put("k", io.BytesIO(b"1"))
