"""Failed sign-ins are limited per client address and user name (OWASP ASVS 2.2.1).

Two sliding windows: a few failures for one name from one address, and more for
all names from one address (so trying many names is slowed too). In process
memory: enough for one server process; a deployment with several puts a proxy
limit in front as well.
"""

from __future__ import annotations

import threading
import time
from collections import deque

_ANY_NAME = "\x00any"


class LoginLimiter:
    def __init__(
        self, max_failures: int = 5, max_per_address: int = 20, window_seconds: float = 300.0
    ) -> None:
        self.limits = {"name": max_failures, "address": max_per_address}
        self.window = window_seconds
        self._failures: dict[tuple[str, str], deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: tuple[str, str], now: float) -> deque[float]:
        times = self._failures.setdefault(key, deque())
        while times and times[0] <= now - self.window:
            times.popleft()
        return times

    def _keys(self, client: str, username: str) -> list[tuple[tuple[str, str], int]]:
        return [
            ((client, username.lower()), self.limits["name"]),
            ((client, _ANY_NAME), self.limits["address"]),
        ]

    def retry_after(self, client: str, username: str) -> float:
        """Seconds until another try is allowed (0: allowed now)."""
        now = time.monotonic()
        wait = 0.0
        with self._lock:
            for key, limit in self._keys(client, username):
                times = self._recent(key, now)
                if len(times) >= limit:
                    wait = max(wait, times[0] + self.window - now)
        return wait

    def failed(self, client: str, username: str) -> None:
        now = time.monotonic()
        with self._lock:
            for key, _ in self._keys(client, username):
                self._recent(key, now).append(now)

    def succeeded(self, client: str, username: str) -> None:
        with self._lock:
            self._failures.pop((client, username.lower()), None)
