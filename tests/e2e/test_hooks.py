"""The Ultralytics hooks, tested on real YOLO trainings of generated data into a real collector.

Parity: each training also runs Ultralytics' own ClearML callback functions against a recording
stand-in for ClearML's ``Task`` (the oracle), so the comparison uses the very same trainer state:
every scalar (title, series, iteration), single value, debug image, plot and the model that the
built-in would log must be in the run. A subprocess training (outside pytest, where Ultralytics
registers its callback for real) proves the built-in is switched off and that a script ending
right after ``model.train()`` still delivers everything.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from collector_helpers import running
from e2e import env
from hooks_helpers import DEADLINE, Trained, closed
from waiting import wait_for

import producer
import producer.integrations.ultralytics as ultralytics_hooks
from collector.service.demo_data import only_clearml_integration, tiny_training
from producer.integrations.ultralytics import BUILTIN_MODULE, STATE_FILE

TRAIN_SCRIPT = Path(__file__).resolve().parents[1] / "support" / "hooks_train.py"
MODELS = {
    "detect": "yolov8n.yaml",
    "segment": "yolov8n-seg.yaml",
    "classify": "yolov8n-cls.yaml",
    "pose": "yolov8n-pose.yaml",
    "obb": "yolov8n-obb.yaml",
}
#: Per task: a loss only that task has, and a plot only that task has (classify: no curves).
TASK_SPECIFIC = {
    "detect": ("train/dfl_loss", "BoxPR_curve"),
    "segment": ("train/seg_loss", "MaskPR_curve"),
    "classify": ("train/loss", "confusion_matrix_normalized"),
    "pose": ("train/pose_loss", "PosePR_curve"),
    "obb": ("train/angle_loss", "BoxPR_curve"),
}

# ------------------------------------------------------------------------------ the oracle


@dataclass
class Oracle:
    """What Ultralytics' ClearML callback logged through the recording ``Task``."""

    scalars: set[tuple[str, str, int]] = field(default_factory=set)
    single_values: dict[str, float] = field(default_factory=dict)
    images: set[tuple[str, str, int]] = field(default_factory=set)
    plots: set[str] = field(default_factory=set)
    models: list[tuple[str, str]] = field(default_factory=list)


class _Logger:
    def __init__(self, oracle: Oracle) -> None:
        self.oracle = oracle

    def report_scalar(self, title: str, series: str, value: float, iteration: int) -> None:
        self.oracle.scalars.add((title, series, iteration))

    def report_single_value(self, name: str, value: float) -> None:
        self.oracle.single_values[name] = float(value)

    def report_image(self, title: str, series: str, local_path: str, iteration: int) -> None:
        self.oracle.images.add((title, series, iteration))


class _Task:
    def __init__(self, oracle: Oracle) -> None:
        self.oracle = oracle

    def get_logger(self) -> _Logger:
        return _Logger(self.oracle)

    def update_output_model(self, model_path: str, model_name: str, auto_delete_file: bool) -> None:
        self.oracle.models.append((Path(model_path).name, model_name))


def add_oracle(model: Any, monkeypatch: pytest.MonkeyPatch) -> Oracle:
    """Register the built-in callback's functions (but its Task.init) against a recording Task.

    They are wrapped so that their ``__module__`` is this one: the hooks remove the built-in's
    own functions from the trainer, not these.
    """
    import ultralytics.utils.callbacks.clearml as builtin

    oracle = Oracle()
    task = _Task(oracle)
    monkeypatch.setattr(builtin, "Task", SimpleNamespace(current_task=lambda: task), raising=False)
    # Re-rendering every plot through matplotlib costs seconds and says nothing about titles.
    monkeypatch.setattr(builtin, "_log_plot", lambda title, plot_path: oracle.plots.add(title))
    for event in ("on_train_epoch_end", "on_fit_epoch_end", "on_val_end", "on_train_end"):
        function = getattr(builtin, event)
        model.add_callback(event, lambda target, function=function: function(target))
    return oracle


# ---------------------------------------------------------------------------- trainings


def train_args(task: str, root: Path, name: str, epochs: int = 1) -> dict[str, Any]:
    only_clearml_integration()
    return tiny_training(task, root / "runs", name, epochs)


def train_in_process(
    task: str, root: Path, monkeypatch: pytest.MonkeyPatch, **options: Any
) -> tuple[Trained, Any]:
    """Train ``task`` for one epoch with attached hooks and the oracle; wait for the run's close."""
    from ultralytics import YOLO

    from collector.service.demo_data import make_dataset

    data = make_dataset(root / "data", task)
    with running(root / "collector") as collector:
        model = YOLO(MODELS[task])
        hooks = producer.attach(model, endpoint=collector.bound_endpoint, **options)
        oracle = add_oracle(model, monkeypatch)
        model.train(data=str(data), **train_args(task, root, task))
        assert hooks.wait(DEADLINE), "the run was not closed"
        assert hooks.run is not None
        run = hooks.run.id
        wait_for(lambda: closed(collector.backend.records(run)), DEADLINE, "the close to be applied")
        records = collector.backend.records(run)
    return Trained(run, records, Path(model.trainer.save_dir), oracle, hooks), model


# The suite's isolation (conftest) is per test, so a training shared by several tests runs inside
# the first test that asks for it and is remembered here, not in a module-scoped fixture.
_TRAINED: dict[str, Trained] = {}


@pytest.fixture
def detect_script(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """A detect training in a plain script with ``producer.callbacks``, configured by env only."""
    if "script" not in _TRAINED:
        from collector.service.demo_data import make_dataset

        root = tmp_path_factory.mktemp("detect-script")
        data = make_dataset(root / "data", "detect")
        result = root / "result.json"
        child_env = {k: v for k, v in env().items() if k not in ("PYTEST_CURRENT_TEST", "GITHUB_ACTIONS")}
        with running(root / "collector") as collector:
            child_env["CLEARML_RELAY_ENDPOINT"] = collector.bound_endpoint
            done = subprocess.run(
                [
                    sys.executable,
                    str(TRAIN_SCRIPT),
                    "--data",
                    str(data),
                    "--project",
                    str(root / "runs"),
                    "--name",
                    "detect",
                    "--result",
                    str(result),
                ],
                env=child_env,
                cwd=root,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
            report = json.loads(result.read_text())
            run = report["run"]
            wait_for(lambda: closed(collector.backend.records(run)), DEADLINE, "the close to be applied")
            records = collector.backend.records(run)
        report["cache"] = child_env["CLEARML_CACHE_DIR"]
        _TRAINED["script"] = Trained(run, records, root / "runs" / "detect", report=report)
    return _TRAINED["script"]


@pytest.fixture
def detect_run(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Trained:
    """A detect training in this process with ``attach`` and the oracle."""
    if "detect" not in _TRAINED:
        _TRAINED["detect"], _ = train_in_process("detect", tmp_path_factory.mktemp("detect"), monkeypatch)
    return _TRAINED["detect"]


def _slots(events: list[dict[str, Any]]) -> list[tuple[str, str, int]]:
    return [(e["title"], e["series"], e["iteration"]) for e in events]


def assert_parity(trained: Trained) -> None:
    oracle = trained.oracle
    assert oracle is not None
    scalars = set(_slots(trained.events("scalar")))
    assert scalars == oracle.scalars
    singles = {e["name"]: e["value"] for e in trained.events("single")}
    assert singles == pytest.approx(oracle.single_values)
    assert oracle.images <= set(_slots(trained.events("image")))
    plots = trained.events("plot")
    assert {p["title"] for p in plots} == oracle.plots
    assert {p["series"] for p in plots} == {"plot image"}
    assert {p["iteration"] for p in plots} == {0}
    models = [(m["file"]["name"], m["name"]) for m in trained.events("model")]
    assert models == oracle.models


# ------------------------------------------------------------------------ real trainings


def test_detect_run_holds_everything_the_builtin_logs(detect_run: Trained) -> None:
    assert_parity(detect_run)
    opening = detect_run.events("open")[0]
    assert opening["name"] == "detect"
    assert opening["project"] == str(detect_run.save_dir.parent).lstrip("/")
    assert opening["tags"] == ["Ultralytics"]
    general = opening["hyperparams"]["General"]
    assert general["epochs"] == 1
    assert general["imgsz"] == 64
    assert general["save_dir"] == str(detect_run.save_dir)
    assert opening.get("task_id") is None
    assert opening.get("resume_run") is None
    scalars = set(_slots(detect_run.events("scalar")))
    assert ("train", "train/box_loss", 0) in scalars
    assert ("lr", "lr/pg0", 0) in scalars
    assert ("Epoch Time", "Epoch Time", 0) in scalars
    assert ("metrics", "metrics/mAP50-95(B)", 1) in scalars  # the final evaluation of best.pt
    assert {"model/parameters", "model/GFLOPs", "fitness"} <= {e["name"] for e in detect_run.events("single")}
    (model,) = detect_run.events("model")
    assert model["name"] == "detect"
    assert model["file"]["size"] == (detect_run.save_dir / "weights" / "best.pt").stat().st_size
    assert detect_run.status()[0] == "completed"


def test_mosaics_are_sent_with_a_single_epoch_and_no_image_twice(detect_run: Trained) -> None:
    images = detect_run.events("image")
    slots = _slots(images)
    assert {("Mosaic", "train.jpg", n) for n in range(3)} <= set(slots)
    assert {("Validation", "val_labels.jpg", 0), ("Validation", "val_pred.jpg", 0)} <= set(slots)
    # The final validation rewrites its mosaics (with the same bytes, or new ones): no image twice.
    sent = [(*slot, image["file"]["sha256"]) for slot, image in zip(slots, images, strict=True)]
    assert len(sent) == len(set(sent))
    on_disk = {p.name for p in detect_run.save_dir.glob("*.jpg")} - {"labels.jpg"}
    assert {i["file"]["name"] for i in images} == on_disk


def test_console_and_machine_stats_land(detect_run: Trained) -> None:
    text = "\n".join(e["text"] for e in detect_run.events("text"))
    assert "Starting training for 1 epochs" in text
    assert "Results saved to" in text
    stats = detect_run.events("stats")
    assert stats
    assert {"memory_used_gb", "memory_free_gb"} <= set(stats[-1]["values"])
    assert any("cpu_usage" in s["values"] for s in stats)


def test_hooks_take_microseconds_on_the_training_thread(detect_run: Trained) -> None:
    assert detect_run.hooks is not None
    timings = detect_run.hooks.timings()
    for event in ultralytics_hooks.EVENTS:  # the run's opening and the epoch-0 model information too
        assert timings[event], event
        # Generous: a file read, a wait for late images or a network call would exceed it.
        assert max(timings[event]) < 0.05, (event, timings[event])


@pytest.mark.parametrize("task", ["segment", "classify", "pose", "obb"])
def test_every_task_type_holds_everything_the_builtin_logs(
    task: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trained, _ = train_in_process(task, tmp_path, monkeypatch)
    assert_parity(trained)
    loss, plot = TASK_SPECIFIC[task]
    assert ("train", loss, 0) in set(_slots(trained.events("scalar")))
    plots = {p["title"] for p in trained.events("plot")}
    assert plot in plots
    if task == "classify":
        assert not [p for p in plots if p.endswith("_curve")]
    assert ("Mosaic", "train.jpg", 0) in set(_slots(trained.events("image")))
    assert trained.status()[0] == "completed"


def test_the_builtin_clearml_callback_never_runs(detect_script: Trained) -> None:
    report = detect_script.report
    # Outside pytest Ultralytics did register it (clearml is installed) ...
    assert BUILTIN_MODULE in report["callback_modules_before_hooks"]
    # ... and the hooks took it out of the trainer before it could run: no ClearML task at all.
    assert BUILTIN_MODULE not in report["trainer_callback_modules"]
    assert "producer.integrations.ultralytics.hooks" in report["trainer_callback_modules"]
    assert not (Path(report["cache"]) / "offline").exists()


def test_a_script_configured_by_env_delivers_everything_at_exit(detect_script: Trained) -> None:
    opening = detect_script.events("open")[0]
    assert opening["name"] == "detect"
    assert opening["tags"] == ["Ultralytics"]
    kinds = Counter(r["event"]["t"] for r in detect_script.records)
    assert kinds["model"] == 1
    assert kinds["plot"] >= 8  # 4 curves, 2 confusion matrices, labels, results
    assert kinds["image"] >= 5  # 3 training mosaics, validation labels and predictions
    assert detect_script.status()[0] == "completed"
    timings = detect_script.report["timings"]
    assert max(timings["teardown"]) < 0.05


def test_a_failed_training_is_closed_failed_and_resume_continues_its_task(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ultralytics import YOLO

    from collector.service.demo_data import make_dataset

    data = make_dataset(tmp_path / "data", "detect")
    args = train_args("detect", tmp_path, "resumed", epochs=2)

    def crash_after_first_epoch(trainer: Any) -> None:
        if trainer.epoch == 0:
            raise RuntimeError("user callback exploded")

    with running(tmp_path / "collector") as collector:
        model = YOLO(MODELS["detect"])
        first = producer.attach(model, endpoint=collector.bound_endpoint)
        model.add_callback("on_fit_epoch_end", crash_after_first_epoch)
        with pytest.raises(RuntimeError, match="user callback exploded"):
            model.train(data=str(data), **args)
        assert first.wait(DEADLINE)
        assert first.run is not None
        first_run = first.run.id
        save_dir = tmp_path / "runs" / "resumed"
        assert json.loads((save_dir / STATE_FILE).read_text())["run_id"] == first_run

        resumed = YOLO(str(save_dir / "weights" / "last.pt"))
        second = producer.attach(resumed, endpoint=collector.bound_endpoint)
        resumed.train(resume=True)
        assert second.wait(DEADLINE)
        assert second.run is not None
        for run in (first_run, second.run.id):
            wait_for(lambda run=run: closed(collector.backend.records(run)), DEADLINE, f"close of {run}")
        failed = Trained(first_run, collector.backend.records(first_run), save_dir)
        continued = Trained(second.run.id, collector.backend.records(second.run.id), save_dir)

    assert failed.status() == ("failed", "RuntimeError: user callback exploded")
    assert ("train", "train/box_loss", 0) in set(_slots(failed.events("scalar")))

    assert continued.events("open")[0]["resume_run"] == first_run
    assert continued.status()[0] == "completed"
    iterations = {e["iteration"] for e in continued.events("scalar") if e["title"] == "train"}
    assert iterations == {1}  # the epoch that was left
    # The mosaics of the first epoch were sent by the failed run: not again.
    sent_before = {(i["series"], i["iteration"]) for i in failed.events("image") if i["title"] == "Mosaic"}
    assert sent_before
    again = {(i["series"], i["iteration"]) for i in continued.events("image") if i["title"] == "Mosaic"}
    assert not sent_before & again


def test_worker_threads_end(detect_run: Trained) -> None:
    # Each run's closing thread stops once the run is closed, and one hooks thread serves the
    # whole process: nothing leaks into later tests.
    assert not [t for t in threading.enumerate() if t.name == "clearml-relay-close"]
    assert _hooks_threads() <= 1


def _hooks_threads() -> int:
    return sum(t.name == "clearml-relay-hooks" for t in threading.enumerate())
