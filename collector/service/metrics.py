"""The collector's HTTP endpoint: Prometheus ``/metrics`` and ``/healthz``; the only prometheus import.

Nothing is incremented here: :class:`RelayMetrics` is a custom Prometheus collector that reads
the live state at scrape time (the counters every layer already keeps, the journal's size and
each run's positions), so the code that does the work never knows about Prometheus and a scrape
costs one snapshot. It is registered in a private registry (with the process metrics), never in
prometheus_client's global one, so several collectors in one process (tests) do not collide.

Metrics (all prefixed ``clearml_relay_``):

- ``events_received_total{kind}``: events that arrived, resends included (``undecodable``:
  a body that is not an event at all);
- ``events_journaled_total{kind}``: events journaled and so acknowledged;
- ``events_applied_total{kind}``: events the backend applied (ClearML task or JSONL);
- ``apply_duration_seconds{kind}`` (histogram): the backend's time to apply one event: for
  ``image``, ``plot`` and ``model`` the upload; ``checkpoint_duration_seconds``: making a
  run's work durable (the ClearML SDK's queued uploads and events drained);
- ``journal_bytes``, ``journal_max_bytes``: the journal's size and the cap above which
  producers are told to back off;
- ``run_backlog_events{run}``: journaled minus applied, for every run that is open or behind;
  ``backlog_events``: the sum over all runs; ``runs{state}``: runs the journal holds by state;
- ``refusals_total{reason}``: messages refused, by the reason code sent to the producer;
- ``backend_errors_total{error}``: ClearML (backend) failures: ``apply_error`` (a call failed
  and is retried), ``rewind`` (work the server dropped, applied again), ``applier_error``;
- ``internal_events_total{name}``: every other counter (duplicates, nacks, journal damage,
  disk-full episodes...), as ``clearml-relay status`` shows them;
- ``healthy``: 1 while ``/healthz`` answers 200; ``ingest_loop_age_seconds``: how long ago the
  ingest loop last came round.

``/healthz`` answers ``200 ok`` while the journal takes writes and the ingest loop turns, and
``503`` with the reason otherwise (and while the collector drains at shutdown).
"""

from __future__ import annotations

import logging
import socket
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Final

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry

from collector.counters import LATENCY_BUCKETS, Latency
from collector.service.snapshot import Health, Snapshot
from producer.wire import protocol

log = logging.getLogger(__name__)

PREFIX: Final = "clearml_relay_"
#: Counters turned into ``backend_errors_total{error}`` (the label is the name, ``rewinds`` singular).
BACKEND_ERRORS: Final = {"apply_error": "apply_error", "rewinds": "rewind", "applier_error": "applier_error"}
_REFUSED: Final = "refused_"
#: ``<counter prefix>.<kind>`` -> metric family of counts per event kind.
_PER_KIND: Final = {
    "received": ("events_received", "Events that arrived, resends included"),
    "journaled": ("events_journaled", "Events journaled, and so acknowledged to their producer"),
    "applied": ("events_applied", "Events applied by the backend (ClearML task or JSONL records)"),
}
#: Totals that the per-kind families already carry.
_TOTALS: Final = frozenset({"events_journaled", "applied"})


class RelayMetrics(Collector):
    """Reads a :class:`Snapshot` at every scrape and describes it as Prometheus metrics."""

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterable[Metric]:
        snap = self._snapshot()
        yield from self._counters(snap.counters)
        yield from self._histograms(snap.latencies)
        yield GaugeMetricFamily(
            PREFIX + "journal_bytes", "Bytes held by the journal", value=snap.journal_bytes
        )
        yield GaugeMetricFamily(
            PREFIX + "journal_max_bytes",
            "Journal size above which producers are told to back off",
            value=snap.journal_max_bytes,
        )
        yield from self._runs(snap.runs)
        yield GaugeMetricFamily(
            PREFIX + "ingest_loop_age_seconds",
            "Seconds since the ingest loop last came round",
            value=snap.ingest_loop_age,
        )
        yield GaugeMetricFamily(PREFIX + "healthy", "1 while /healthz answers 200", value=int(snap.health.ok))

    @staticmethod
    def _counters(counters: dict[str, int]) -> Iterable[Metric]:
        per_kind = {
            prefix: CounterMetricFamily(PREFIX + name, help_, labels=["kind"])
            for prefix, (name, help_) in _PER_KIND.items()
        }
        refusals = CounterMetricFamily(
            PREFIX + "refusals", "Messages refused, by the reason code sent back", labels=["reason"]
        )
        errors = CounterMetricFamily(
            PREFIX + "backend_errors", "ClearML (backend) failures, each retried", labels=["error"]
        )
        other = CounterMetricFamily(
            PREFIX + "internal_events", "Every other collector counter, by name", labels=["name"]
        )
        for name in BACKEND_ERRORS.values():
            errors.add_metric([name], 0)  # present from the start: rate() needs a first sample
        for name, value in sorted(counters.items()):
            prefix, dot, event_kind = name.partition(".")
            if dot and prefix in per_kind:
                per_kind[prefix].add_metric([event_kind], value)
            elif name.startswith(_REFUSED):
                refusals.add_metric([name.removeprefix(_REFUSED)], value)
            elif name in BACKEND_ERRORS:
                errors.add_metric([BACKEND_ERRORS[name]], value)
            elif name not in _TOTALS:
                other.add_metric([name], value)
        yield from per_kind.values()
        yield from (refusals, errors, other)

    @staticmethod
    def _histograms(latencies: dict[str, Latency]) -> Iterable[Metric]:
        apply = HistogramMetricFamily(
            PREFIX + "apply_duration_seconds",
            "Backend time to apply one event (the upload, for image, plot and model)",
            labels=["kind"],
        )
        checkpoint = HistogramMetricFamily(
            PREFIX + "checkpoint_duration_seconds", "Backend time to make a run's work durable"
        )
        for name, latency in sorted(latencies.items()):
            buckets, total = _cumulative(latency), latency.total
            what, _, event_kind = name.partition(".")
            if what == "apply" and event_kind:
                apply.add_metric([event_kind], buckets, total)
            elif name == "checkpoint":
                checkpoint.add_metric([], buckets, total)
        yield apply
        yield checkpoint

    @staticmethod
    def _runs(runs: list[protocol.RunInfo]) -> Iterable[Metric]:
        backlog = GaugeMetricFamily(
            PREFIX + "run_backlog_events",
            "Events journaled but not yet applied, per run (runs that are open or behind)",
            labels=["run"],
        )
        states: defaultdict[str, int] = defaultdict(int)
        total = 0
        for info in runs:
            behind = max(0, info.journaled - info.applied)
            total += behind
            states[info.state] += 1
            if behind or info.state == "open":
                backlog.add_metric([info.run], behind)
        by_state = GaugeMetricFamily(PREFIX + "runs", "Runs the journal holds, by state", labels=["state"])
        for state in ("open", "completed", "failed", "aborted"):
            states.setdefault(state, 0)
        for state, count in sorted(states.items()):
            by_state.add_metric([state], count)
        yield backlog
        yield GaugeMetricFamily(
            PREFIX + "backlog_events", "Events journaled but not yet applied", value=total
        )
        yield by_state


def _cumulative(latency: Latency) -> list[tuple[str, float]]:
    """Prometheus buckets (``le`` bound, cumulative count) from per-bucket counts."""
    out, running = [], 0
    for bound, count in zip((*map(str, LATENCY_BUCKETS), "+Inf"), latency.buckets, strict=True):
        running += count
        out.append((bound, float(running)))
    return out


def make_registry(snapshot: Callable[[], Snapshot]) -> CollectorRegistry:
    """A private registry with the relay's metrics and this process's (CPU, memory, fds)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RelayMetrics(snapshot))
    ProcessCollector(registry=registry)
    return registry


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._answer(HTTPStatus.OK, generate_latest(self.server.registry), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            health = self.server.health()
            status = HTTPStatus.OK if health.ok else HTTPStatus.SERVICE_UNAVAILABLE
            self._answer(status, (health.reason + "\n").encode(), "text/plain; charset=utf-8")
        else:
            self._answer(HTTPStatus.NOT_FOUND, b"not found: try /metrics or /healthz\n", "text/plain")

    def _answer(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("http %s: " + format, self.address_string(), *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], registry: CollectorRegistry, health: Callable[[], Health]
    ) -> None:
        self.registry = registry
        self.health = health
        super().__init__(address, _Handler)


class _Server6(_Server):
    address_family = socket.AF_INET6


class MetricsServer:
    """Serves ``/metrics`` and ``/healthz`` from a background thread until :meth:`close`.

    Args:
        host: Address to bind (``0.0.0.0`` in a container).
        port: TCP port (0: any free port; see :attr:`port`).
        snapshot: Reads the collector's state for a scrape.
        health: Decides what ``/healthz`` answers.

    Raises:
        OSError: the address cannot be bound (in use, not an address of this host).

    """

    def __init__(
        self, host: str, port: int, snapshot: Callable[[], Snapshot], health: Callable[[], Health]
    ) -> None:
        server = _Server6 if ":" in host else _Server  # an IPv6 address, such as "::"
        try:
            self._server = server((host, port), make_registry(snapshot), health)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise OSError(exc.errno, f"cannot serve metrics on {host}:{port}: {reason}") from None
        self.host = host
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="collector-http", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
