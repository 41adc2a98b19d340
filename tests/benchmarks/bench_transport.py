"""Transport benchmark: hook latency, acknowledged events/s, large-file throughput and memory.

Not part of the test suite (timings on shared machines are noisy; this reports, it does not
assert). Run ``make bench`` or ``python tests/benchmarks/bench_transport.py [--quick]``; it prints
a table with each target next to the measured figure.

The collector runs as a separate process (as in production) with the JSONL record backend; the
producer is this process, through the public ``Run`` API. Latencies are per call on the calling
thread (what a training loop pays); throughput and transfer rates are measured from the first
call to the collector's acknowledgement of the last event (``Run.flush``).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

sys.path[:0] = [
    str(Path(__file__).resolve().parents[2]),
    str(Path(__file__).resolve().parents[1] / "support"),
]

from e2e import free_port, start_collector, stop, wait_ready  # noqa: E402

from producer import Run  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile of ``values`` (nearest rank, 0 < q <= 100)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def time_calls(call: Callable[[int], None], n: int, pace: float = 0.0) -> list[float]:
    """Microseconds per call, one timing per call; ``pace`` seconds between calls (0: none)."""
    out = []
    clock = time.perf_counter_ns
    for i in range(n):
        t0 = clock()
        call(i)
        out.append((clock() - t0) / 1000)
        if pace:
            time.sleep(pace)  # the training loop's own work between two hook calls
    return out


class PeakRss:
    """Samples the resident memory of some processes every 20 ms in a thread."""

    def __init__(self, *pids: int) -> None:
        self.procs = [psutil.Process(pid) for pid in pids]
        self.base = [p.memory_info().rss for p in self.procs]
        self.peak = list(self.base)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            for i, p in enumerate(self.procs):
                self.peak[i] = max(self.peak[i], p.memory_info().rss)

    def growth_mb(self) -> list[float]:
        """Stop sampling; the growth of each process's peak over its resident memory at the start."""
        self._stop.set()
        self._thread.join()
        return [(peak - base) / 2**20 for peak, base in zip(self.peak, self.base, strict=True)]


@contextlib.contextmanager
def transport_collector(tmp: Path, *args: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A collector process on a free port (JSONL backend unless ``args`` say otherwise).

    Yields its endpoint and process; this process's producers spool under ``tmp/spool``.
    """
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    os.environ["CLEARML_RELAY_SPOOL_DIR"] = str(tmp / "spool")
    collector = start_collector(endpoint, tmp / "data", tmp / "collector.log", *args)
    try:
        wait_ready(endpoint, collector)
        yield endpoint, collector
    finally:
        stop(collector)


def scalar_bursts(run: Run, n: int, burst: int = 20_000) -> tuple[list[float], float, int]:
    """``n`` ``Run.scalar`` calls in bursts, each followed by a flush; only acknowledged events count.

    Each burst is far faster than any training loop; the flush after it keeps the producer's
    hand-off bound from ever being hit. Returns the microseconds of each call, the seconds from
    the first call to the acknowledgement of the last event, and the events acknowledged.
    """
    client = run.client
    assert client is not None, "the run is disabled"
    before = client.stats()
    started = time.perf_counter()
    lat: list[float] = []
    done = 0
    while done < n:
        count = min(burst, n - done)
        lat += time_calls(functools.partial(_scalar, run, done), count)
        done += count
        assert run.flush(timeout=600), "scalars were not acknowledged"
    seconds = time.perf_counter() - started
    after = client.stats()
    dropped = after.get("dropped_overflow", 0) - before.get("dropped_overflow", 0)
    assert dropped == 0, f"{dropped} events dropped: the benchmark overran the hand-off bound"
    return lat, seconds, after.get("events_acked", 0) - before.get("events_acked", 0)


def _scalar(run: Run, first: int, i: int) -> None:
    run.scalar("train", "loss", float(first + i), first + i)


@dataclass(frozen=True)
class FileLatency:
    """``Run.image`` and ``Run.model`` together, for one file size and calling pattern."""

    size: int
    paced: bool
    calls: int
    p50_us: float
    p99_us: float


def file_call_latency(endpoint: str, tmp: Path, sizes: list[int]) -> list[FileLatency]:
    """``Run.image`` / ``Run.model`` latency against file size, back to back and paced.

    Twice per size: calls back to back (every file copy and transfer competing with the caller
    for the cores, the worst case) and paced like a training loop (one call every 20 ms while
    earlier files still copy). Files are sparse: the call must not care how big the file is.
    """
    out = []
    for size in sizes:
        path = tmp / f"file-{size}"
        with path.open("wb") as f:
            f.truncate(size)
        calls = 5 if size >= 100_000_000 else 200
        for pace in (0.0, 0.02):
            run = Run(project="bench", name=f"files-{size}", endpoint=endpoint, flush_timeout=600)
            img = time_calls(functools.partial(_image, run, path), calls, pace)
            mdl = time_calls(functools.partial(_model, run, path), calls, pace)
            both = img + mdl
            out.append(FileLatency(size, bool(pace), len(both), percentile(both, 50), percentile(both, 99)))
            run.close()
        path.unlink()
    return out


def _image(run: Run, path: Path, i: int) -> None:
    run.image("Mosaic", "batch", i, path)


def _model(run: Run, path: Path, i: int) -> None:
    run.model(path, name=f"m{i}.pt")


@dataclass(frozen=True)
class Transfer:
    """Large files delivered: rate, and resident memory of producer and collector."""

    size: int  # of each file
    seconds: float
    mb_per_s: float  # over all files
    growth_mb: tuple[float, float]  # producer, collector
    peak_mb: tuple[float, float]
    files: int = 1  # each from its own run, all at once


def median_transfer(transfers: list[Transfer]) -> Transfer:
    """The transfer of median rate (the lower middle of an even count)."""
    return sorted(transfers, key=lambda t: t.mb_per_s)[(len(transfers) - 1) // 2]


def _random_file(path: Path, size: int) -> None:
    with path.open("wb") as f:
        chunk = os.urandom(1 << 20)
        for start in range(0, size, len(chunk)):
            f.write(chunk[: size - start])


def big_file_transfer(endpoint: str, tmp: Path, size: int, collector_pid: int, files: int = 1) -> Transfer:
    """Deliver ``files`` model files of ``size`` random bytes, each from its own run, all at once.

    Copy into the outbox, sha256, transfer, the collector's write, verify and fsync: from the
    ``Run.model`` calls to every file acknowledged. Both processes' memory is sampled meanwhile.
    """
    paths = [tmp / f"big{i}.pt" for i in range(files)]
    for path in paths:
        _random_file(path, size)
    os.sync()  # the models are on disk before the calls, as saved checkpoints are: not timed
    watch = PeakRss(os.getpid(), collector_pid)
    runs = [Run(project="bench", name=f"big{i}", endpoint=endpoint, flush_timeout=600) for i in range(files)]
    started = time.perf_counter()
    for run, path in zip(runs, paths, strict=True):
        run.model(path, name=path.name)
    for run in runs:
        assert run.flush(timeout=600), "a large file was not acknowledged"
    seconds = time.perf_counter() - started
    growth = watch.growth_mb()
    for run in runs:
        run.close()
    total = sum(path.stat().st_size for path in paths)
    for path in paths:
        path.unlink()
    return Transfer(
        size,
        seconds,
        total / 1e6 / seconds,
        (growth[0], growth[1]),
        (watch.peak[0] / 2**20, watch.peak[1] / 2**20),
        files,
    )


def disk_write_mb_s(tmp: Path, size: int) -> float:
    """What this disk sustains: ``size`` bytes written and fsynced, twice (the rate of the second)."""
    block = os.urandom(128 * 1024)
    rate = 0.0
    for i in range(2):
        path = tmp / f"disk{i}"
        started = time.perf_counter()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            for _ in range(size // len(block)):
                os.write(fd, block)
            os.fsync(fd)
        finally:
            os.close(fd)
        rate = size / 1e6 / (time.perf_counter() - started)
    for i in range(2):
        (tmp / f"disk{i}").unlink()
    return rate


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="smaller counts and at most 100 MB files")
    args = ap.parse_args()
    n_scalar = 20_000 if args.quick else 200_000
    sizes = [1_000, 1_000_000, 100_000_000] + ([] if args.quick else [1_000_000_000])
    big = 100_000_000 if args.quick else 1_000_000_000
    rows: list[tuple[str, str, str, str]] = []

    with tempfile.TemporaryDirectory(prefix="relay-bench-") as tmp_name:
        tmp = Path(tmp_name)
        with transport_collector(tmp) as (endpoint, collector):
            # 1. Run.scalar latency and acknowledged events/s, collector on the same 2 cores.
            run = Run(project="bench", name="scalars", endpoint=endpoint, flush_timeout=600)
            lat, seconds, acked = scalar_bursts(run, n_scalar)
            rate = acked / seconds
            p99 = percentile(lat, 99)
            rows.append(
                (
                    "Run.scalar p50 / p99",
                    "p99 <= 50 us",
                    f"{percentile(lat, 50):.1f} / {p99:.1f} us",
                    _ok(p99 <= 50),
                )
            )
            rows.append(
                ("acknowledged events/s (1 producer)", ">= 20,000", f"{rate:,.0f}", _ok(rate >= 20_000))
            )
            paced = percentile(time_calls(functools.partial(_scalar, run, 0), 300, 0.01), 99)
            rows.append(("Run.scalar p99, paced 10 ms", "p99 <= 50 us", f"{paced:.1f} us", _ok(paced <= 50)))
            run.close()

            # 2. Run.image / Run.model latency against file size.
            for f in file_call_latency(endpoint, tmp, sizes):
                how = "paced 20 ms" if f.paced else "back to back"
                rows.append(
                    (
                        f"Run.image/Run.model p99, {f.size / 1e6:g} MB file, {how}",
                        "p99 <= 100 us",
                        f"{f.p99_us:.1f} us",
                        _ok(f.p99_us <= 100),
                    )
                )

            # 3. One large file: delivery rate and memory growth on both sides.
            t = big_file_transfer(endpoint, tmp, big, collector.pid)
            rows.append(
                (
                    f"{t.size / 1e9:g} GB file delivered",
                    ">= 200 MB/s",
                    f"{t.mb_per_s:,.0f} MB/s",
                    _ok(t.mb_per_s >= 200),
                )
            )
            rows.append(
                (
                    "RSS growth producer / collector",
                    "< 100 MB each",
                    f"{t.growth_mb[0]:.0f} / {t.growth_mb[1]:.0f} MB",
                    _ok(max(t.growth_mb) < 100),
                )
            )

    width = [max(len(r[i]) for r in rows) for i in range(4)]
    print(f"clearml-relay transport benchmark ({os.cpu_count()} cores, python {sys.version.split()[0]})")
    for r in [("measure", "target", "measured", "meets"), *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, width, strict=True)))
    return 0


def _ok(flag: bool) -> str:
    """The "meets" column: yes, or NO in capitals."""
    return "yes" if flag else "NO"


if __name__ == "__main__":
    sys.exit(main())
