"""Hook benchmark: time each clearml-relay hook on the training thread of real YOLO trainings.

Not part of the test suite (it reports, it does not assert). Run ``make bench`` or
``python tests/benchmarks/bench_hooks.py [--epochs N] [--trainings N]``. A collector (ClearML
backend, offline) runs in this process; each training runs in a fresh child process (one
training per process, as in production: its ``on_pretrain_routine_start`` is the first, cache-cold
pass through the hooks' code) with the isolation of ``clearml-relay demo``. Half of the trainings
register the hooks with ``producer.attach(model)``, half with ``producer.callbacks``. Each hook
call is timed by the hooks themselves (``RelayHooks.timings``); the percentiles are over the
calls of all trainings.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from collector.config import CollectorConfig
from collector.service import demo
from collector.service.demo_data import make_dataset, only_clearml_integration, tiny_training
from collector.service.server import Collector

TARGET_US = 100.0
MODES = ("attach", "callbacks")


def _train(endpoint: str, data: str, work: str, epochs: int, mode: str, index: int) -> None:
    """One training process: the hooks registered as ``mode`` says, their timings to a file."""
    from ultralytics.models import YOLO

    import producer
    from producer.integrations.ultralytics import default_hooks

    only_clearml_integration()
    model = YOLO("yolov8n.yaml")
    name = f"bench-{index}"
    if mode == "attach":
        hooks = producer.attach(model, endpoint=endpoint, project=demo.PROJECT, name=name)
    else:
        os.environ["CLEARML_RELAY_ENDPOINT"] = endpoint
        for event, fn in producer.callbacks.items():
            model.add_callback(event, fn)
        hooks = default_hooks()
    started = time.perf_counter()
    model.train(data=data, **tiny_training("detect", Path(work) / "runs", name, epochs))
    seconds = time.perf_counter() - started
    hooks.wait(timeout=120)
    result = {"train_seconds": seconds, "timings": hooks.timings()}
    (Path(work) / f"training-{index}.json").write_text(json.dumps(result))


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--trainings", type=int, default=6, help="one process each (default 6)")
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="relay-bench-hooks-") as tmp:
        work = Path(tmp)
        demo._isolate(work)
        data = make_dataset(work / "data", "detect")
        config = CollectorConfig.from_env(
            bind="tcp://127.0.0.1:0", data_dir=work / "c", backend="clearml", offline=True
        )
        with Collector(config) as collector:
            for index in range(args.trainings):
                mode = MODES[index % len(MODES)]
                child = multiprocessing.get_context("spawn").Process(
                    target=_train,
                    args=(collector.bound_endpoint, str(data), str(work), args.epochs, mode, index),
                )
                child.start()
                child.join(timeout=3600)
                results.append((mode, json.loads((work / f"training-{index}.json").read_text())))
    seconds = sum(r["train_seconds"] for _, r in results)
    calls: dict[str, list[float]] = {}
    firsts: dict[str, list[float]] = {mode: [] for mode in MODES}
    for mode, result in results:
        for event, values in result["timings"].items():
            calls.setdefault(event, []).extend(values)
        firsts[mode].extend(result["timings"]["on_pretrain_routine_start"])
    total = sum(sum(values) for values in calls.values())
    print(
        f"clearml-relay hook benchmark: YOLOv8n detect, {args.trainings} trainings of {args.epochs} "
        f"epochs (one process each), CPU ({os.cpu_count()} cores)"
    )
    print(f"training {seconds:.1f} s in all; hooks {total * 1e3:.1f} ms ({total / seconds:.4%})")
    header = f"{'hook':28s} {'calls':>5s} {'p50 us':>9s} {'p99 us':>9s} {'max us':>9s}"
    print(f"{header}  p99 <= {TARGET_US:.0f} us")
    for event, values in sorted(calls.items()):
        p99 = _percentile(values, 0.99) * 1e6
        print(
            f"{event:28s} {len(values):5d} {_percentile(values, 0.5) * 1e6:9.1f} {p99:9.1f} "
            f"{max(values) * 1e6:9.1f}  {'meets' if p99 <= TARGET_US else 'MISSES'}"
        )
    for mode, values in firsts.items():
        shown = ", ".join(f"{v * 1e6:.0f}" for v in values)
        print(f"on_pretrain_routine_start with {mode}: {shown} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
