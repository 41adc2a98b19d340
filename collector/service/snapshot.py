"""What ``/metrics`` and ``/healthz`` read from a running collector, in one small module.

:class:`~collector.service.server.Collector` builds these and
:mod:`collector.service.metrics` serves them; neither imports the other for them.
"""

from __future__ import annotations

from dataclasses import dataclass

from collector.counters import Latency
from producer.wire import protocol


@dataclass(frozen=True)
class Health:
    """What ``/healthz`` answers: 200 with ``reason`` "ok", or 503 with why not."""

    ok: bool
    reason: str


@dataclass(frozen=True)
class Snapshot:
    """What one metrics scrape reads from the collector, taken at once."""

    counters: dict[str, int]
    latencies: dict[str, Latency]
    runs: list[protocol.RunInfo]
    journal_bytes: int
    journal_max_bytes: int
    ingest_loop_age: float
    health: Health
