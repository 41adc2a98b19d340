"""Plot benchmark: what Ultralytics' drawing costs a training, and what ``plots="collector"`` saves.

Not part of the test suite (it reports, it does not assert). ``python tests/benchmarks/bench_plots.py``
runs a collector (ClearML backend, offline) in this process and each training in a fresh child
process with the isolation of ``clearml-relay demo``, all with clearml-relay's hooks attached:

- ``--profile``: one training per task type with ``plots=True``; every Ultralytics drawing
  function is timed where it is called (the threaded mosaics are drawn on the calling thread
  here, so that their own cost shows: in a real training they draw on a thread of their own and
  compete for the same cores). One table per plot function: calls, seconds, share of the
  training's wall time.
- rounds (the default): the same training with ``plots=True`` (Ultralytics draws everything),
  ``plots="collector"`` (the trainer draws the mosaics only; the collector draws the rest) and
  ``plots=False`` (nothing drawn), interleaved (the order rotated each round); the wall time of
  ``model.train()`` per mode, and each mode's ratio to ``plots=True`` of the same round, with the
  range over the rounds.
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from collector.config import CollectorConfig
from collector.service import demo
from collector.service.demo_data import TASKS, make_dataset, only_clearml_integration, tiny_training
from collector.service.server import Collector

MODES: Final = ("trainer", "collector", "off")
CFG: Final = {
    "detect": "yolov8n.yaml",
    "segment": "yolov8n-seg.yaml",
    "classify": "yolov8n-cls.yaml",
    "pose": "yolov8n-pose.yaml",
    "obb": "yolov8n-obb.yaml",
}


def _timed(
    owner: Any, attr: str, label: str, seconds: dict[str, list[float]], *, unthread: bool = False
) -> None:
    """Replace ``owner.attr`` with a copy that adds each call's seconds to ``seconds[label]``."""
    original = getattr(owner, attr)

    @functools.wraps(original)
    def timed(*args: Any, **kwargs: Any) -> Any:
        if unthread:
            kwargs["threaded"] = False  # Ultralytics' @threaded: draw here, so that it is timed
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            seconds.setdefault(label, []).append(time.perf_counter() - start)

    setattr(owner, attr, timed)


def _profile_plotting(seconds: dict[str, list[float]]) -> None:
    """Time every Ultralytics drawing function this process calls."""
    import ultralytics.utils.metrics as metrics
    from ultralytics.engine.trainer import BaseTrainer
    from ultralytics.models.yolo.classify import train as classify_train
    from ultralytics.models.yolo.classify import val as classify_val
    from ultralytics.models.yolo.detect import train as detect_train
    from ultralytics.models.yolo.detect import val as detect_val

    _timed(BaseTrainer, "plot_metrics", "results.png (plot_metrics)", seconds)
    _timed(
        detect_train.DetectionTrainer, "plot_training_labels", "labels.jpg (plot_training_labels)", seconds
    )
    _timed(metrics, "plot_pr_curve", "PR curves (plot_pr_curve)", seconds)
    _timed(metrics, "plot_mc_curve", "F1/P/R curves (plot_mc_curve)", seconds)
    _timed(metrics.ConfusionMatrix, "plot", "confusion matrices (ConfusionMatrix.plot)", seconds)
    for module, where in (
        (detect_train, "train"),
        (classify_train, "train"),
        (detect_val, "val"),
        (classify_val, "val"),
    ):
        label = "train_batch mosaics (plot_images)" if where == "train" else "val_batch mosaics (plot_images)"
        _timed(module, "plot_images", label, seconds, unthread=True)


def _train(
    endpoint: str, data: str, work: str, task: str, epochs: int, mode: str, profile: bool, index: int
) -> None:
    """One training process; its wall time and plot timings to ``training-<index>.json``."""
    seconds: dict[str, list[float]] = {}
    if profile:
        _profile_plotting(seconds)
    from ultralytics.models import YOLO

    import producer

    only_clearml_integration()
    model = YOLO(CFG[task])
    name = f"plots-{task}-{mode}-{index}"
    options: dict[str, Any] = {"plots": "collector"} if mode == "collector" else {}
    hooks = producer.attach(model, endpoint=endpoint, project=demo.PROJECT, name=name, **options)
    args = {**tiny_training(task, Path(work) / "runs", name, epochs), "plots": mode != "off"}
    started = time.perf_counter()
    model.train(data=data, **args)
    wall = time.perf_counter() - started
    hooks.wait(timeout=300)
    result = {"train_seconds": wall, "plots": seconds, "run": hooks.run.id if hooks.run else None}
    (Path(work) / f"training-{index}.json").write_text(json.dumps(result))


def _child(work: Path, *args: Any) -> dict[str, Any]:
    index = args[-1]
    proc = multiprocessing.get_context("spawn").Process(
        target=_train, args=(args[0], args[1], str(work), *args[2:])
    )
    proc.start()
    proc.join(900)
    if proc.exitcode != 0:
        raise RuntimeError(f"training {index} failed (exit {proc.exitcode})")
    out: dict[str, Any] = json.loads((work / f"training-{index}.json").read_text())
    return out


def _machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())  # fmt: skip
    return f"{os.cpu_count()} cores ({cpu}), CPU training, Python {platform.python_version()}"


def profile(endpoint: str, work: Path, tasks: list[str], epochs: int) -> str:
    lines = [f"Plot functions of one training each ({epochs} epochs, {_machine()}):", ""]
    for i, task in enumerate(tasks):
        data = str(make_dataset(work / f"data-{task}", task))
        result = _child(work, endpoint, data, task, epochs, "trainer", True, i)
        wall = result["train_seconds"]
        lines += [f"{task}: model.train() {wall:.1f} s", ""]
        lines += ["| plot | calls | seconds | share of wall time |", "|---|---|---|---|"]
        total = 0.0
        for label, values in sorted(result["plots"].items(), key=lambda kv: -sum(kv[1])):
            total += sum(values)
            lines.append(f"| {label} | {len(values)} | {sum(values):.2f} | {sum(values) / wall:.1%} |")
        lines += [f"| all | | {total:.2f} | {total / wall:.1%} |", ""]
    return "\n".join(lines)


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} [{min(values):.3f}-{max(values):.3f}]"


def rounds(endpoint: str, work: Path, task: str, epochs: int, count: int) -> str:
    data = str(make_dataset(work / f"data-{task}", task))
    walls: dict[str, list[float]] = {mode: [] for mode in MODES}
    ratios: dict[str, list[float]] = {mode: [] for mode in MODES}
    index = 0
    for r in range(count):
        order = MODES[r % len(MODES) :] + MODES[: r % len(MODES)]
        this_round: dict[str, float] = {}
        for mode in order:
            index += 1
            this_round[mode] = _child(work, endpoint, data, task, epochs, mode, False, index)["train_seconds"]
            walls[mode].append(this_round[mode])
        for mode in MODES:
            ratios[mode].append(this_round[mode] / this_round["trainer"])
    lines = [
        f"{task}, {epochs} epochs, {count} rounds (interleaved), {_machine()}:",
        "",
        "| plots | model.train() s, median [min-max] | ratio to plots=True, median [min-max] "
        "| saved s (median) |",
        "|---|---|---|---|",
    ]
    names = {"trainer": "True (Ultralytics draws)", "collector": '"collector"', "off": "False"}
    base = statistics.median(walls["trainer"])
    for mode in MODES:
        saved = base - statistics.median(walls[mode])
        lines.append(f"| {names[mode]} | {_spread(walls[mode])} | {_spread(ratios[mode])} | {saved:.2f} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", action="store_true", help="time each plot function instead of the rounds")
    ap.add_argument("--task", choices=TASKS, action="append", help="task type(s) (default: detect)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    tasks = args.task or ["detect"]
    with tempfile.TemporaryDirectory(prefix="bench-plots-") as tmp:
        work = Path(tmp)
        demo._isolate(work)
        config = CollectorConfig.from_env(
            bind="tcp://127.0.0.1:0", data_dir=work / "collector", backend="clearml", offline=True
        )
        with Collector(config) as collector:
            endpoint = collector.bound_endpoint
            if args.profile:
                print(profile(endpoint, work, tasks, args.epochs))
            else:
                print(rounds(endpoint, work, tasks[0], args.epochs, args.rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
