"""The conformance suite every tier passes (STYLE principle 7, after restic's backend tests).

A backend's test module subclasses :class:`TierConformance`, provides a ``tier``
fixture and, where it stages bytes somewhere the tier's own :meth:`~tiers.base.Tier.list`
cannot see, overrides :meth:`TierConformance.staged_leftovers`::

    class TestLocalTier(TierConformance):
        @pytest.fixture
        def tier(self, tmp_path: Path) -> Iterator[Tier]:
            tier = LocalTier("test", tmp_path / "tier", fsync=False)
            yield tier
            tier.close()

        def staged_leftovers(self, tier: Tier) -> list[str]:
            assert isinstance(tier, LocalTier)
            return os.listdir(tier.staging)

The suite pins the contract of :mod:`tiers.base` down to bytes: ranges are cut at
the end of the object as HTTP ranges are, keys are write-once, a digest mismatch or
an abort leaves no trace, and a 100 MiB object moves through in flat memory.
"""

from __future__ import annotations

import datetime as dt
import io
import random
import resource
import threading
import tracemalloc
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import blake3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tiers.base import CHUNK_SIZE, ObjectInfo, Tier, TierCapabilities
from tiers.errors import DigestMismatch, InvalidKey, ObjectExists, ObjectNotFound

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = ["TierConformance"]

MiB = 1024 * 1024
SIZES = ["small", "large"]
INVALID_KEYS = ["", "/abs", "../up", "a/../b", "a//b", "a/./b", "a/", "a\\b", "a\x00b", "a\nb"]
INVALID_KEYS += [".staging/x", ".staging", ".restore/x", ".restore"]
#: (offset, length) over a 1000-byte object: start, middle, end, across and past the end.
RANGES_OF_1000 = [(0, 10), (0, None), (500, 100), (990, None), (995, 100), (1000, None)]
RANGES_OF_1000 += [(1000, 10), (5000, None), (5000, 3), (10, 0), (0, 1000), (999, 1)]


def b3(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def put_bytes(tier: Tier, key: str, data: bytes, expect_b3: str | None = None) -> ObjectInfo:
    return tier.put(key, io.BytesIO(data), expect_b3=expect_b3)


def read(tier: Tier, key: str, offset: int = 0, length: int | None = None) -> bytes:
    with tier.open(key, offset=offset, length=length) as stream:
        return stream.read()


def keys(tier: Tier, prefix: str = "") -> list[str]:
    return [info.key for info in tier.list(prefix)]


def pattern_chunks(size: int, chunk: int = 1 * MiB) -> Iterator[bytes]:
    """``size`` incompressible bytes, made chunk by chunk (BLAKE3 in XOF mode) so the
    whole never exists in memory."""
    for index, start in enumerate(range(0, size, chunk)):
        yield blake3.blake3(index.to_bytes(8, "big")).digest(length=min(chunk, size - start))


class ChunkStream(io.RawIOBase):
    """An iterator of chunks as a readable binary stream (a generator-like source)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = memoryview(chunk)
        count = min(len(view), len(self._pending))
        view[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count


class TierConformance:
    """Tests every backend must pass. Subclasses provide the ``tier`` fixture."""

    large_object_size: int = 12 * MiB
    """Above the backend's multipart or buffering threshold in its test configuration."""
    stream_object_size: int = 100 * MiB
    stream_memory_limit: int = 40 * MiB
    """Most a 100 MiB put or read may grow the Python heap or the peak RSS by."""
    lists_in_byte_order: bool = True
    """Keys are listed in code point (UTF-8 byte) order, as S3 specifies. A store that
    walks folders (SeaweedFS) lists ``a/b`` before ``a-c``; its subclass sets this to
    False and the suite checks segment-by-segment order instead."""

    def staged_leftovers(self, tier: Tier) -> list[str]:
        """Staged bytes the backend still holds outside what ``list`` shows (override)."""
        return []

    def assert_empty(self, tier: Tier) -> None:
        assert keys(tier) == []
        assert self.staged_leftovers(tier) == []

    def payload(self, size: str) -> bytes:
        return random.randbytes(self.large_object_size if size == "large" else 1000)

    # Reading and writing

    def test_is_a_tier(self, tier: Tier) -> None:
        assert isinstance(tier, Tier)
        assert isinstance(tier.capabilities, TierCapabilities)

    def test_put_then_read_back(self, tier: Tier) -> None:
        data = random.randbytes(1000)
        info = put_bytes(tier, "blobs/b3/ab/cd/one", data)
        assert (info.key, info.size, info.b3) == ("blobs/b3/ab/cd/one", 1000, b3(data))
        assert read(tier, "blobs/b3/ab/cd/one") == data

    def test_read_in_small_pieces(self, tier: Tier) -> None:
        data = random.randbytes(1000)
        put_bytes(tier, "k", data)
        pieces = []
        with tier.open("k", offset=3) as stream:
            while piece := stream.read(7):
                pieces.append(piece)
        assert b"".join(pieces) == data[3:]

    @pytest.mark.parametrize(("offset", "length"), RANGES_OF_1000)
    def test_ranged_read(self, tier: Tier, offset: int, length: int | None) -> None:
        data = random.randbytes(1000)
        put_bytes(tier, "ranged", data)
        end = None if length is None else offset + length
        assert read(tier, "ranged", offset, length) == data[offset:end]

    def test_negative_range_is_refused(self, tier: Tier) -> None:
        put_bytes(tier, "k", b"abc")
        with pytest.raises(ValueError, match="negative"):
            tier.open("k", offset=-1)
        with pytest.raises(ValueError, match="negative"):
            tier.open("k", length=-1)

    @settings(
        max_examples=20,
        deadline=None,
        database=None,  # examples depend on the backend: nothing to replay across them
        # One fresh key per example, so the shared tier fixture is harmless; each
        # backend's subclass runs this inherited method, hence the "executors".
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.differing_executors,
        ],
    )
    @given(
        data=st.binary(max_size=3000),
        ranges=st.lists(
            st.tuples(st.integers(0, 3200), st.none() | st.integers(0, 3200)),
            min_size=1,
            max_size=4,
        ),
    )
    def test_any_range_reads_the_slice(
        self, tier: Tier, data: bytes, ranges: list[tuple[int, int | None]]
    ) -> None:
        key = f"property/{uuid.uuid4().hex}"
        assert put_bytes(tier, key, data).b3 == b3(data)
        for offset, length in ranges:
            end = None if length is None else offset + length
            assert read(tier, key, offset, length) == data[offset:end]

    def test_stat_and_exists(self, tier: Tier) -> None:
        put_bytes(tier, "manifests/ds/v1.json", b"{}\n")
        info = tier.stat("manifests/ds/v1.json")
        assert (info.key, info.size) == ("manifests/ds/v1.json", 3)
        assert info.modified is None or info.modified.tzinfo is not None
        assert tier.exists("manifests/ds/v1.json")
        assert not tier.exists("manifests/ds/v2.json")
        assert not tier.exists("manifests/ds")

    def test_missing_key(self, tier: Tier) -> None:
        put_bytes(tier, "present/x", b"x")
        for missing in ("absent", "present/y", "present"):
            with pytest.raises(ObjectNotFound):
                tier.stat(missing)
            with pytest.raises(ObjectNotFound):
                read(tier, missing)
            with pytest.raises(ObjectNotFound):
                read(tier, missing, 1, 5)
            with pytest.raises(ObjectNotFound):
                read(tier, missing, 0, 0)

    def test_zero_byte_object(self, tier: Tier) -> None:
        info = put_bytes(tier, "empty", b"")
        assert (info.size, info.b3) == (0, b3(b""))
        assert tier.stat("empty").size == 0
        assert read(tier, "empty") == b""
        assert read(tier, "empty", 0, 5) == b""
        assert read(tier, "empty", 3) == b""
        assert keys(tier) == ["empty"]

    def test_large_object(self, tier: Tier) -> None:
        data = self.payload("large")
        with tier.begin_put() as upload:
            for start in range(0, len(data), MiB):
                upload.write(data[start : start + MiB])
            info = upload.promote("packs/large.tar", expect_b3=b3(data))
        assert (info.size, info.b3) == (len(data), b3(data))
        assert tier.stat("packs/large.tar").size == len(data)
        assert read(tier, "packs/large.tar") == data
        assert read(tier, "packs/large.tar", 6 * MiB - 3, 10) == data[6 * MiB - 3 : 6 * MiB + 7]
        assert self.staged_leftovers(tier) == []

    def test_unusual_but_valid_keys(self, tier: Tier) -> None:
        names = ["manifests/x y/v1.json", "packs/é+=~,;@!.tar", "a-b/c_d/.hidden"]
        for name in names:
            put_bytes(tier, name, name.encode())
        assert keys(tier) == sorted(names)
        for name in names:
            assert read(tier, name) == name.encode()

    @pytest.mark.parametrize("key", INVALID_KEYS)
    def test_invalid_key_is_refused(self, tier: Tier, key: str) -> None:
        with pytest.raises(InvalidKey):
            put_bytes(tier, key, b"x")
        with tier.begin_put() as upload:
            upload.write(b"x")
            with pytest.raises(InvalidKey):
                upload.promote(key)
        for call in (tier.stat, tier.delete, tier.open):
            with pytest.raises(InvalidKey):
                call(key)
        self.assert_empty(tier)

    # Listing and deleting

    def in_list_order(self, names: list[str]) -> list[str]:
        if self.lists_in_byte_order:
            return sorted(names)
        return sorted(names, key=lambda name: name.split("/"))

    def test_list_in_key_order_and_by_prefix(self, tier: Tier) -> None:
        names = ["a/b", "a/c/d", "a-c", "ab", "b/x", "a/c/e", "a.b", "a0"]
        for name in random.sample(names, len(names)):
            put_bytes(tier, name, name.encode())
        ordered = self.in_list_order(names)
        assert keys(tier) == ordered
        assert [info.size for info in tier.list()] == [len(name) for name in ordered]
        assert keys(tier, "a") == [name for name in ordered if name.startswith("a")]
        assert keys(tier, "a/") == ["a/b", "a/c/d", "a/c/e"]
        assert keys(tier, "a/c") == ["a/c/d", "a/c/e"]
        assert keys(tier, "a/c/d") == ["a/c/d"]
        assert keys(tier, "b/") == ["b/x"]
        assert keys(tier, "zzz") == []
        assert keys(tier, "zzz/") == []

    def test_list_never_shows_staged_bytes(self, tier: Tier) -> None:
        put_bytes(tier, "kept", b"k")
        with tier.begin_put() as upload:
            upload.write(self.payload("large"))
            assert keys(tier) == ["kept"]
            assert keys(tier, ".") == []
            upload.abort()

    def test_sweep_removes_only_abandoned_staging(self, tier: Tier) -> None:
        put_bytes(tier, "kept/one", b"kept")
        abandoned = tier.begin_put()  # a crash: written, never promoted nor aborted
        abandoned.write(self.payload("large"))
        now = dt.datetime.now(dt.UTC)
        assert tier.sweep_staging(now - dt.timedelta(hours=1)) == 0  # young: left alone
        staged = self.staged_leftovers(tier)
        assert tier.sweep_staging(now + dt.timedelta(minutes=5)) == len(staged)
        assert self.staged_leftovers(tier) == []
        assert read(tier, "kept/one") == b"kept"
        assert keys(tier) == ["kept/one"]
        abandoned.abort()  # what the crashed writer would have done: still harmless

    def test_delete_is_idempotent(self, tier: Tier) -> None:
        put_bytes(tier, "d/one", b"1")
        put_bytes(tier, "d/two", b"2")
        tier.delete("d/one")
        tier.delete("d/one")
        tier.delete("never/was")
        assert not tier.exists("d/one")
        assert keys(tier) == ["d/two"]
        put_bytes(tier, "d/one", b"again")  # a deleted key can be written again
        assert read(tier, "d/one") == b"again"

    # Write-once, digests, staging

    def test_write_once(self, tier: Tier) -> None:
        put_bytes(tier, "once", b"first")
        with pytest.raises(ObjectExists):
            put_bytes(tier, "once", b"second")
        with tier.begin_put() as upload:
            upload.write(b"third")
            with pytest.raises(ObjectExists):
                upload.promote("once")
        assert read(tier, "once") == b"first"
        assert keys(tier) == ["once"]
        assert self.staged_leftovers(tier) == []

    @pytest.mark.parametrize("size", SIZES)
    def test_replace_swaps_in_proven_bytes(self, tier: Tier, size: str) -> None:
        """Repair's promote: the damaged object is swapped for the proven bytes in one
        step; a digest mismatch leaves the old object as it was."""
        damaged, good = self.payload(size), self.payload(size)
        put_bytes(tier, "packs/p.tar", damaged)
        with tier.begin_put() as upload:
            upload.write(b"not the proven bytes")
            with pytest.raises(DigestMismatch):
                upload.promote("packs/p.tar", expect_b3=b3(good), replace=True)
        assert read(tier, "packs/p.tar") == damaged
        with tier.begin_put() as upload:
            upload.write(good)
            info = upload.promote("packs/p.tar", expect_b3=b3(good), replace=True)
        assert info.size == len(good)
        assert read(tier, "packs/p.tar") == good
        with tier.begin_put() as upload:  # replace of an absent key simply creates it
            upload.write(good)
            upload.promote("packs/q.tar", expect_b3=b3(good), replace=True)
        assert read(tier, "packs/q.tar") == good
        assert keys(tier, "packs/") == ["packs/p.tar", "packs/q.tar"]
        assert self.staged_leftovers(tier) == []

    @pytest.mark.parametrize("size", SIZES)
    def test_digest_mismatch_promotes_nothing(self, tier: Tier, size: str) -> None:
        data = self.payload(size)
        wrong = b3(b"something else")
        with tier.begin_put() as upload:
            upload.write(data)
            with pytest.raises(DigestMismatch) as caught:
                upload.promote("blobs/b3/00/00/bad", expect_b3=wrong)
        error = caught.value
        assert (error.key, error.algorithm) == ("blobs/b3/00/00/bad", "blake3")
        assert (error.expected, error.found) == (wrong, b3(data))
        assert not tier.exists("blobs/b3/00/00/bad")
        self.assert_empty(tier)

    def test_put_checks_the_digest(self, tier: Tier) -> None:
        data = random.randbytes(5000)
        with pytest.raises(DigestMismatch):
            put_bytes(tier, "checked", data, expect_b3=b3(data + b"!"))
        self.assert_empty(tier)
        assert put_bytes(tier, "checked", data, expect_b3=b3(data).upper()).b3 == b3(data)
        assert read(tier, "checked") == data

    def test_upload_reports_size_and_digest(self, tier: Tier) -> None:
        with tier.begin_put() as upload:
            assert (upload.size, upload.b3) == (0, b3(b""))
            upload.write(b"hello ")
            upload.write(memoryview(b"world"))
            assert (upload.size, upload.b3) == (11, b3(b"hello world"))
            info = upload.promote("hello")
        assert read(tier, "hello") == b"hello world"
        assert info.b3 == b3(b"hello world")

    def test_upload_is_final_after_promote(self, tier: Tier) -> None:
        upload = tier.begin_put()
        upload.write(b"x")
        upload.promote("final")
        with pytest.raises(ValueError, match="promoted or aborted"):
            upload.write(b"y")
        with pytest.raises(ValueError, match="promoted or aborted"):
            upload.promote("final-2")
        upload.abort()  # harmless
        assert read(tier, "final") == b"x"

    @pytest.mark.parametrize("size", SIZES)
    def test_abort_leaves_nothing(self, tier: Tier, size: str) -> None:
        upload = tier.begin_put()
        upload.write(self.payload(size))
        upload.abort()
        upload.abort()
        self.assert_empty(tier)

    @pytest.mark.parametrize("size", SIZES)
    def test_failure_inside_upload_block_leaves_nothing(self, tier: Tier, size: str) -> None:
        def write_then_fail() -> None:
            with tier.begin_put() as upload:
                upload.write(self.payload(size))
                raise RuntimeError("source broke")

        with pytest.raises(RuntimeError, match="source broke"):
            write_then_fail()
        self.assert_empty(tier)

    def test_concurrent_promotes_of_one_key(self, tier: Tier) -> None:
        for round_number in range(5):
            key = f"race/{round_number}"
            contenders = {"a": random.randbytes(3000), "b": random.randbytes(3000)}
            barrier = threading.Barrier(len(contenders))

            def promote(data: bytes, key: str = key, barrier: threading.Barrier = barrier) -> str:
                with tier.begin_put() as upload:
                    upload.write(data)
                    barrier.wait(timeout=30)
                    try:
                        upload.promote(key)
                    except ObjectExists:
                        return "lost"
                    return "won"

            with ThreadPoolExecutor(max_workers=len(contenders)) as pool:
                futures = {name: pool.submit(promote, data) for name, data in contenders.items()}
                outcome = {name: future.result() for name, future in futures.items()}
            assert sorted(outcome.values()) == ["lost", "won"]
            winner = next(name for name, result in outcome.items() if result == "won")
            assert read(tier, key) == contenders[winner]
        assert keys(tier) == [f"race/{n}" for n in range(5)]
        assert self.staged_leftovers(tier) == []

    # Memory

    def test_streams_a_large_object_in_flat_memory(self, tier: Tier) -> None:
        size, limit = self.stream_object_size, self.stream_memory_limit
        expected = blake3.blake3()
        for chunk in pattern_chunks(size):
            expected.update(chunk)
        source = io.BufferedReader(ChunkStream(pattern_chunks(size)))
        with _MemoryWatch() as write_watch:
            info = tier.put("big/stream", source, expect_b3=expected.hexdigest())
        assert (info.size, info.b3) == (size, expected.hexdigest())
        hasher, total = blake3.blake3(), 0
        with _MemoryWatch() as read_watch, tier.open("big/stream") as stream:
            while chunk := stream.read(CHUNK_SIZE):
                hasher.update(chunk)
                total += len(chunk)
        assert (total, hasher.hexdigest()) == (size, expected.hexdigest())
        for direction, watch in (("write", write_watch), ("read", read_watch)):
            assert watch.heap_growth < limit, f"{direction}: heap grew {watch.heap_growth} B"
            assert watch.rss_growth < limit, f"{direction}: peak RSS grew {watch.rss_growth} B"


class _MemoryWatch:
    """Peak growth of the Python heap (tracemalloc) and of the process's peak RSS.

    tracemalloc sees every Python buffer, the usual way to hold a whole object by
    mistake; ``ru_maxrss`` catches native buffers too, but only beyond the process's
    earlier peak, so it is the weaker of the two.
    """

    heap_growth = 0
    rss_growth = 0

    def __enter__(self) -> _MemoryWatch:
        self._started = not tracemalloc.is_tracing()
        if self._started:
            tracemalloc.start()
        tracemalloc.reset_peak()
        self._heap = tracemalloc.get_traced_memory()[0]
        self._rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        return self

    def __exit__(self, *exc: object) -> None:
        self.heap_growth = tracemalloc.get_traced_memory()[1] - self._heap
        self.rss_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - self._rss
        if self._started:
            tracemalloc.stop()
