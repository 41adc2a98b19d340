"""``clearml-relay demo``: a collector and a tiny YOLO training that logs through it, offline.

The demo owns nothing but its presentation: it starts a :class:`~collector.service.server.Collector`
(ClearML backend, offline mode) on a free loopback port, trains a tiny YOLO model on a generated
dataset in a child process with the hooks attached (:func:`producer.attach`), waits until the
collector has applied every event, and prints what landed in the run's ClearML offline session
and how long the hooks took on the training thread against the training time. Nothing leaves
this machine: Ultralytics and ClearML are pointed at private directories under the work folder.
"""

from __future__ import annotations

import argparse
import collections
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from collector.backends.clearml import state as clearml_state
from collector.config import CollectorConfig
from collector.service.demo_data import make_dataset, only_clearml_integration, tiny_training
from collector.service.server import Collector
from collector.storage import paths

PROJECT = "clearml-relay demo"
TASK = "yolov8n-synthetic"


def _isolate(work: Path) -> None:
    """Offline everything, in private directories: set before clearml or ultralytics load."""
    import matplotlib  # noqa: PLC0415  (only to find the font it ships)

    yolo = work / "yolo-config"
    (yolo / "Ultralytics").mkdir(parents=True, exist_ok=True)
    font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for target in (yolo / "Arial.ttf", yolo / "Ultralytics" / "Arial.ttf"):
        shutil.copy(font, target)  # Ultralytics would download its font otherwise
    os.environ.update(
        {
            "YOLO_OFFLINE": "true",
            "YOLO_CONFIG_DIR": str(yolo),
            "CLEARML_OFFLINE_MODE": "1",
            "CLEARML_CACHE_DIR": str(work / "clearml-cache"),
            "CLEARML_RELAY_SPOOL_DIR": str(work / "spool"),
        }
    )


def _train(endpoint: str, data: str, work: str, epochs: int) -> None:
    """The training process: Ultralytics and the producer's hooks, nothing of the collector."""
    from ultralytics.models import YOLO  # noqa: PLC0415

    import producer  # noqa: PLC0415

    only_clearml_integration()
    model = YOLO("yolov8n.yaml")  # built from its config: no weights to download
    hooks = producer.attach(model, endpoint=endpoint, project=PROJECT, name=TASK)
    started = time.perf_counter()
    model.train(data=data, **tiny_training("detect", Path(work) / "runs", TASK, epochs))
    train_seconds = time.perf_counter() - started
    closed = hooks.wait(timeout=120)
    timings = {event: sorted(values) for event, values in hooks.timings().items()}
    run = hooks.run
    (Path(work) / "training.json").write_text(
        json.dumps(
            {
                "run": run.id if run is not None else "",
                "closed": closed,
                "train_seconds": train_seconds,
                "hooks": {
                    event: {
                        "calls": len(values),
                        "total": sum(values),
                        "p50": values[len(values) // 2],
                        "p99": values[min(len(values) - 1, int(len(values) * 0.99))],
                    }
                    for event, values in timings.items()
                    if values
                },
            }
        )
    )


def _landed(session: Path) -> dict[str, int]:
    """Counts per kind of event in an offline session."""
    events = [e for line in (session / "metrics.jsonl").read_text().splitlines() for e in json.loads(line)]
    kinds: collections.Counter[str] = collections.Counter()
    for event in events:
        if event["type"] == "training_stats_scalar":
            kinds["single values" if event["metric"] == "Summary" else "scalars"] += 1
        else:
            kinds[
                {"training_debug_image": "debug images", "plot": "plots"}.get(event["type"], event["type"])
            ] += 1
    log = session / "log.jsonl"
    if log.exists():
        reports = [r for line in log.read_text().splitlines() for r in json.loads(line)]
        # A report holds the lines the run's thread gathered between two sends (its batching
        # varies from run to run): count the lines.
        kinds["console lines"] = sum(len(str(r.get("msg", "")).splitlines()) for r in reports)
    task = json.loads((session / "task.json").read_text())
    kinds["output models"] = len(task.get("offline_output_models") or [])
    kinds["hyperparameters"] = len(task.get("hyperparams", {}).get("General", {}))
    return dict(kinds)


def _wait_done(collector: Collector, run: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        info = next((r for r in collector.status().runs if r.run == run), None)
        if info is not None and info.state != "open" and info.applied >= info.journaled:
            return info
        if time.monotonic() > deadline:
            return info
        time.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the exit status (0 when everything landed)."""
    parser = argparse.ArgumentParser(prog="clearml-relay demo", description=__doc__)
    parser.add_argument(
        "--workdir", type=Path, help="keep everything here (default: a new temporary directory)"
    )
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args(argv)
    work = (args.workdir or Path(tempfile.mkdtemp(prefix="clearml-relay-demo-"))).absolute()
    work.mkdir(parents=True, exist_ok=True)
    _isolate(work)
    data = make_dataset(work / "data", "detect")
    config = CollectorConfig.from_env(
        bind="tcp://127.0.0.1:0", data_dir=work / "collector", backend="clearml", offline=True
    )
    with Collector(config) as collector:
        endpoint = collector.bound_endpoint
        print(f"collector  listening on {endpoint}, ClearML offline, data in {config.data_dir}", flush=True)
        print(f"training   YOLOv8n on a generated dataset, {args.epochs} epochs on CPU ...", flush=True)
        child = multiprocessing.get_context("spawn").Process(
            target=_train, args=(endpoint, str(data), str(work), args.epochs)
        )
        child.start()
        child.join(timeout=900)
        if child.exitcode != 0:
            print(f"training process failed (exit code {child.exitcode})", file=sys.stderr)
            return 1
        training = json.loads((work / "training.json").read_text())
        run = training["run"]
        info = _wait_done(collector, run, timeout=120)
    state = clearml_state.load(config.data_dir / paths.CLEARML, run)
    if state is None or info is None:
        print(f"run {run} never reached the ClearML backend", file=sys.stderr)
        return 1
    hooks = training["hooks"]
    in_hooks = sum(h["total"] for h in hooks.values())
    print(
        f"trained    in {training['train_seconds']:.1f} s; the hooks took {in_hooks * 1e3:.1f} ms of it "
        f"on the training thread ({in_hooks / training['train_seconds']:.3%})"
    )
    for event, h in sorted(hooks.items()):
        print(
            f"  {event:28s} {h['calls']:4d} calls  p50 {h['p50'] * 1e6:8.1f} us  p99 {h['p99'] * 1e6:8.1f} us"
        )
    print(f"run        {run}: {state.state}, {info.applied} events applied")
    print(f"task       {state.task_id} in project '{state.project}', task '{state.name}'")
    landed = _landed(Path(state.session))
    print("landed     " + ", ".join(f"{n} {kind}" for kind, n in sorted(landed.items())))
    print(f"session    {state.session}")
    ok = state.state == "completed" and state.closed > 0 and landed.get("output models") == 1
    print("result     " + ("everything landed" if ok else "INCOMPLETE: see the log above"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
