"""Thread-safe named counters and latency histograms: everything the collector handles is counted.

Counts are plain names (``messages``, ``refused_backoff``, ...); counts per event kind are named
``<what>.<kind>`` (``received.scalar``, ``journaled.image``, ``applied.model``), so that one
snapshot carries them all (``StatusReply.counters``, ``clearml-relay status``) and the metrics
endpoint can turn the part after the dot into a label. Latencies are kept as cumulative bucket
counts with fixed bounds (:data:`LATENCY_BUCKETS`), which is all a Prometheus histogram needs,
so the code that measures never imports prometheus_client.
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter
from collections.abc import Mapping
from typing import Final, NamedTuple

#: Upper bounds (seconds) of the latency buckets: from a scalar written to a local file (tens
#: of microseconds) to a model upload to a slow server (minutes).
LATENCY_BUCKETS: Final = (
    0.0001,
    0.0005,
    0.001,
    0.005,
    0.01,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)


class Latency(NamedTuple):
    """One histogram: observations per bucket (not cumulative; the last is +Inf), their sum and number."""

    buckets: tuple[int, ...]
    total: float
    observations: int


class _Histogram:
    def __init__(self) -> None:
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = 0.0
        self.count = 0


class Counters:
    """Counters shared by the ingest thread and the applier threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._latencies: dict[str, _Histogram] = {}

    def incr(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def incr_many(self, counts: Mapping[str, int]) -> None:
        """Add several counts under one lock acquisition (a batch's counts per kind)."""
        with self._lock:
            self._counts.update(counts)

    def get(self, name: str) -> int:
        with self._lock:
            return self._counts[name]

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def observe(self, name: str, seconds: float, *, count: int = 1) -> None:
        """Record a duration in the histogram ``name``: ``count`` things that took ``seconds`` together.

        Each of them is recorded as taking ``seconds / count`` (a batch of events applied in one go).
        """
        index = bisect.bisect_left(LATENCY_BUCKETS, seconds / count)
        with self._lock:
            histogram = self._latencies.get(name)
            if histogram is None:
                histogram = self._latencies[name] = _Histogram()
            histogram.buckets[index] += count
            histogram.total += seconds
            histogram.count += count

    def latencies(self) -> dict[str, Latency]:
        with self._lock:
            return {name: Latency(tuple(h.buckets), h.total, h.count) for name, h in self._latencies.items()}
