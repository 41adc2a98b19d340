"""Hook benchmark: time each clearml-relay hook on the training thread of a real YOLO training.

Not part of the test suite (it reports, it does not assert). Run ``make bench`` or
``python tests/benchmarks/bench_hooks.py [--epochs N]``. A collector (ClearML backend, offline)
runs in this process; the training runs in a child process with the hooks attached, exactly as
in ``clearml-relay demo``, whose isolation (offline, private directories) it reuses. Each hook
call is timed by the hooks themselves (``RelayHooks.timings``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from collector import demo
from collector.config import CollectorConfig
from collector.demo_data import make_dataset
from collector.server import Collector

TARGET_US = 100.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--epochs", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="relay-bench-hooks-") as tmp:
        work = Path(tmp)
        demo._isolate(work)
        data = make_dataset(work / "data", "detect")
        config = CollectorConfig.from_env(
            bind="tcp://127.0.0.1:0", data_dir=work / "c", backend="clearml", offline=True
        )
        with Collector(config) as collector:
            child = multiprocessing.get_context("spawn").Process(
                target=demo._train, args=(collector.bound_endpoint, str(data), str(work), args.epochs)
            )
            child.start()
            child.join(timeout=3600)
        training = json.loads((work / "training.json").read_text())
    hooks = training["hooks"]
    total = sum(h["total"] for h in hooks.values())
    print(f"clearml-relay hook benchmark: YOLOv8n detect, {args.epochs} epochs, CPU ({os.cpu_count()} cores)")
    seconds = training["train_seconds"]
    print(f"training {seconds:.1f} s; hooks {total * 1e3:.1f} ms ({total / seconds:.3%})")
    print(f"{'hook':28s} {'calls':>5s} {'p50 us':>9s} {'p99 us':>9s}  meets p99 <= {TARGET_US:.0f} us")
    for event, h in sorted(hooks.items()):
        p99 = h["p99"] * 1e6
        meets = "yes" if p99 <= TARGET_US else "NO"
        print(f"{event:28s} {h['calls']:5d} {h['p50'] * 1e6:9.1f} {p99:9.1f}  {meets}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
