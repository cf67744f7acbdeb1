"""read_ahead gives back exactly the stream's bytes, whatever the stream offers."""

from __future__ import annotations

import io
import os
from typing import BinaryIO, cast

import pytest

from tiers import CHUNK_SIZE
from tiers.reading import read_ahead


class ReadOnly(io.RawIOBase):
    """A stream with ``read`` and no ``readinto`` that returns short reads, as some
    HTTP bodies do."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._at = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        size = min(size, 1000) if size >= 0 else len(self._data)
        piece = self._data[self._at : self._at + size]
        self._at += len(piece)
        return bytes(piece)


ReadOnly.readinto = None  # type: ignore[assignment,method-assign]


@pytest.mark.parametrize("size", [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, 2 * CHUNK_SIZE + 5])
def test_the_bytes_come_back_in_order(size: int) -> None:
    data = os.urandom(size)
    assert b"".join(bytes(chunk) for chunk in read_ahead(io.BytesIO(data))) == data


def test_a_stream_without_readinto_is_read() -> None:
    data = os.urandom(10_000)
    stream = cast(BinaryIO, ReadOnly(data))
    assert b"".join(bytes(c) for c in read_ahead(stream, chunk_size=4096)) == data


def test_closing_early_waits_for_the_read_in_flight() -> None:
    stream = io.BytesIO(os.urandom(3 * CHUNK_SIZE))
    chunks = read_ahead(stream)
    assert len(next(chunks)) == CHUNK_SIZE
    chunks.close()  # must not leave a read running on the stream
    stream.close()
    assert stream.closed
