"""Burst benchmark: many trainings start at once against one collector; do they deliver at exit?

Not part of the test suite (it reports, it does not assert). ``N`` producer processes
(``tests/support/produce.py``: scalars, debug images, a model) start at the same instant against one
collector (the ClearML backend in offline mode, as deployed, or ``--backend jsonl``). For each,
it reports how long ``close()`` took and whether everything was acknowledged within the
producer's flush timeout, then what reached the collector. Run
``python tests/benchmarks/bench_burst.py [--producers 20] [--flush-timeout 5]``.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path[:0] = [
    str(Path(__file__).resolve().parents[2]),
    str(Path(__file__).resolve().parents[1] / "support"),
]

from e2e import free_port, produce, start_collector, status, stop, wait_ready  # noqa: E402

_CLOSE = re.compile(r"close returned delivered=(True|False) after ([0-9.]+)s")
_HANDED = re.compile(r"handed over (\d+) events")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--producers", type=int, default=20)
    ap.add_argument("--events", type=int, default=200)
    ap.add_argument("--file-every", type=int, default=50)
    ap.add_argument("--model-bytes", type=int, default=6 * 1024 * 1024)
    ap.add_argument("--flush-timeout", type=float, default=5.0)
    ap.add_argument("--backend", choices=["clearml", "jsonl"], default="clearml")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-burst-") as tmp:
        root = Path(tmp)
        endpoint = f"tcp://127.0.0.1:{free_port()}"
        environ = {
            **os.environ,
            "CLEARML_OFFLINE_MODE": "1",
            "CLEARML_CACHE_DIR": str(root / "clearml-cache"),
            "YOLO_OFFLINE": "true",
        }
        collector = start_collector(
            endpoint, root / "data", root / "collector.log", "--backend", args.backend, environ=environ
        )
        try:
            wait_ready(endpoint, collector, timeout=60)
            watched = psutil.Process(collector.pid)
            cpu_before = sum(watched.cpu_times()[:2])
            started = time.monotonic()
            procs = {
                f"burst-{i}": produce(
                    endpoint,
                    root / "spool",
                    root / "work",
                    f"burst-{i}",
                    args.events,
                    "--file-every",
                    str(args.file_every),
                    "--model-bytes",
                    str(args.model_bytes),
                    "--flush-timeout",
                    str(args.flush_timeout),
                )
                for i in range(args.producers)
            }
            rows = []
            problems: list[str] = []
            for name, proc in procs.items():
                out = proc.communicate(timeout=300)[0].decode()
                close = _CLOSE.search(out)
                rows.append(
                    (
                        name,
                        proc.returncode,
                        close.group(1) if close else "?",
                        close.group(2) if close else "?",
                    )
                )
                if not close or close.group(1) != "True":
                    problems.append(f"{name}: " + " | ".join(out.splitlines()[-4:]))
            wall = time.monotonic() - started
            collector_cpu = sum(watched.cpu_times()[:2]) - cpu_before
            reply = status(endpoint, timeout=10)
        finally:
            stop(collector)
        reached = {r.name for r in reply.runs} if reply else set()
        delivered = sum(1 for row in rows if row[2] == "True")
        print(
            f"{args.producers} producers, {args.events} events each, a {args.model_bytes} B model, "
            f"flush timeout {args.flush_timeout} s, backend {args.backend}"
        )
        print(
            f"delivered within the flush timeout: {delivered}/{len(rows)}; reached the collector: "
            f"{len(reached)}/{len(rows)}; all exited after {wall:.1f} s"
        )
        closes = sorted(float(row[3]) for row in rows if row[3] != "?")
        print(f"collector CPU during the burst: {collector_cpu:.1f} s of {wall:.1f} s wall (2 cores here)")
        if closes:
            print(f"close(): median {closes[len(closes) // 2]:.2f} s, max {closes[-1]:.2f} s")
        for name, rc, ok, seconds in rows:
            if ok != "True":
                print(f"  {name}: rc {rc}, delivered={ok} after {seconds} s, reached={name in reached}")
        for line in problems:
            print(f"  {line[:400]}")
        spool = root / "spool"
        left = os.listdir(spool) if spool.is_dir() else []
        print(f"outboxes left in the spool: {len(left)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
