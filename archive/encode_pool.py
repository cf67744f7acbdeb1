"""Worker processes that encode small files (:func:`archive.encode_worker.encode_files`).

Each worker is our interpreter running a few lines that import only
:mod:`archive.encode_worker`, fed groups of ``(path, size)`` over a Unix socket and
answering with pickled results, in order. Not :mod:`multiprocessing`: its
``forkserver`` and ``spawn`` start methods import the caller's main module again in
every worker, which runs an unguarded script's work twice, and ``fork`` copies a
process whose other threads may hold locks. A worker here starts in about 30 ms and
exits when its socket closes, so a crash of the ingest leaves none behind.
"""

from __future__ import annotations

import contextlib
import pickle
from collections import deque
from collections.abc import Iterable, Iterator
from typing import BinaryIO, TypeVar

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

    def close(self) -> None:
        for worker in self._workers:
            worker.close()
        self._workers = []

    def __enter__(self) -> EncoderPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
