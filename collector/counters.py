"""Thread-safe named counters: every refusal, error and event the collector handles is counted."""

from __future__ import annotations

import threading
from collections import Counter


class Counters:
    """Counters shared by the ingest thread and the applier threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def incr(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def get(self, name: str) -> int:
        with self._lock:
            return self._counts[name]

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)
