"""A live uvicorn server on a free loopback port, in a thread, for tests that need real HTTP.

``TestClient`` calls the app in-process; streaming bodies, chunked transfer and
``Content-Length`` checks only happen over a socket. The socket is bound before
the server starts (port 0: the kernel picks a free one), so there is no race
between choosing a port and listening on it.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import pytest
import uvicorn
from fastapi import FastAPI

STARTUP_SECONDS = 30.0


@contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """Run ``app`` (lifespan included) until the block ends; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, lifespan="on", ws="none", log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(STARTUP_SECONDS)
        sock.close()


@pytest.fixture
def live_server() -> Iterator[Callable[[FastAPI], str]]:
    """``live_server(app)`` starts ``app`` and returns its base URL; stopped after the test."""
    with ExitStack() as stack:

        def start(app: FastAPI) -> str:
            return stack.enter_context(serve(app))

        yield start
