"""A child process of our own interpreter, running a few lines of Python, that talks to
its parent over a Unix socket passed as its standard input.

The child reads requests from the socket until it closes, so it exits when its parent
closes the socket or dies: no child outlives the process that started it. Used where
work must run out of the caller's process (:mod:`tiers.mapped`, whose helpers may die
of SIGBUS) or out of its GIL (``archive.encode_pool``).
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Sequence

__all__ = ["Child"]


class Child:
    """``python [flags] -c source`` with one end of a socket pair as its stdin.

    Raises:
        OSError: the process could not be started.
    """

    def __init__(
        self,
        source: str,
        *,
        kind: socket.SocketKind = socket.SOCK_STREAM,
        flags: Sequence[str] = (),
    ) -> None:
        mine, theirs = socket.socketpair(socket.AF_UNIX, kind)
        try:
            self.process = subprocess.Popen(
                [sys.executable, *flags, "-c", source],
                stdin=theirs.fileno(),
                stdout=subprocess.DEVNULL,
                close_fds=True,
            )
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        self.channel = mine

    def close(self) -> None:
        """Close the socket (the child reads end-of-file and exits) and reap the child."""
        self.channel.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
