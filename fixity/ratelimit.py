"""A bytes-per-second budget for audit reads, one per tier, so audits never starve ingest.

A token bucket (one second of burst): a reader asks for ``n`` bytes after reading
them and sleeps for as long as it ran ahead of the rate. One bucket serves every
audit thread of a process; across processes the tier's budget is split by
:func:`fixity.schedule.auditors_of` (N workers auditing one tier each get 1/N).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class ByteRate:
    def __init__(
        self,
        bytes_per_second: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate = bytes_per_second
        self._clock = clock
        self._sleep = sleep
        self._tokens = bytes_per_second
        self._stamp = clock()
        self._lock = threading.Lock()

    def spend(self, n: int) -> None:
        """Account for ``n`` bytes read; sleep while over budget (no-op when unlimited)."""
        if self.rate <= 0 or n <= 0:
            return
        with self._lock:
            now = self._clock()
            self._tokens = min(self.rate, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            self._tokens -= n
            owed = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if owed > 0:
            self._sleep(owed)


UNLIMITED = ByteRate(0)
