"""Parts 3 and 4 of ``compare.py``: what one collector sustains, with its ClearML backend offline.

Each measurement starts a fresh collector process (``python -m collector collector --backend
clearml --offline``, private ClearML cache) and producer processes that talk to it through the
public ``Run`` API, all on this machine's cores:

- :func:`throughput`: N producer processes send scalars as fast as they can (bursts, each
  followed by a flush, as ``bench_transport.py`` does for one); acknowledged events/s from the
  start signal to the last acknowledgement, applied events/s until the backend has applied
  everything, the collector's CPU seconds per 1,000 events over that time, its peak memory;
- :func:`latency`: a fixed, paced load; the collector here is this module run as a script,
  which wraps the real ClearML backend in :class:`LatencyRecorder`: for each event, the time
  from the producer's call (``event.ts``, the producer's clock, the same machine's) until the
  backend's ``apply`` returned (the event is in the ClearML task's queue), and until the
  backend's next ``checkpoint`` returned (written to the ClearML session: what survives);
- :func:`scaling`: N runs held open at a low, steady rate; the collector's resident memory,
  CPU and threads over a window once every run has its ClearML task.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import multiprocessing
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any, Final

ROOT: Final = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "support"), str(ROOT / "tests" / "benchmarks")]

from bench_transport import percentile, scalar_bursts  # noqa: E402
from clearml_server import ClearMLServerDouble  # noqa: E402
from e2e import env, free_port, start_collector, status, stop, wait_for, wait_ready  # noqa: E402
from sampling import Profile, Sampler  # noqa: E402

from collector.backends.base import PartlyApplied  # noqa: E402
from collector.backends.clearml import state as clearml_state  # noqa: E402
from collector.pipeline.files import FileStore  # noqa: E402
from collector.storage import paths  # noqa: E402
from producer.wire import protocol  # noqa: E402

PROJECT: Final = "clearml-relay-load"
#: Above this many runs, processes hold several runs each (their runs share one connection).
MAX_PROCESSES: Final = 100

# ------------------------------------------------------------------------------- the collector


class LatencyRecorder:
    """A backend that forwards to the real one and times each scalar from its producer's call.

    Scalars only: a run's opening (task creation) and closing (session zipped) are one-off
    costs, not the steady-state latency asked for.

    ``applied_s``: seconds from ``event.ts`` to ``apply`` returning; ``durable_s``: to the
    return of the run's next ``checkpoint`` (events of a checkpoint that failed are not
    counted: the appliers apply them again). Calls for one run come from one thread at a time.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.applied_s: list[float] = []
        self.durable_s: list[float] = []
        self._pending: dict[str, list[float]] = {}

    def applied(self, run: str) -> int:
        position: int = self.inner.applied(run)
        return position

    def apply(self, run: str, event: protocol.Event, files: FileStore) -> None:
        self.apply_batch(run, [event], files)

    def apply_batch(self, run: str, events: Sequence[protocol.Event], files: FileStore) -> None:
        try:
            self.inner.apply_batch(run, events, files)
        except PartlyApplied as partly:
            self._record(run, events[: partly.count])
            raise
        self._record(run, events)

    def _record(self, run: str, events: Sequence[protocol.Event]) -> None:
        now = time.time()
        for event in events:
            if isinstance(event, protocol.Scalar):
                self.applied_s.append(now - event.ts)
                self._pending.setdefault(run, []).append(event.ts)

    def checkpoint(self, run: str) -> None:
        pending = self._pending.pop(run, [])
        self.inner.checkpoint(run)
        now = time.time()
        self.durable_s += [now - ts for ts in pending]

    def abort(self, run: str, reason: str) -> None:
        self.inner.abort(run, reason)

    def close(self) -> None:
        self.inner.close()


def serve_recording(bind: str, data_dir: Path, out: Path) -> None:
    """Run a ClearML-offline collector whose backend is timed; write the timings on SIGTERM."""
    from collector.config import CollectorConfig
    from collector.service.server import Collector, make_backend

    config = CollectorConfig.from_env(bind=bind, data_dir=data_dir, backend="clearml", offline=True)
    recorder = LatencyRecorder(make_backend(config))
    collector = Collector(config, backend=recorder)
    signal.signal(signal.SIGTERM, lambda _signum, _frame: collector.request_stop())
    collector.run()
    out.write_text(json.dumps({"applied_s": recorder.applied_s, "durable_s": recorder.durable_s}))


def _clearml_environ(tmp: Path) -> dict[str, str]:
    conf = tmp / "clearml.conf"
    conf.write_text("sdk {}\n")  # nothing from ~/clearml.conf
    return {
        **env(),
        "CLEARML_OFFLINE_MODE": "1",
        "CLEARML_CACHE_DIR": str(tmp / "clearml-cache"),
        "CLEARML_CONFIG_FILE": str(conf),
    }


@contextlib.contextmanager
def clearml_collector(
    tmp: Path, record: Path | None = None, server: Any = None
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A collector process with the ClearML backend in ``tmp``; stopped on exit.

    Offline, or online against ``server`` (a ``ClearMLServerDouble``). With ``record``, it is
    :func:`serve_recording` (offline) and writes its timings there when stopped.
    """
    tmp.mkdir(parents=True, exist_ok=True)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    environ = _clearml_environ(tmp)
    if server is not None:
        environ = {**environ, **server.env()}
    if record is None:
        proc = start_collector(
            endpoint,
            tmp / "data",
            tmp / "collector.log",
            "--backend",
            "clearml",
            *(["--offline"] if server is None else []),
            environ=environ,
        )
    else:
        command = [sys.executable, __file__, "--bind", endpoint, "--data-dir", str(tmp / "data")]
        with (tmp / "collector.log").open("ab") as log:
            proc = subprocess.Popen(
                [*command, "--record", str(record)], env=environ, stdout=log, stderr=subprocess.STDOUT
            )
    try:
        wait_ready(endpoint, proc, timeout=60)
        yield endpoint, proc
    finally:
        try:
            stop(proc, timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise RuntimeError(
                f"the collector ignored SIGTERM for 120 s and was killed (log: {tmp})"
            ) from None


def _totals(endpoint: str) -> tuple[int, int, int]:
    """Runs, events journaled and events applied, over every run the collector knows."""
    reply = status(endpoint, timeout=10)
    if reply is None:
        return 0, 0, 0
    return len(reply.runs), sum(r.journaled for r in reply.runs), sum(r.applied for r in reply.runs)


def _wait_applied(endpoint: str, runs: int, events: int, timeout: float) -> None:
    """Until the collector knows ``runs`` runs and has applied ``events`` events and all it journaled."""

    def done() -> bool:
        n, journaled, applied = _totals(endpoint)
        return n >= runs and applied >= max(events, journaled)

    wait_for(done, timeout, f"{runs} runs and {events} events to be applied", interval=0.2)


def _last_closed(data_dir: Path) -> float:
    """When the backend closed its last run's task (the last event applied, each run's close).

    From the runs' state files, which the backend writes with ``time.time()`` as the close
    returns: exact, where the status poll that saw the end would add its own delay (its replies
    take up to seconds while 100 producers keep the collector busy).
    """
    closed = [
        state.closed
        for path in (data_dir / paths.CLEARML).glob("*.json")
        if (state := clearml_state.load(path.parent, path.stem)) is not None
    ]
    if not closed or min(closed) == 0:
        raise RuntimeError(f"a run in {data_dir} is not closed")
    return max(closed)


def _cpu_s(proc: Any) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def _cpu_sum(procs: list[Any]) -> float:
    return sum(_cpu_s(proc) for proc in procs)


# --------------------------------------------------------------------------------- producers


def _producer(
    endpoint: str,
    spool: str,
    names: list[str],
    events: int,
    rate: float,
    tickets: Any,
    go: EventType,
    halt: EventType,
    results: Any,
    release: EventType,
) -> None:
    """One producer process (spawned): opens its runs, waits for ``go``, sends, closes, reports.

    It then waits for ``release`` before it exits: 100 interpreters tearing down at once would
    take the cores from the collector while it still applies the runs' closes.

    Each run is opened on a ticket from the parent (see :class:`Producers`). ``rate`` 0:
    ``events`` scalars as fast as acknowledgements allow (one run); otherwise every run sends one
    scalar each ``1 / rate`` seconds until ``events`` each were sent or ``halt`` is set.
    """
    from producer import Run

    runs = []
    for name in names:
        tickets.get()
        runs.append(Run(project=PROJECT, name=name, endpoint=endpoint, spool_dir=spool, flush_timeout=600))
    results.put(("ready", 0, 0.0))
    go.wait()
    acked = sent = 0
    if rate == 0:
        _, _, acked = scalar_bursts(runs[0], events, burst=max(500, min(20_000, events // 4)))
    else:
        started = time.monotonic()
        while not halt.is_set() and (events == 0 or sent < events):
            for run in runs:
                run.scalar("load", "value", float(sent), sent)
            sent += 1
            halt.wait(max(0.0, started + sent / rate - time.monotonic()))
    finished = time.time()
    delivered = all(run.close() for run in runs)
    results.put(("done" if delivered else "undelivered", acked, finished))
    release.wait(900)


class Producers:
    """``runs`` runs over at most :data:`MAX_PROCESSES` spawned producer processes.

    Runs are opened one at a time, each once the collector has applied the one before, so that
    task creation stays out of what is timed; ``all_at_once`` opens them together instead (6
    bursts of 10 runs and 2 of 100 ran clean here since the backend creates ClearML's upload
    pools before any applier thread). Leaving the ``with`` block kills what is left.
    """

    def __init__(
        self, endpoint: str, tmp: Path, runs: int, events: int, rate: float, *, all_at_once: bool = False
    ) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.go, self.halt, self.results, tickets = ctx.Event(), ctx.Event(), ctx.Queue(), ctx.Queue()
        self.release = ctx.Event()
        count = min(runs, MAX_PROCESSES)
        per = math.ceil(runs / count)
        names = [f"load{i:03d}" for i in range(runs)]
        shared = (events, rate, tickets, self.go, self.halt, self.results, self.release)
        self.procs = [
            ctx.Process(
                target=_producer,
                args=(endpoint, str(tmp / "spool" / str(p)), names[p * per : (p + 1) * per], *shared),
                daemon=True,
            )
            for p in range(count)
            if names[p * per : (p + 1) * per]
        ]
        for proc in self.procs:
            proc.start()
        for opened in range(1, runs + 1):
            tickets.put(opened)
            if not all_at_once:
                _wait_applied(endpoint, opened, opened, timeout=120)
        self._collect("ready", timeout=300)
        self.started = 0.0

    def __enter__(self) -> Producers:
        return self

    def __exit__(self, *_: object) -> None:
        self.release.set()
        for proc in self.procs:
            proc.join(timeout=60)
        for proc in self.procs:
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=10)

    def start(self) -> None:
        """Let every process send (they all wait for this)."""
        self.started = time.time()
        self.go.set()

    def finish(self, timeout: float = 900, *, halt: bool = False) -> list[tuple[str, int, float]]:
        """Wait for every process to end (``halt``: tell paced ones to stop now).

        Returns (outcome, events acknowledged, end time) per process. The processes exit when
        the ``with`` block is left.
        """
        if halt:
            self.halt.set()
        return self._collect("done", timeout)

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]

    def _collect(self, what: str, timeout: float) -> list[tuple[str, int, float]]:
        deadline = time.monotonic() + timeout
        out: list[tuple[str, int, float]] = []
        while len(out) < len(self.procs):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (not any(p.is_alive() for p in self.procs) and self.results.empty()):
                raise RuntimeError(f"only {len(out)} of {len(self.procs)} producers reported {what!r}")
            with contextlib.suppress(Exception):  # queue.Empty: look at the processes again
                out.append(self.results.get(timeout=min(remaining, 1.0)))
        return out


# ------------------------------------------------------------------------------ measurements


@dataclass(frozen=True)
class Throughput:
    producers: int
    events: int
    acked_per_s: float
    applied_per_s: float
    cpu_s_per_1000: float
    collector_peak_mb: float
    producers_peak_mb: float
    #: ``offline`` (session on disk) or ``online`` (the ClearML server double, in this process).
    mode: str = "offline"
    #: A sampling profile of the collector over the measurement (None without py-spy).
    profile: Profile | None = None
    #: CPU s per 1,000 events of the producer processes (user + system), over the same span.
    producers_cpu_s_per_1000: float = 0.0
    #: Online: of this process, where the server double runs (None offline).
    double_cpu_s_per_1000: float | None = None
    #: Of :func:`median_throughput`: how many measurements, and the range of acked/s and applied/s.
    tries: int = 1
    acked_range: tuple[float, float] = (0.0, 0.0)
    applied_range: tuple[float, float] = (0.0, 0.0)


def median_throughput(tries: Sequence[Throughput]) -> Throughput:
    """The measurement with the median applied/s (the lower middle of an even count), with the
    range of all of them and the profile of whichever had one. On shared cores one measurement
    of 100 producers varies by a quarter between runs of the same code."""
    ordered = sorted(tries, key=lambda t: t.applied_per_s)
    middle = ordered[(len(ordered) - 1) // 2]
    acked = [t.acked_per_s for t in tries]
    return dataclasses.replace(
        middle,
        profile=next((t.profile for t in tries if t.profile is not None), None),
        tries=len(tries),
        acked_range=(min(acked), max(acked)),
        applied_range=(ordered[0].applied_per_s, ordered[-1].applied_per_s),
    )


def throughput(
    tmp: Path, producers: int, total: int, *, online: bool = False, profile: bool = False
) -> Throughput:
    """``total`` scalars split over ``producers`` processes, each as fast as it can.

    ``online``: into the ClearML server double (run in this process); ``profile``: the collector
    sampled by py-spy from the start signal until everything was applied.
    """
    import psutil

    with contextlib.ExitStack() as stack:
        server = stack.enter_context(ClearMLServerDouble()) if online else None
        endpoint, proc = stack.enter_context(clearml_collector(tmp, server=server))
        collector, bench = psutil.Process(proc.pid), psutil.Process()
        with Producers(endpoint, tmp, producers, total // producers, rate=0) as load:
            peak = _PeakSum([proc.pid], load.pids())
            producing = [psutil.Process(pid) for pid in load.pids()]
            cpu0, producers0, bench0 = _cpu_s(collector), _cpu_sum(producing), _cpu_s(bench)
            mode = "online" if online else "offline"
            sampler = (
                Sampler(proc.pid, tmp / "profile.txt", f"{producers} producers, {mode}") if profile else None
            )
            load.start()
            ended = load.finish()
            acked = sum(n for _, n, _ in ended)
            acked_s = max(t for _, _, t in ended) - load.started
            _wait_applied(endpoint, producers, acked, timeout=900)
            applied_s = _last_closed(tmp / "data") - load.started
            cpu = _cpu_s(collector) - cpu0
            producers_cpu = _cpu_sum(producing) - producers0  # still alive: they wait for release
            bench_cpu = _cpu_s(bench) - bench0
            sampled = sampler.stop() if sampler is not None else None
            collector_peak, producers_peak = peak.stop()
    return Throughput(
        producers,
        acked,
        acked / acked_s,
        acked / applied_s,
        cpu / acked * 1000,
        collector_peak,
        producers_peak,
        mode,
        sampled,
        producers_cpu / acked * 1000,
        bench_cpu / acked * 1000 if online else None,
    )


@dataclass(frozen=True)
class Latency:
    producers: int
    rate: float
    seconds: float
    events: int
    applied_p50_ms: float
    applied_p99_ms: float
    durable_p50_ms: float
    durable_p99_ms: float


def latency(tmp: Path, producers: int, rate: float, seconds: float) -> Latency:
    """``producers`` runs, each one scalar every ``1 / rate`` s for ``seconds``; hook-to-ClearML times."""
    record = tmp / "latency.json"
    events = int(rate * seconds)
    with clearml_collector(tmp, record=record) as (endpoint, _):
        with Producers(endpoint, tmp, producers, events, rate) as load:
            load.start()
            load.finish(timeout=seconds + 600)
        _wait_applied(endpoint, producers, producers * (events + 2), timeout=600)
    timings = json.loads(record.read_text())
    applied = [t * 1e3 for t in timings["applied_s"]]
    durable = [t * 1e3 for t in timings["durable_s"]]
    return Latency(
        producers,
        rate,
        seconds,
        len(applied),
        percentile(applied, 50),
        percentile(applied, 99),
        percentile(durable, 50),
        percentile(durable, 99),
    )


@dataclass(frozen=True)
class Scaling:
    runs: int
    processes: int
    idle_mb: float
    rss_mb: float
    rss_max_mb: float
    cpu_percent: float
    threads: int
    backlog: int
    producers_mb: float


def scaling(tmp: Path, runs: int, rate: float, window: float) -> Scaling:
    """``runs`` open runs at ``rate`` scalars/s each; the collector over ``window`` seconds."""
    import psutil

    with clearml_collector(tmp) as (endpoint, proc):
        collector = psutil.Process(proc.pid)
        idle = collector.memory_info().rss / 2**20
        with Producers(endpoint, tmp, runs, 0, rate) as load:
            load.start()
            _wait_applied(endpoint, runs, 2 * runs, timeout=600)  # every run sent a scalar
            time.sleep(2.0)  # what opening the runs left to do
            cpu0, t0 = _cpu_s(collector), time.monotonic()
            rss: list[float] = []
            threads = 0
            while time.monotonic() - t0 < window:
                rss.append(collector.memory_info().rss / 2**20)
                threads = max(threads, collector.num_threads())
                time.sleep(0.5)
            cpu = (_cpu_s(collector) - cpu0) / (time.monotonic() - t0) * 100
            _, journaled, applied = _totals(endpoint)
            producers_mb = _rss_sum(load.pids())
            load.finish(halt=True)
    return Scaling(
        runs,
        len(load.procs),
        idle,
        statistics.mean(rss),
        max(rss),
        cpu,
        threads,
        journaled - applied,
        producers_mb,
    )


def _rss_sum(pids: list[int]) -> float:
    import psutil

    total = 0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            total += psutil.Process(pid).memory_info().rss
    return total / 2**20


class _PeakSum:
    """Peak resident memory of one process and of a group of processes (summed), sampled at 10 Hz."""

    def __init__(self, one: list[int], group: list[int]) -> None:
        import threading

        self._sets = (one, group)
        self._peaks = [0.0, 0.0]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            for i, pids in enumerate(self._sets):
                self._peaks[i] = max(self._peaks[i], _rss_sum(pids))

    def stop(self) -> tuple[float, float]:
        self._stop.set()
        self._thread.join()
        return self._peaks[0], self._peaks[1]


def main() -> int:
    ap = argparse.ArgumentParser(description="the timed collector of compare.py (run by it)")
    ap.add_argument("--bind", required=True)
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--record", type=Path, required=True)
    args = ap.parse_args()
    serve_recording(args.bind, args.data_dir, args.record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
