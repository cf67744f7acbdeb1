"""Hashing in place: a folder tier hashes a file through a memory map in a helper
process (tiers.mapped), and a helper that dies, of SIGBUS as on a truncated mapped
file, costs a read, never a wrong answer or the caller's life."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
from pathlib import Path

import blake3
import pytest

from tiers import HashingTier, NeedsRestore, ObjectNotFound
from tiers import mapped as mapped_module
from tiers.local import MAPPED_FROM, LocalTier
from tiers.local_cold import LocalColdTier
from tiers.mapped import MappingFailed, hash_mapped
from tiers.testing import put_bytes

LARGE = MAPPED_FROM + 12_345


def digest(data: bytes, key: bytes | None = None) -> str:
    hasher = blake3.blake3(key=key) if key else blake3.blake3()
    hasher.update(data)
    return hasher.hexdigest()


@pytest.fixture(scope="module")
def large() -> bytes:
    return random.randbytes(LARGE)


def idle_helper_pids() -> list[int]:
    return [helper.process.pid for helper in mapped_module._helpers.idle]


def kill_idle_helpers(sig: signal.Signals) -> int:
    """Kill every idle helper with ``sig`` and wait until it is gone; how many there were."""
    helpers = list(mapped_module._helpers.idle)
    for helper in helpers:
        os.kill(helper.process.pid, sig)
        helper.process.wait(timeout=10)
        assert helper.process.returncode == -sig
    return len(helpers)


def test_a_mapped_file_hashes_to_its_blake3_plain_and_keyed(tmp_path: Path, large: bytes) -> None:
    path = tmp_path / "object"
    path.write_bytes(large)
    key = os.urandom(32)
    with path.open("rb") as file:
        assert hash_mapped(file.fileno(), LARGE) == digest(large)
        assert hash_mapped(file.fileno(), LARGE, key=key) == digest(large, key)
        assert digest(large, key) != digest(large)
    assert idle_helper_pids(), "the helper is kept for the next call"


def test_a_file_of_another_size_than_announced_is_not_hashed(tmp_path: Path) -> None:
    path = tmp_path / "object"
    path.write_bytes(b"x" * 1000)
    with path.open("rb") as file, pytest.raises(MappingFailed, match="1000 bytes long, not 2000"):
        hash_mapped(file.fileno(), 2000)


def test_a_helper_killed_by_sigbus_is_reported_and_replaced(
    tmp_path: Path, large: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "object"
    path.write_bytes(large)
    with path.open("rb") as file:
        assert hash_mapped(file.fileno(), LARGE) == digest(large)  # a helper is idle now
        assert kill_idle_helpers(signal.SIGBUS) >= 1
        with (
            caplog.at_level(logging.WARNING, logger="tiers.mapped"),
            pytest.raises(MappingFailed, match="died of SIGBUS"),
        ):
            hash_mapped(file.fileno(), LARGE)
        assert "reading the file instead" in caplog.text
        # A helper that answered before and then died of a signal does not turn mapping off.
        assert hash_mapped(file.fileno(), LARGE) == digest(large)


def test_the_local_tier_reads_the_file_when_its_helper_dies(
    tmp_path: Path, large: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    tier = LocalTier("hot", tmp_path / "tier", fsync=False)
    assert isinstance(tier, HashingTier)
    key = "blobs/large"
    put_bytes(tier, key, large)
    assert tier.hash_object(key) == (digest(large), LARGE)
    killed = kill_idle_helpers(signal.SIGBUS)
    assert killed >= 1
    challenge = os.urandom(32)
    with caplog.at_level(logging.WARNING, logger="tiers.mapped"):
        assert tier.hash_object(key, keyed=challenge) == (digest(large, challenge), LARGE)
    assert "died of SIGBUS; reading the file instead" in caplog.text
    assert not idle_helper_pids()
    assert tier.hash_object(key) == (digest(large), LARGE)
    assert len(idle_helper_pids()) == 1, "the next call started a new helper"


def test_the_local_tier_hashes_small_and_damaged_files_by_what_they_hold(tmp_path: Path) -> None:
    tier = LocalTier("hot", tmp_path / "tier", fsync=False)
    small = b"small object"
    put_bytes(tier, "blobs/small", small)
    assert tier.hash_object("blobs/small") == (digest(small), len(small))
    data = random.randbytes(LARGE)
    put_bytes(tier, "blobs/damaged", data)
    path = tier.root / "blobs" / "damaged"
    damaged = bytearray(data)
    damaged[LARGE // 2] ^= 0x01
    os.chmod(path, 0o644)
    path.write_bytes(bytes(damaged[: LARGE - 7]))
    found = tier.hash_object("blobs/damaged")
    assert found == (digest(bytes(damaged[: LARGE - 7])), LARGE - 7)
    assert found[0] != digest(data)
    with pytest.raises(ObjectNotFound):
        tier.hash_object("blobs/none")


def test_a_cold_object_is_hashed_only_once_restored(tmp_path: Path, large: bytes) -> None:
    tier = LocalColdTier("cold", tmp_path / "cold", fsync=False)
    assert isinstance(tier, HashingTier)
    put_bytes(tier, "blobs/cold", large)
    with pytest.raises(NeedsRestore):
        tier.hash_object("blobs/cold")
    tier.restore("blobs/cold", days=1)
    assert tier.hash_object("blobs/cold") == (digest(large), LARGE)


def test_a_forked_child_starts_helpers_of_its_own(tmp_path: Path, large: bytes) -> None:
    """A child forked while helpers are idle must not talk to its parent's helpers
    (their answers would go to whichever process reads first)."""
    path = tmp_path / "object"
    path.write_bytes(large)
    with path.open("rb") as file:
        assert hash_mapped(file.fileno(), LARGE) == digest(large)
    parents = idle_helper_pids()
    assert parents
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # the child: report its helpers' pids and its digest, then leave at once
        try:
            os.close(read_end)
            inherited = idle_helper_pids()
            with path.open("rb") as file:
                found = hash_mapped(file.fileno(), LARGE)
            mine = idle_helper_pids()
            os.write(write_end, json.dumps([inherited, mine, found]).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        inherited, mine, found = json.loads(pipe.read())
    os.waitpid(child, 0)
    assert inherited == []
    assert found == digest(large)
    assert mine and not set(parents) & set(mine)
    assert idle_helper_pids() == parents, "the parent's helpers are untouched"
