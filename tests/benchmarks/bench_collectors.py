"""Several collectors: events/s acknowledged and applied, and 1 GB files, with 1, 2 and 3 of them.

Not part of the test suite (it reports, it does not assert). ``python tests/benchmarks/bench_collectors.py``
starts N collector processes (ClearML backend, offline, each its own data directory) and, per N:

- ``--producers`` producer processes (``tests/support/produce.py``), each given the list of the
  N endpoints and a run id homed on each collector in turn, sending ``--events`` scalars in all
  as fast as acknowledgements allow: acknowledged events/s (start to the last producer's close)
  and applied events/s (until every collector has applied every event of its runs);
- N files of 1 GB at once, one run homed on each collector: MB/s over all of them, from the
  producers' start to the last file applied (their writing the random files included).

All processes share this machine's cores (2 here): it shows what one host does, not a cluster.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "support"), str(ROOT / "tests" / "benchmarks")]

from compare_collector import clearml_collector  # noqa: E402
from e2e import produce, run_homed_on, status  # noqa: E402


def _applied(endpoints: list[str]) -> tuple[int, int]:
    applied = journaled = 0
    for endpoint in endpoints:
        reply = status(endpoint, timeout=5)
        if reply is not None:
            applied += sum(r.applied for r in reply.runs)
            journaled += sum(r.journaled for r in reply.runs)
    return applied, journaled


def _round(
    work: Path, endpoints: list[str], producers: int, events: int, model_bytes: int, tag: str
) -> tuple[float, float]:
    """Seconds to the last close, and to everything applied."""
    listed = ",".join(endpoints)
    procs = []
    started = time.monotonic()
    for i in range(producers):
        name = f"{tag}-{i}"
        run = run_homed_on(endpoints[i % len(endpoints)], tuple(endpoints), name)
        args = ["--run-id", run, "--flush-timeout", "600"]
        if model_bytes:
            args += ["--model-bytes", str(model_bytes)]
        procs.append(
            produce(listed, work / "spool" / name, work / "produce", name, events // producers, *args)
        )
    for proc in procs:
        proc.communicate(timeout=1200)
        assert proc.returncode == 0
    acked = time.monotonic() - started
    while True:
        applied, journaled = _applied(endpoints)
        if applied >= journaled > 0:
            return acked, time.monotonic() - started
        time.sleep(0.2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--collectors", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--producers", type=int, default=12)
    ap.add_argument("--events", type=int, default=120_000)
    ap.add_argument("--file-mb", type=int, default=1000)
    args = ap.parse_args()
    print(f"clearml-relay with several collectors: {os.cpu_count()} cores, every process on them")
    print("| collectors | events | acked/s | applied/s | 1 GB files at once | MB/s (all) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for count in args.collectors:
        with tempfile.TemporaryDirectory(prefix="bench-collectors-") as tmp:
            work = Path(tmp)
            with contextlib.ExitStack() as stack:
                endpoints = [stack.enter_context(clearml_collector(work / f"c{i}"))[0] for i in range(count)]
                acked, applied = _round(work, endpoints, args.producers, args.events, 0, "scalars")
                events = args.events // args.producers * args.producers
                took, _ = _round(work, endpoints, count, count, args.file_mb * 1_000_000, "files")
                megabytes = count * args.file_mb
                print(
                    f"| {count} | {events:,} | {events / acked:,.0f} | {events / applied:,.0f} | {count} "
                    f"| {megabytes / took:,.0f} |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
