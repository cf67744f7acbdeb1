"""LocalColdTier: both conformance suites, plus delays, expiry and state shared on disk."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path
from typing import BinaryIO

import pytest

from archive.config import LocalColdTierConfig, Settings
from tiers import open_tier
from tiers.base import (
    ColdTier,
    ObjectInfo,
    RestoreState,
    RetrievalOption,
    Tier,
    Upload,
    restore_status_of,
)
from tiers.errors import NeedsRestore, ObjectNotFound, TierConfigError
from tiers.local import LocalTier
from tiers.local_cold import LocalColdTier
from tiers.testing import TierConformance, read
from tiers.testing_cold import ColdTierConformance

DAY = dt.timedelta(days=1)


class RestoringReader:
    """A cold tier as the archive reads it: a restore is asked for before each ``open``.

    Only ``open`` differs, so the general conformance suite runs unchanged against
    the real tier underneath (with no delay, restores are ready at once).
    """

    def __init__(self, tier: LocalColdTier) -> None:
        self.tier = tier
        self.name = tier.name
        self.capabilities = tier.capabilities
        self.restores = 0

    def open(
        self, key: str, *, offset: int = 0, length: int | None = None
    ) -> AbstractContextManager[BinaryIO]:
        self.tier.restore(key, days=1)  # ObjectNotFound, InvalidKey: as open raises them
        self.restores += 1
        return self.tier.open(key, offset=offset, length=length)

    def begin_put(self) -> Upload:
        return self.tier.begin_put()

    def put(self, key: str, source: BinaryIO, *, expect_b3: str | None = None) -> ObjectInfo:
        return self.tier.put(key, source, expect_b3=expect_b3)

    def stat(self, key: str) -> ObjectInfo:
        return self.tier.stat(key)

    def exists(self, key: str) -> bool:
        return self.tier.exists(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self.tier.list(prefix)

    def delete(self, key: str) -> None:
        self.tier.delete(key)

    def sweep_staging(self, older_than: dt.datetime) -> int:
        return self.tier.sweep_staging(older_than)

    def close(self) -> None:
        self.tier.close()


class TestLocalColdTier(TierConformance):
    @pytest.fixture
    def tier(self, tmp_path: Path) -> Iterator[Tier]:
        reader = RestoringReader(LocalColdTier("cold-test", tmp_path / "tier"))
        yield reader
        reader.close()

    def staged_leftovers(self, tier: Tier) -> list[str]:
        assert isinstance(tier, RestoringReader)
        return sorted(os.listdir(tier.tier.staging))


class TestLocalColdContract(ColdTierConformance):
    @pytest.fixture
    def cold_tier(self, tmp_path: Path) -> Iterator[ColdTier]:
        tier = LocalColdTier("cold-test", tmp_path / "tier", fsync=False)
        yield tier
        tier.close()


class FakeClock:
    def __init__(self) -> None:
        self.now = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, delta: dt.timedelta) -> None:
        self.now += delta


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def put(tier: Tier, key: str, data: bytes) -> None:
    tier.put(key, io.BytesIO(data))


def test_the_restore_delay_is_honoured(tmp_path: Path) -> None:
    tier = LocalColdTier("cold", tmp_path, restore_delay_seconds=0.5)
    data = random.randbytes(2000)
    put(tier, "blobs/k", data)
    asked = dt.datetime.now(dt.UTC)
    started = time.monotonic()
    state = tier.restore("blobs/k", days=1)
    assert state.status == "in-progress"
    assert state.ready_at is not None and state.expires_at is None
    assert abs(state.ready_at - (asked + dt.timedelta(seconds=0.5))) < dt.timedelta(seconds=0.1)
    with pytest.raises(NeedsRestore, match="restore in progress") as caught:
        tier.open("blobs/k")
    assert (caught.value.status, caught.value.ready_at) == ("in-progress", state.ready_at)
    while tier.restore_status("blobs/k").status == "in-progress":
        time.sleep(0.02)
    assert time.monotonic() - started >= 0.5
    ready = tier.restore_status("blobs/k")
    assert ready == RestoreState("ready", state.ready_at, state.ready_at + DAY)
    assert read(tier, "blobs/k") == data


def test_a_restore_expires_after_its_days(tmp_path: Path, clock: FakeClock) -> None:
    tier = LocalColdTier("cold", tmp_path, clock=clock)
    put(tier, "k", b"bytes")
    state = tier.restore("k", days=7)
    assert state == RestoreState("ready", clock.now, clock.now + 7 * DAY)
    clock.advance(7 * DAY - dt.timedelta(seconds=1))
    assert read(tier, "k") == b"bytes"
    clock.advance(dt.timedelta(seconds=1))
    assert tier.restore_status("k") == RestoreState("not-started")
    with pytest.raises(NeedsRestore, match="not restored") as caught:
        read(tier, "k")
    assert caught.value.status == "not-started"
    assert tier.restore("k", days=1) == RestoreState("ready", clock.now, clock.now + DAY)
    assert read(tier, "k") == b"bytes"


def test_asking_again_in_progress_changes_nothing(tmp_path: Path, clock: FakeClock) -> None:
    tier = LocalColdTier("cold", tmp_path, restore_delay_seconds=3600, clock=clock)
    put(tier, "k", b"x")
    first = tier.restore("k", days=2)
    assert first == RestoreState("in-progress", ready_at=clock.now + dt.timedelta(hours=1))
    clock.advance(dt.timedelta(minutes=30))
    assert tier.restore("k", days=9) == first  # not pushed back, days not changed
    clock.advance(dt.timedelta(minutes=30))
    assert tier.restore_status("k") == RestoreState("ready", clock.now, clock.now + 2 * DAY)


def test_asking_again_when_ready_extends_and_never_shortens(
    tmp_path: Path, clock: FakeClock
) -> None:
    tier = LocalColdTier("cold", tmp_path, clock=clock)
    put(tier, "k", b"x")
    start = clock.now
    tier.restore("k", days=1)
    clock.advance(dt.timedelta(hours=12))
    assert tier.restore("k", days=3).expires_at == clock.now + 3 * DAY
    assert tier.restore("k", days=1).expires_at == clock.now + 3 * DAY
    assert tier.restore_status("k") == RestoreState("ready", start, clock.now + 3 * DAY)


def test_state_is_shared_by_instances_on_one_folder(tmp_path: Path) -> None:
    writer = LocalColdTier("cold", tmp_path, restore_delay_seconds=3600)
    put(writer, "k", b"shared")
    other = LocalColdTier("cold", tmp_path, restore_delay_seconds=0)
    assert other.restore_status("k").status == "not-started"
    state = writer.restore("k", days=1)
    assert other.restore_status("k") == state  # the state is on disk, not in the instance
    assert other.restore("k", days=1) == state  # in progress: the other's delay does not apply
    with pytest.raises(NeedsRestore):
        read(other, "k")


def test_state_is_shared_with_another_process(tmp_path: Path) -> None:
    tier = LocalColdTier("cold", tmp_path)
    put(tier, "blobs/k", b"across processes")
    script = (
        "import sys; from tiers.local_cold import LocalColdTier; "
        "t = LocalColdTier('cold', sys.argv[1]); print(t.restore('blobs/k', days=3).status)"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parents[2],
    )
    assert done.stdout.strip() == "ready"
    state = tier.restore_status("blobs/k")
    assert state.status == "ready" and state.expires_at is not None
    assert state.expires_at - dt.datetime.now(dt.UTC) > 3 * DAY - dt.timedelta(minutes=1)
    assert read(tier, "blobs/k") == b"across processes"


def test_concurrent_first_requests_agree(tmp_path: Path) -> None:
    tiers = [LocalColdTier("cold", tmp_path, restore_delay_seconds=3600) for _ in range(8)]
    put(tiers[0], "k", b"x")
    barrier = threading.Barrier(len(tiers))

    def ask(tier: LocalColdTier) -> RestoreState:
        barrier.wait(timeout=30)
        return tier.restore("k", days=1)

    with ThreadPoolExecutor(max_workers=len(tiers)) as pool:
        states = list(pool.map(ask, tiers))
    assert {state.status for state in states} == {"in-progress"}
    assert set(states) == {tiers[0].restore_status("k")}  # one request won; all adopted it
    assert os.listdir(tmp_path / ".staging") == []


def test_restore_state_files_sit_beside_the_objects(tmp_path: Path) -> None:
    tier = LocalColdTier("cold", tmp_path, restore_delay_seconds=60)
    put(tier, "blobs/b3/ab/k", b"x")
    put(tier, "blobs/b3/ab/other", b"y")
    state = tier.restore("blobs/b3/ab/k", days=2)
    assert sorted(os.listdir(tmp_path)) == [".restore", ".staging", "blobs"]
    record = json.loads((tmp_path / ".restore" / "blobs" / "b3" / "ab" / "k").read_text())
    assert record["key"] == "blobs/b3/ab/k"
    assert dt.datetime.fromisoformat(record["ready_at"]) == state.ready_at
    assert record["days"] == 2
    assert os.listdir(tmp_path / ".staging") == []
    assert [info.key for info in tier.list()] == ["blobs/b3/ab/k", "blobs/b3/ab/other"]
    assert [info.key for info in tier.list(".")] == []
    tier.delete("blobs/b3/ab/k")
    assert not (tmp_path / ".restore" / "blobs" / "b3" / "ab" / "k").exists()


def test_a_state_left_by_a_crash_does_not_apply_to_a_new_object(tmp_path: Path) -> None:
    """A crash between removing an object and its state leaves the state behind; a new
    object under that key (same bytes: keys are content addresses) starts unrestored."""
    tier = LocalColdTier("cold", tmp_path)
    put(tier, "k", b"same")
    tier.restore("k", days=1)
    left_behind = (tmp_path / ".restore" / "k").read_bytes()
    tier.delete("k")
    time.sleep(0.05)  # a later modification time, also on coarse file system clocks
    put(tier, "k", b"same")
    (tmp_path / ".restore" / "k").write_bytes(left_behind)
    assert tier.restore_status("k") == RestoreState("not-started")
    with pytest.raises(NeedsRestore):
        read(tier, "k")


def test_a_damaged_state_file_reads_as_not_restored(tmp_path: Path) -> None:
    tier = LocalColdTier("cold", tmp_path)
    put(tier, "k", b"x")
    tier.restore("k", days=1)
    (tmp_path / ".restore" / "k").write_text("{not json")
    assert tier.restore_status("k").status == "not-started"
    with pytest.raises(NeedsRestore):
        read(tier, "k")
    assert tier.restore("k", days=1).status == "ready"  # a new request replaces it
    assert read(tier, "k") == b"x"


def test_retrieval_options_come_from_the_settings(tmp_path: Path) -> None:
    tier = LocalColdTier("cold", tmp_path, restore_delay_seconds=90, price_per_gib=0.004)
    (option,) = tier.retrieval_options()
    assert option == RetrievalOption("standard", dt.timedelta(seconds=90), 0.004)
    assert option.cost(10 * 2**30) == pytest.approx(0.04)


@pytest.mark.parametrize(
    "settings",
    [{"restore_delay_seconds": -1}, {"price_per_gib": -0.5}, {"restore_days": 0}],
)
def test_bad_settings_are_a_config_error(tmp_path: Path, settings: dict[str, float]) -> None:
    with pytest.raises(TierConfigError):
        LocalColdTier("cold", tmp_path, **settings)  # type: ignore[arg-type]


def test_open_tier_builds_it_from_the_config(tmp_path: Path) -> None:
    config = LocalColdTierConfig(path=tmp_path / "cold", restore_delay_seconds=2.5, fsync=False)
    assert (config.role, config.restore_days, config.price_per_gib) == ("cold", 7, 0.0)
    tier = open_tier("cold", "local-cold", **config.backend_settings())
    assert isinstance(tier, LocalColdTier)
    assert (tier.name, tier.root, tier.fsync) == ("cold", tmp_path / "cold", False)
    assert (tier.restore_delay, tier.restore_days) == (dt.timedelta(seconds=2.5), 7)


def test_settings_accept_the_local_cold_kind(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        tiers={
            "hot": {"kind": "local", "path": tmp_path / "hot"},
            "cold": {"kind": "local-cold", "path": tmp_path / "cold", "restore_days": 3},
        },
    )
    cold = settings.tiers["cold"]
    assert isinstance(cold, LocalColdTierConfig)
    assert (cold.role, cold.restore_days) == ("cold", 3)
    with pytest.raises(ValueError, match="restore_delay_seconds"):
        LocalColdTierConfig(path=tmp_path, restore_delay_seconds=-1)


def test_hot_tiers_need_no_restore(tmp_path: Path) -> None:
    hot = LocalTier("hot", tmp_path)
    put(hot, "k", b"x")
    assert not isinstance(hot, ColdTier)
    assert restore_status_of(hot, "k") == RestoreState("not-needed")
    assert restore_status_of(hot, "k").readable
    with pytest.raises(ObjectNotFound):
        restore_status_of(hot, "missing")
