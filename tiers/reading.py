"""Reading a stored object fast enough to hash it at memory speed, without mapping it.

Hashing an object that sits in the page cache is about as costly as copying it out
(``read``): done one after the other, the copy doubles the time. :func:`read_ahead`
reads the next chunk on a second thread while the caller hashes the current one.

The processes that audit and prove copies never map a file themselves: a mapped file
that is truncated, or whose disk fails a read, raises ``SIGBUS`` and kills the whole
process (an auditor, or the server answering a partner), where a ``read`` raises an
``OSError`` that becomes a tier error. Meeting damaged files is precisely the job of
those processes. A folder tier maps files in a helper process instead
(:mod:`tiers.mapped`), and falls back to this reading when the helper dies.
"""

from __future__ import annotations

from collections.abc import Generator
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO

from tiers.base import CHUNK_SIZE


def read_ahead(stream: BinaryIO, chunk_size: int = CHUNK_SIZE) -> Generator[memoryview, None, None]:
    """The chunks of ``stream``, each read on a second thread while the caller uses
    the one before. A view is valid until the next one is asked for: two buffers take
    turns. Errors of the stream are raised here, in order; no read outlives the
    iterator (closing it waits for the one in flight)."""
    buffers = (bytearray(chunk_size), bytearray(chunk_size))
    readinto = getattr(stream, "readinto", None)

    def fill(buffer: bytearray) -> int:
        if readinto is not None:
            return int(readinto(buffer) or 0)
        data = stream.read(len(buffer))  # a stream without readinto (some HTTP bodies)
        buffer[: len(data)] = data
        return len(data)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="read-ahead") as reader:
        turn = 0
        pending = reader.submit(fill, buffers[turn])
        try:
            while count := pending.result():
                ready = memoryview(buffers[turn])[:count]
                turn ^= 1
                pending = reader.submit(fill, buffers[turn])
                yield ready
        finally:
            if not pending.cancel():
                pending.exception()  # wait: no read may run on a stream about to be closed
