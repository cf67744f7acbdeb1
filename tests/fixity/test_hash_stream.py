"""hash_stream reads large objects ahead on a second thread: the digest must not change."""

from __future__ import annotations

import io
import os

import blake3
import pytest

from fixity.checks import PARALLEL_FROM, hash_stream
from fixity.ratelimit import ByteRate
from tiers import CHUNK_SIZE


@pytest.mark.parametrize(
    "size", [0, 1, PARALLEL_FROM - 1, PARALLEL_FROM, 3 * CHUNK_SIZE, 3 * CHUNK_SIZE + 7]
)
def test_digest_and_size_of_every_length(size: int) -> None:
    data = os.urandom(size)
    assert hash_stream(io.BytesIO(data), expected_size=size) == (
        blake3.blake3(data).hexdigest(),
        size,
    )


def test_a_stream_longer_or_shorter_than_expected_is_measured_as_it_is() -> None:
    data = os.urandom(PARALLEL_FROM + 5)
    digest, size = hash_stream(io.BytesIO(data), expected_size=PARALLEL_FROM * 4)
    assert (digest, size) == (blake3.blake3(data).hexdigest(), len(data))


def test_a_failing_read_is_raised_and_no_read_outlives_the_call() -> None:
    class Failing(io.BytesIO):
        reads = 0

        def readinto(self, buffer: bytearray) -> int:  # type: ignore[override]
            self.reads += 1
            if self.reads == 3:
                raise OSError(5, "Input/output error")
            return super().readinto(buffer)

    stream = Failing(os.urandom(5 * CHUNK_SIZE))
    with pytest.raises(OSError, match="Input/output error"):
        hash_stream(stream, expected_size=5 * CHUNK_SIZE)
    assert stream.reads == 3  # it stopped at the failure, reading nothing after it


def test_the_read_budget_is_paid_for_every_byte() -> None:
    spent: list[int] = []

    class Counting(ByteRate):
        def spend(self, n: int) -> None:
            spent.append(n)

    size = 2 * CHUNK_SIZE + 3
    hash_stream(io.BytesIO(os.urandom(size)), Counting(1), expected_size=size)
    assert sum(spent) == size
