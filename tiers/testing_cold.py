"""The conformance suite of cold tiers: Glacier's contract, beside :mod:`tiers.testing`.

A cold backend's test module subclasses :class:`ColdTierConformance` and provides a
``cold_tier`` fixture: a fresh, empty :class:`~tiers.base.ColdTier` whose restores
complete at once or within :attr:`ColdTierConformance.restore_timeout`::

    class TestLocalColdContract(ColdTierConformance):
        @pytest.fixture
        def cold_tier(self, tmp_path: Path) -> Iterator[ColdTier]:
            yield LocalColdTier("cold", tmp_path, fsync=False)

What every cold tier must do, as S3 Glacier does (``RestoreObject``, ``HeadObject``'s
``x-amz-restore``): writes, ``stat``, ``exists``, ``list`` and ``delete`` need no
restore; ``open`` refuses an object until it is restored, with
:class:`~tiers.errors.NeedsRestore` saying so; a restore is idempotent and makes
the very bytes written readable, whole and by range.
"""

from __future__ import annotations

import datetime as dt
import io
import random
import time

import pytest

from tiers.base import ColdTier, RestoreState, restore_status_of
from tiers.errors import InvalidKey, NeedsRestore, ObjectNotFound

__all__ = ["ColdTierConformance"]


def _read(tier: ColdTier, key: str, offset: int = 0, length: int | None = None) -> bytes:
    with tier.open(key, offset=offset, length=length) as stream:
        return stream.read()


class ColdTierConformance:
    """Tests every cold backend must pass. Subclasses provide the ``cold_tier`` fixture."""

    restore_timeout: float = 10.0
    """Longest a restore of the test configuration may take to become ready."""

    def wait_until_ready(self, tier: ColdTier, key: str) -> RestoreState:
        deadline = time.monotonic() + self.restore_timeout
        while (state := tier.restore_status(key)).status != "ready":
            assert state.status == "in-progress", f"{key}: restore went to {state}"
            assert time.monotonic() < deadline, f"{key}: not ready in {self.restore_timeout} s"
            time.sleep(0.05)
        return state

    def test_is_a_cold_tier(self, cold_tier: ColdTier) -> None:
        assert isinstance(cold_tier, ColdTier)
        assert cold_tier.capabilities.needs_restore
        assert cold_tier.restore_days >= 1
        options = cold_tier.retrieval_options()
        speeds = [option.speed for option in options]
        assert "standard" in speeds
        assert len(set(speeds)) == len(speeds)
        delays = [option.typical_delay for option in options]
        assert delays == sorted(delays), "fastest first"
        assert all(option.price_per_gib >= 0 for option in options)
        assert all(delay >= dt.timedelta(0) for delay in delays)

    def test_writes_and_metadata_need_no_restore(self, cold_tier: ColdTier) -> None:
        data = random.randbytes(1000)
        info = cold_tier.put("blobs/cold/one", io.BytesIO(data))
        assert (info.key, info.size) == ("blobs/cold/one", 1000)
        assert cold_tier.stat("blobs/cold/one").size == 1000
        assert cold_tier.exists("blobs/cold/one")
        assert [i.key for i in cold_tier.list("blobs/")] == ["blobs/cold/one"]
        assert cold_tier.restore_status("blobs/cold/one") == RestoreState("not-started")
        cold_tier.delete("blobs/cold/one")
        assert not cold_tier.exists("blobs/cold/one")
        assert list(cold_tier.list()) == []

    @pytest.mark.parametrize(("offset", "length"), [(0, None), (0, 0), (10, 5), (5000, None)])
    def test_open_before_restore_is_refused(
        self, cold_tier: ColdTier, offset: int, length: int | None
    ) -> None:
        cold_tier.put("k", io.BytesIO(random.randbytes(1000)))
        with pytest.raises(NeedsRestore) as caught:
            cold_tier.open("k", offset=offset, length=length)
        error = caught.value
        assert (error.key, error.tier, error.status) == ("k", cold_tier.name, "not-started")
        assert not error.retryable
        assert "restore" in str(error)

    def test_restore_then_read_the_same_bytes(self, cold_tier: ColdTier) -> None:
        data = random.randbytes(3000)
        cold_tier.put("packs/p.tar", io.BytesIO(data))
        before = dt.datetime.now(dt.UTC)
        state = cold_tier.restore("packs/p.tar", days=2)
        assert state.status in ("in-progress", "ready")
        ready = self.wait_until_ready(cold_tier, "packs/p.tar")
        assert ready.readable
        if ready.expires_at is not None:  # x-amz-restore's expiry-date has whole seconds
            assert ready.expires_at > before + dt.timedelta(days=2, seconds=-1)
        assert _read(cold_tier, "packs/p.tar") == data
        assert _read(cold_tier, "packs/p.tar", 1000, 10) == data[1000:1010]
        assert _read(cold_tier, "packs/p.tar", 2995) == data[2995:]
        assert _read(cold_tier, "packs/p.tar", 0, 0) == b""
        assert restore_status_of(cold_tier, "packs/p.tar").status == "ready"

    def test_restore_is_idempotent(self, cold_tier: ColdTier) -> None:
        data = random.randbytes(500)
        cold_tier.put("k", io.BytesIO(data))
        first = cold_tier.restore("k", days=1)
        second = cold_tier.restore("k", days=1)
        assert second.status in ("in-progress", "ready")
        assert first.status != "ready" or second.status == "ready"
        ready = self.wait_until_ready(cold_tier, "k")
        again = cold_tier.restore("k", days=1)
        assert again.status == "ready"
        if ready.expires_at is not None:
            assert again.expires_at is not None and again.expires_at >= ready.expires_at
        longer = cold_tier.restore("k", days=30)
        assert longer.expires_at is not None
        assert longer.expires_at >= dt.datetime.now(dt.UTC) + dt.timedelta(days=29)
        assert _read(cold_tier, "k") == data

    def test_missing_key(self, cold_tier: ColdTier) -> None:
        cold_tier.put("present/x", io.BytesIO(b"x"))
        for missing in ("absent", "present/y", "present"):
            with pytest.raises(ObjectNotFound):
                cold_tier.restore(missing, days=1)
            with pytest.raises(ObjectNotFound):
                cold_tier.restore_status(missing)
            with pytest.raises(ObjectNotFound):
                cold_tier.open(missing)

    def test_bad_requests_are_refused(self, cold_tier: ColdTier) -> None:
        cold_tier.put("k", io.BytesIO(b"x"))
        with pytest.raises(ValueError, match="speed"):
            cold_tier.restore("k", days=1, speed="ludicrous")
        with pytest.raises(ValueError, match="day"):
            cold_tier.restore("k", days=0)
        with pytest.raises(InvalidKey):
            cold_tier.restore("../k", days=1)
        with pytest.raises(InvalidKey):
            cold_tier.restore_status("/k")
        assert cold_tier.restore_status("k").status == "not-started"

    def test_a_new_object_under_a_restored_key_starts_unrestored(self, cold_tier: ColdTier) -> None:
        cold_tier.put("k", io.BytesIO(b"old"))
        cold_tier.restore("k", days=1)
        self.wait_until_ready(cold_tier, "k")
        cold_tier.delete("k")
        cold_tier.put("k", io.BytesIO(b"new"))
        assert cold_tier.restore_status("k").status == "not-started"
        with pytest.raises(NeedsRestore):
            _read(cold_tier, "k")
        cold_tier.restore("k", days=1)
        self.wait_until_ready(cold_tier, "k")
        assert _read(cold_tier, "k") == b"new"

    def test_a_replaced_object_starts_unrestored(self, cold_tier: ColdTier) -> None:
        """Repair's ``promote(replace=True)`` makes a new object, as S3 does."""
        cold_tier.put("k", io.BytesIO(b"damaged"))
        cold_tier.restore("k", days=1)
        self.wait_until_ready(cold_tier, "k")
        with cold_tier.begin_put() as upload:
            upload.write(b"repaired")
            assert upload.promote("k", replace=True).size == len(b"repaired")
        assert cold_tier.restore_status("k").status == "not-started"
        with pytest.raises(NeedsRestore):
            _read(cold_tier, "k")
        cold_tier.restore("k", days=1)
        self.wait_until_ready(cold_tier, "k")
        assert _read(cold_tier, "k") == b"repaired"
