"""A live uvicorn server on a free loopback port, in a thread, for tests that need real HTTP.

``TestClient`` calls the app in-process; streaming bodies, chunked transfer and
``Content-Length`` checks only happen over a socket. The socket is bound before
the server starts (port 0: the kernel picks a free one), so there is no race
between choosing a port and listening on it.

:func:`permafrost_serve` runs the real command instead, in a process of its own,
for tests of the command itself or of a server that must not share the test's
interpreter (load).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
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
    config = uvicorn.Config(
        app,
        lifespan="on",
        ws="none",
        log_level="warning",
        access_log=False,
        proxy_headers=False,  # as ``permafrost serve``: trusted_proxies decides (web.proxies)
    )
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


@contextmanager
def permafrost_serve(
    cwd: Path, env: dict[str, str], *args: str, log: Path | None = None
) -> Iterator[str]:
    """``permafrost serve --port P ARGS`` in its own process until the block ends; yields
    its base URL once ``/healthz`` answers. Its stderr goes to ``log`` when given."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with open(log or os.devnull, "wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "archive.cli", "serve", "--port", str(port), *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("permafrost serve did not start")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
