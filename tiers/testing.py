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

A tier that names what it holds by the BLAKE3 of the bytes (a partner node, DESIGN
section 7) sets :attr:`TierConformance.content_addressed`: the suite then writes each
object under the key its bytes name (:meth:`TierConformance.key_for`) instead of a
free name, and every test runs as it does elsewhere. What such a tier cannot do by
construction (free-form names, two different contents under one key) its subclass
lists in :attr:`TierConformance.differences`, each with the reason and the error it
fails with: a strict expected failure, so a difference that goes away turns the run red.
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
from typing import TYPE_CHECKING, ClassVar

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
    content_addressed: bool = False
    """The tier takes only ``blobs/b3/<aa>/<bb>/<BLAKE3 of the bytes>`` (and manifest) keys;
    the tests put each object under the key its bytes name (:meth:`key_for`)."""
    differences: ClassVar[dict[str, tuple[str, type[BaseException]]]] = {}
    """Test name -> (why this tier genuinely behaves otherwise, the error the test fails
    with): each such test is a strict expected failure for the tier."""
    lists_in_byte_order: bool = True
    """Keys are listed in code point (UTF-8 byte) order, as S3 specifies. A store that
    walks folders (SeaweedFS) lists ``a/b`` before ``a-c``; its subclass sets this to
    False and the suite checks segment-by-segment order instead."""

    def staged_leftovers(self, tier: Tier) -> list[str]:
        """Staged bytes the backend still holds outside what ``list`` shows (override)."""
        return []

    def key_for(self, name: str, data: bytes | str) -> str:
        """Where the test stores ``data`` (bytes, or their BLAKE3): ``name``, or on a
        content-addressed tier the blob key its BLAKE3 names."""
        if not self.content_addressed:
            return name
        digest = data if isinstance(data, str) else b3(data)
        return f"blobs/b3/{digest[:2]}/{digest[2:4]}/{digest}"

    @pytest.fixture(autouse=True)
    def _differences(self, request: pytest.FixtureRequest) -> None:
        difference = self.differences.get(request.function.__name__)
        if difference is not None:
            reason, raises = difference
            request.applymarker(pytest.mark.xfail(reason=reason, raises=raises, strict=True))

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
        key = self.key_for("blobs/b3/ab/cd/one", data)
        info = put_bytes(tier, key, data)
        assert (info.key, info.size, info.b3) == (key, 1000, b3(data))
        assert read(tier, key) == data

    def test_read_in_small_pieces(self, tier: Tier) -> None:
        data = random.randbytes(1000)
        key = self.key_for("k", data)
        put_bytes(tier, key, data)
        pieces = []
        with tier.open(key, offset=3) as stream:
            while piece := stream.read(7):
                pieces.append(piece)
        assert b"".join(pieces) == data[3:]

    @pytest.mark.parametrize(("offset", "length"), RANGES_OF_1000)
    def test_ranged_read(self, tier: Tier, offset: int, length: int | None) -> None:
        data = random.randbytes(1000)
        key = self.key_for("ranged", data)
        put_bytes(tier, key, data)
        end = None if length is None else offset + length
        assert read(tier, key, offset, length) == data[offset:end]

    def test_negative_range_is_refused(self, tier: Tier) -> None:
        key = self.key_for("k", b"abc")
        put_bytes(tier, key, b"abc")
        with pytest.raises(ValueError, match="negative"):
            tier.open(key, offset=-1)
        with pytest.raises(ValueError, match="negative"):
            tier.open(key, length=-1)

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
        key = self.key_for(f"property/{uuid.uuid4().hex}", data)
        assert put_bytes(tier, key, data).b3 == b3(data)
        for offset, length in ranges:
            end = None if length is None else offset + length
            assert read(tier, key, offset, length) == data[offset:end]

    def test_stat_and_exists(self, tier: Tier) -> None:
        put_bytes(tier, "manifests/c/ds/v1.json", b"{}\n")
        info = tier.stat("manifests/c/ds/v1.json")
        assert (info.key, info.size) == ("manifests/c/ds/v1.json", 3)
        assert info.modified is None or info.modified.tzinfo is not None
        assert tier.exists("manifests/c/ds/v1.json")
        assert not tier.exists("manifests/c/ds/v2.json")
        assert not tier.exists(self.key_for("blobs/b3/00/00/x", b"not stored"))
        if not self.content_addressed:  # a folder, not an object (no such key there)
            assert not tier.exists("manifests/c/ds")

    def test_missing_key(self, tier: Tier) -> None:
        put_bytes(tier, self.key_for("present/x", b"x"), b"x")
        missing = [self.key_for("absent", b"absent"), self.key_for("present/y", b"y")]
        if not self.content_addressed:  # a folder, not an object (no such key there)
            missing.append("present")
        for missing_key in missing:
            with pytest.raises(ObjectNotFound):
                tier.stat(missing_key)
            with pytest.raises(ObjectNotFound):
                read(tier, missing_key)
            with pytest.raises(ObjectNotFound):
                read(tier, missing_key, 1, 5)
            with pytest.raises(ObjectNotFound):
                read(tier, missing_key, 0, 0)

    def test_zero_byte_object(self, tier: Tier) -> None:
        key = self.key_for("empty", b"")
        info = put_bytes(tier, key, b"")
        assert (info.size, info.b3) == (0, b3(b""))
        assert tier.stat(key).size == 0
        assert read(tier, key) == b""
        assert read(tier, key, 0, 5) == b""
        assert read(tier, key, 3) == b""
        assert keys(tier) == [key]

    def test_large_object(self, tier: Tier) -> None:
        data = self.payload("large")
        key = self.key_for("packs/large.tar", data)
        with tier.begin_put() as upload:
            for start in range(0, len(data), MiB):
                upload.write(data[start : start + MiB])
            info = upload.promote(key, expect_b3=b3(data))
        assert (info.size, info.b3) == (len(data), b3(data))
        assert tier.stat(key).size == len(data)
        assert read(tier, key) == data
        assert read(tier, key, 6 * MiB - 3, 10) == data[6 * MiB - 3 : 6 * MiB + 7]
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
        kept = self.key_for("kept", b"k")
        put_bytes(tier, kept, b"k")
        with tier.begin_put() as upload:
            upload.write(self.payload("large"))
            assert keys(tier) == [kept]
            assert keys(tier, ".") == []
            upload.abort()

    def test_sweep_removes_only_abandoned_staging(self, tier: Tier) -> None:
        kept = self.key_for("kept/one", b"kept")
        put_bytes(tier, kept, b"kept")
        abandoned = tier.begin_put()  # a crash: written, never promoted nor aborted
        abandoned.write(self.payload("large"))
        now = dt.datetime.now(dt.UTC)
        assert tier.sweep_staging(now - dt.timedelta(hours=1)) == 0  # young: left alone
        staged = self.staged_leftovers(tier)
        assert tier.sweep_staging(now + dt.timedelta(minutes=5)) == len(staged)
        assert self.staged_leftovers(tier) == []
        assert read(tier, kept) == b"kept"
        assert keys(tier) == [kept]
        abandoned.abort()  # what the crashed writer would have done: still harmless

    def test_delete_is_idempotent(self, tier: Tier) -> None:
        one, two = self.key_for("d/one", b"1"), self.key_for("d/two", b"2")
        put_bytes(tier, one, b"1")
        put_bytes(tier, two, b"2")
        tier.delete(one)
        tier.delete(one)
        tier.delete(self.key_for("never/was", b"never"))
        assert not tier.exists(one)
        assert keys(tier) == [two]
        # A deleted key can be written again (content-addressed: with the bytes it names).
        again = b"1" if self.content_addressed else b"again"
        put_bytes(tier, one, again)
        assert read(tier, one) == again

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
        key = self.key_for("blobs/b3/00/00/bad", wrong)
        with tier.begin_put() as upload:
            upload.write(data)
            with pytest.raises(DigestMismatch) as caught:
                upload.promote(key, expect_b3=wrong)
        error = caught.value
        assert (error.key, error.algorithm) == (key, "blake3")
        assert (error.expected, error.found) == (wrong, b3(data))
        assert not tier.exists(key)
        self.assert_empty(tier)

    def test_put_checks_the_digest(self, tier: Tier) -> None:
        data = random.randbytes(5000)
        key = self.key_for("checked", data)
        with pytest.raises(DigestMismatch):
            put_bytes(tier, key, data, expect_b3=b3(data + b"!"))
        self.assert_empty(tier)
        assert put_bytes(tier, key, data, expect_b3=b3(data).upper()).b3 == b3(data)
        assert read(tier, key) == data

    def test_upload_reports_size_and_digest(self, tier: Tier) -> None:
        with tier.begin_put() as upload:
            assert (upload.size, upload.b3) == (0, b3(b""))
            upload.write(b"hello ")
            upload.write(memoryview(b"world"))
            assert (upload.size, upload.b3) == (11, b3(b"hello world"))
            info = upload.promote(self.key_for("hello", b"hello world"))
        assert read(tier, self.key_for("hello", b"hello world")) == b"hello world"
        assert info.b3 == b3(b"hello world")

    def test_upload_is_final_after_promote(self, tier: Tier) -> None:
        upload = tier.begin_put()
        upload.write(b"x")
        upload.promote(self.key_for("final", b"x"))
        with pytest.raises(ValueError, match="promoted or aborted"):
            upload.write(b"y")
        with pytest.raises(ValueError, match="promoted or aborted"):
            upload.promote(self.key_for("final-2", b"x"))
        upload.abort()  # harmless
        assert read(tier, self.key_for("final", b"x")) == b"x"

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
        key = self.key_for("big/stream", expected.hexdigest())
        with _MemoryWatch() as write_watch:
            info = tier.put(key, source, expect_b3=expected.hexdigest())
        assert (info.size, info.b3) == (size, expected.hexdigest())
        hasher, total = blake3.blake3(), 0
        with _MemoryWatch() as read_watch, tier.open(key) as stream:
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
