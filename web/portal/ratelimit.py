"""Failed sign-ins are limited per client address and user name (OWASP ASVS 2.2.1).

A sliding window in process memory: enough for one server process, and a
deployment with several puts a proxy limit in front as well.
"""

from __future__ import annotations

import threading
import time
from collections import deque


class LoginLimiter:
    def __init__(self, max_failures: int = 5, window_seconds: float = 300.0) -> None:
        self.max_failures = max_failures
        self.window = window_seconds
        self._failures: dict[tuple[str, str], deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: tuple[str, str], now: float) -> deque[float]:
        times = self._failures.setdefault(key, deque())
        while times and times[0] <= now - self.window:
            times.popleft()
        return times

    def retry_after(self, client: str, username: str) -> float:
        """Seconds until another try is allowed (0: allowed now)."""
        key = (client, username.lower())
        now = time.monotonic()
        with self._lock:
            times = self._recent(key, now)
            if len(times) < self.max_failures:
                return 0.0
            return max(0.0, times[0] + self.window - now)

    def failed(self, client: str, username: str) -> None:
        key = (client, username.lower())
        with self._lock:
            self._recent(key, time.monotonic()).append(time.monotonic())

    def succeeded(self, client: str, username: str) -> None:
        with self._lock:
            self._failures.pop((client, username.lower()), None)
