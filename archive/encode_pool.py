"""Worker processes that encode small files (:func:`archive.encode_worker.encode_files`).

Each worker is our interpreter running a few lines that import only
:mod:`archive.encode_worker`, fed groups of ``(path, size)`` over a Unix socket and
answering with pickled results, in order. Not :mod:`multiprocessing`: its
``forkserver`` and ``spawn`` start methods import the caller's main module again in
every worker, which runs an unguarded script's work twice, and ``fork`` copies a
process whose other threads may hold locks. A worker here starts in about 30 ms and
exits when its socket closes, so a crash of the ingest leaves none behind.

:class:`EncodeAhead` reads the workers' answers on a thread of its own, so they go on
encoding while the ingest is busy elsewhere: opening the catalog at the start of a
command, or packing and recording what came back.
"""

from __future__ import annotations

import contextlib
import pickle
import socket
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from typing import BinaryIO, Generic, TypeVar

from archive.encode_worker import Encoded
from tiers.child import Child

_Group = TypeVar("_Group")

_WORKER_SOURCE = r"""
import pickle, socket
from archive.encode_worker import encode_files

channel = socket.socket(fileno=0)
requests, answers = channel.makefile("rb"), channel.makefile("wb")
while True:
    try:
        level, files = pickle.load(requests)
        pickle.dump(encode_files(level, files), answers, protocol=pickle.HIGHEST_PROTOCOL)
        answers.flush()
    except (EOFError, OSError):  # the ingest is over, or gone
        break
"""


class WorkerDied(Exception):
    """A worker stopped answering (it could not start, or it was killed)."""


class _Worker:
    def __init__(self) -> None:
        self.child = Child(_WORKER_SOURCE)
        self.process = self.child.process
        self.requests: BinaryIO = self.child.channel.makefile("wb")
        self.answers: BinaryIO = self.child.channel.makefile("rb")

    def send(self, level: int, files: list[tuple[str, int]]) -> None:
        try:
            pickle.dump((level, files), self.requests, protocol=pickle.HIGHEST_PROTOCOL)
            self.requests.flush()
        except OSError as exc:
            raise WorkerDied(f"an encoding worker stopped: {exc}") from exc

    def receive(self) -> list[Encoded]:
        try:
            answer: list[Encoded] = pickle.load(self.answers)  # noqa: S301 - our own worker
        except (EOFError, OSError, pickle.UnpicklingError) as exc:
            code = self.process.poll()
            raise WorkerDied(f"an encoding worker stopped (exit status {code})") from exc
        return answer

    def interrupt(self) -> None:
        """Wake a send or receive blocked in another thread: it fails at once."""
        with contextlib.suppress(OSError):
            self.child.channel.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        for stream in (self.requests, self.answers):
            with contextlib.suppress(OSError):
                stream.close()
        self.child.close()


class EncoderPool:
    """``workers`` processes encoding groups of small files at zstd ``level``."""

    def __init__(self, workers: int, level: int) -> None:
        self.level = level
        self._workers: list[_Worker] = []
        try:
            for _ in range(workers):
                self._workers.append(_Worker())
        except BaseException:
            self.close()
            raise

    def encode(
        self, groups: Iterable[tuple[_Group, list[tuple[str, int]]]], *, in_flight: int = 2
    ) -> Iterator[tuple[_Group, list[Encoded]]]:
        """Each group's files encoded, in the order given, with at most ``in_flight``
        groups sent to each worker ahead of the one being read.

        Raises:
            WorkerDied: a worker stopped answering.
        """
        pending: deque[tuple[_Group, _Worker]] = deque()
        remaining = iter(groups)
        turn = 0

        def send_next() -> bool:
            nonlocal turn
            item = next(remaining, None)
            if item is None:
                return False
            tag, files = item
            worker = self._workers[turn % len(self._workers)]
            turn += 1
            worker.send(self.level, files)
            pending.append((tag, worker))
            return True

        for _ in range(in_flight * len(self._workers)):
            if not send_next():
                break
        while pending:
            tag, worker = pending.popleft()
            answer = worker.receive()
            send_next()
            yield tag, answer

    def interrupt(self) -> None:
        """Make an :meth:`encode` running in another thread stop with :class:`WorkerDied`."""
        for worker in self._workers:
            worker.interrupt()

    def close(self) -> None:
        for worker in self._workers:
            worker.close()
        self._workers = []

    def __enter__(self) -> EncoderPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EncodeAhead(Generic[_Group]):
    """``pool.encode(groups)`` run by a thread of its own, ahead of the reader.

    The workers keep encoding while the caller does other work, until the answers
    waiting hold ``max_bytes`` of encoded content (always at least one group).
    Iterating yields them in order; an error of the pool (:class:`WorkerDied`) is
    raised where it happened, after every group before it. :meth:`close` stops the
    thread and the workers; it owns ``pool``.
    """

    def __init__(
        self,
        pool: EncoderPool,
        groups: Iterable[tuple[_Group, list[tuple[str, int]]]],
        *,
        max_bytes: int,
    ) -> None:
        self._pool = pool
        self._max_bytes = max_bytes
        self._ready: deque[tuple[_Group, list[Encoded], int]] = deque()
        self._held = 0
        self._finished = False
        self._closed = False
        self._error: BaseException | None = None
        self._changed = threading.Condition()
        self._thread = threading.Thread(
            target=self._run, args=(groups,), name="encode-ahead", daemon=True
        )
        self._thread.start()

    def _run(self, groups: Iterable[tuple[_Group, list[tuple[str, int]]]]) -> None:
        error: BaseException | None = None
        try:
            for tag, answer in self._pool.encode(groups):
                size = sum(len(payload) for _, payload in answer)
                with self._changed:
                    while self._ready and self._held >= self._max_bytes and not self._closed:
                        self._changed.wait()
                    if self._closed:
                        return
                    self._ready.append((tag, answer, size))
                    self._held += size
                    self._changed.notify_all()
        except BaseException as exc:  # handed to the reader, in order
            error = exc
        finally:
            with self._changed:
                self._finished, self._error = True, error
                self._changed.notify_all()

    def __iter__(self) -> Iterator[tuple[_Group, list[Encoded]]]:
        while True:
            with self._changed:
                while not self._ready and not self._finished:
                    self._changed.wait()
                if not self._ready:
                    if self._error is not None:
                        raise self._error
                    return
                tag, answer, size = self._ready.popleft()
                self._held -= size
                self._changed.notify_all()
            yield tag, answer

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._ready.clear()
            self._changed.notify_all()
        self._pool.interrupt()
        self._thread.join()
        self._pool.close()

    def __enter__(self) -> EncodeAhead[_Group]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
