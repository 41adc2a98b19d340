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
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil

sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parents[1])]

from e2e import free_port, start_collector, stop, wait_ready  # noqa: E402

from producer import Run  # noqa: E402


def percentile(values: list[float], q: float) -> float:
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
        self._stop.set()
        self._thread.join()
        return [(peak - base) / 2**20 for peak, base in zip(self.peak, self.base, strict=True)]


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
        endpoint = f"tcp://127.0.0.1:{free_port()}"
        os.environ["CLEARML_RELAY_SPOOL_DIR"] = str(tmp / "spool")
        collector = start_collector(endpoint, tmp / "data", tmp / "collector.log")
        try:
            wait_ready(endpoint, collector)

            # 1. Run.scalar latency and acknowledged events/s, collector on the same 2 cores.
            # Bursts of 20,000 calls (each far faster than any training loop) with a flush after
            # each, so the producer's hand-off bound is never hit; only acknowledged events count.
            run = Run(project="bench", name="scalars", endpoint=endpoint, flush_timeout=600)
            assert run.client is not None
            before = run.client.stats()
            started = time.perf_counter()
            lat: list[float] = []
            burst = 20_000
            for b in range(n_scalar // burst):
                lat += time_calls(
                    lambda i, b=b, r=run: r.scalar("train", "loss", float(i), b * burst + i), burst
                )
                assert run.flush(timeout=600), "scalars were not acknowledged"
            seconds = time.perf_counter() - started
            after = run.client.stats()
            acked = after.get("events_acked", 0) - before.get("events_acked", 0)
            dropped = after.get("dropped_overflow", 0) - before.get("dropped_overflow", 0)
            assert dropped == 0, f"{dropped} events dropped: the benchmark overran the hand-off bound"
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
            paced = percentile(time_calls(lambda i, r=run: r.scalar("train", "lr", 0.1, i), 300, 0.01), 99)
            rows.append(("Run.scalar p99, paced 10 ms", "p99 <= 50 us", f"{paced:.1f} us", _ok(paced <= 50)))
            run.close()

            # 2. Run.image / Run.model latency against file size, twice: calls back to back (every
            # file copy and transfer competing with the caller for 2 cores, the worst case) and
            # paced like a training loop (one call every 20 ms while earlier files still copy).
            for size in sizes:
                path = tmp / f"file-{size}"
                with path.open("wb") as f:
                    f.truncate(size)  # sparse: the call must not care how big the file is
                calls = 5 if size >= 100_000_000 else 200
                for pace in (0.0, 0.02):
                    run = Run(project="bench", name=f"files-{size}", endpoint=endpoint, flush_timeout=600)
                    img = time_calls(lambda i, p=path, r=run: r.image("Mosaic", "batch", i, p), calls, pace)
                    mdl = time_calls(lambda i, p=path, r=run: r.model(p, name=f"m{i}.pt"), calls, pace)
                    worst = percentile(img + mdl, 99)
                    how = "paced 20 ms" if pace else "back to back"
                    rows.append(
                        (
                            f"Run.image/Run.model p99, {size / 1e6:g} MB file, {how}",
                            "p99 <= 100 us",
                            f"{worst:.1f} us",
                            _ok(worst <= 100),
                        )
                    )
                    run.close()
                path.unlink()

            # 3. One large file: delivery rate and memory growth on both sides.
            path = tmp / "big.pt"
            with path.open("wb") as f:
                chunk = os.urandom(1 << 20)
                for _ in range(big // len(chunk)):
                    f.write(chunk)
            watch = PeakRss(os.getpid(), collector.pid)
            run = Run(project="bench", name="big", endpoint=endpoint, flush_timeout=600)
            started = time.perf_counter()
            run.model(path, name="big.pt")
            assert run.flush(timeout=600), "the large file was not acknowledged"
            seconds = time.perf_counter() - started
            growth = watch.growth_mb()
            mbps = path.stat().st_size / 1e6 / seconds
            rows.append(
                (
                    f"{path.stat().st_size / 1e9:g} GB file delivered",
                    ">= 200 MB/s",
                    f"{mbps:,.0f} MB/s",
                    _ok(mbps >= 200),
                )
            )
            rows.append(
                (
                    "RSS growth producer / collector",
                    "< 100 MB each",
                    f"{growth[0]:.0f} / {growth[1]:.0f} MB",
                    _ok(max(growth) < 100),
                )
            )
            run.close()
        finally:
            stop(collector)

    width = [max(len(r[i]) for r in rows) for i in range(4)]
    print(f"clearml-relay transport benchmark ({os.cpu_count()} cores, python {sys.version.split()[0]})")
    for r in [("measure", "target", "measured", "meets"), *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, width, strict=True)))
    return 0


def _ok(flag: bool) -> str:
    return "yes" if flag else "NO"


if __name__ == "__main__":
    sys.exit(main())
