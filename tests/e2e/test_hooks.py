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
import logging
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from collector_helpers import running
from e2e import env
from waiting import wait_for

import producer
import producer.integrations.ultralytics as ultralytics_hooks
from collector.service.demo_data import only_clearml_integration, tiny_training
from producer.integrations.console import ConsoleCapture
from producer.integrations.filewatch import FileWatcher, debug_image_slot
from producer.integrations.machine import MachineSampler
from producer.integrations.ultralytics import BUILTIN_MODULE, STATE_FILE, RelayHooks, remove_builtin_callbacks

HOOKS_LOGGER = "producer.integrations.ultralytics"

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
DEADLINE = 60.0


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


@dataclass
class Trained:
    """A finished training and what the collector holds of it."""

    run: str
    records: list[dict[str, Any]]
    save_dir: Path
    oracle: Oracle | None = None
    hooks: RelayHooks | None = None
    report: dict[str, Any] = field(default_factory=dict)

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [r["event"] for r in self.records if r["event"]["t"] == kind]

    def status(self) -> tuple[str, str]:
        """The close's status and error (JSON leaves out fields at their default)."""
        (close,) = self.events("close")
        return close.get("status", "completed"), close.get("error", "")


def _closed(records: list[dict[str, Any]]) -> bool:
    return any(r["event"]["t"] == "close" for r in records)


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
        wait_for(lambda: _closed(collector.backend.records(run)), DEADLINE, "the close to be applied")
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
            wait_for(lambda: _closed(collector.backend.records(run)), DEADLINE, "the close to be applied")
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
            wait_for(lambda run=run: _closed(collector.backend.records(run)), DEADLINE, f"close of {run}")
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


# ------------------------------------------------------------------- without a training


def _fake_trainer(save_dir: Path, **args: Any) -> SimpleNamespace:
    """What the hooks read of a trainer, for tests that need no training."""
    save_dir.mkdir(parents=True, exist_ok=True)
    best = save_dir / "best.pt"
    best.write_bytes(b"weights")
    return SimpleNamespace(
        save_dir=save_dir,
        args=SimpleNamespace(project="proj", name="fake", resume=False, **args),
        callbacks={},
        plots={},
        validator=SimpleNamespace(plots={}, metrics=SimpleNamespace(results_dict={"fitness": 0.5})),
        best=best,
        epoch=0,
    )


def _finished(hooks: RelayHooks, collector: Any, save_dir: Path) -> Trained:
    """Wait for the hooks' run to close and for the collector to apply the close."""
    assert hooks.wait(DEADLINE)
    assert hooks.run is not None
    run = hooks.run.id
    wait_for(lambda: _closed(collector.backend.records(run)), DEADLINE, "the close to be applied")
    return Trained(run, collector.backend.records(run), save_dir)


def _jpeg(size: int = 2000) -> bytes:
    return b"\xff\xd8" + b"x" * size + b"\xff\xd9"


def test_a_rank_other_than_zero_emits_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")
    hooks = RelayHooks(endpoint="tcp://127.0.0.1:9")
    bare = SimpleNamespace()  # a hook that touched the trainer would fail on it (and log)
    for event, fn in hooks.callbacks.items():
        fn(bare)
        assert hooks.timings()[event]
    assert hooks.run is None
    spool = Path(os.environ["CLEARML_RELAY_SPOOL_DIR"])
    assert not spool.exists() or not any(spool.iterdir())


def test_late_images_are_picked_up_after_teardown_without_blocking_it(tmp_path: Path) -> None:
    trainer = _fake_trainer(tmp_path / "run")
    late = trainer.save_dir / "train_batch7.jpg"
    body = _jpeg()
    late.write_bytes(body[:1000])  # the plotting thread is still writing it
    with running(tmp_path / "collector") as collector:
        hooks = RelayHooks(endpoint=collector.bound_endpoint, stats_interval=0, late_files_timeout=20)
        for event in ("on_pretrain_routine_start", "on_train_end"):
            hooks.callbacks[event](trainer)
        started = time.perf_counter()
        hooks.callbacks["teardown"](trainer)
        assert time.perf_counter() - started < 0.05
        assert not hooks.wait(0.8), "closed before the late image was complete"
        late.write_bytes(body)
        done = _finished(hooks, collector, trainer.save_dir)
    (image,) = done.events("image")
    assert (image["title"], image["series"], image["iteration"]) == ("Mosaic", "train.jpg", 7)
    assert image["file"]["size"] == len(body)
    assert done.status()[0] == "completed"
    assert done.events("single")[0]["name"] == "fitness"


def test_a_file_never_completed_is_given_up_at_the_deadline(tmp_path: Path) -> None:
    trainer = _fake_trainer(tmp_path / "run")
    (trainer.save_dir / "train_batch0.jpg").write_bytes(b"\xff\xd8 torn")
    with running(tmp_path / "collector") as collector:
        hooks = RelayHooks(endpoint=collector.bound_endpoint, stats_interval=0, late_files_timeout=0.3)
        hooks.callbacks["on_pretrain_routine_start"](trainer)
        hooks.callbacks["teardown"](trainer)  # no on_train_end: the training stopped early
        done = _finished(hooks, collector, trainer.save_dir)
    assert not done.events("image")
    status, error = done.status()
    assert status == "failed"
    assert "before on_train_end" in error


def test_a_hook_that_fails_logs_once_and_never_raises(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    trainer = _fake_trainer(tmp_path / "run")
    with (
        running(tmp_path / "collector") as collector,
        caplog.at_level(logging.WARNING, HOOKS_LOGGER),
    ):
        hooks = RelayHooks(endpoint=collector.bound_endpoint, stats_interval=0, late_files_timeout=0)
        hooks.callbacks["on_pretrain_routine_start"](trainer)
        for _ in range(3):
            hooks.callbacks["on_train_epoch_end"](trainer)  # no label_loss_items: AttributeError
        hooks.callbacks["teardown"](trainer)
        assert hooks.wait(DEADLINE)
    failures = [r for r in caplog.records if "on_train_epoch_end failed" in r.getMessage()]
    assert len(failures) == 1


def test_deferred_work_that_fails_costs_only_its_own_data(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """Losses are converted off the training thread; a trainer whose conversion raises there
    loses its losses (logged once), never its learning rates, later events or its close."""
    trainer = _fake_trainer(tmp_path / "run")

    def label_loss_items(loss_items: Any, prefix: str = "train") -> dict[str, float]:
        raise ValueError("cannot label these losses")

    trainer.label_loss_items = label_loss_items
    trainer.tloss = {"box_loss": 1.0}
    trainer.lr = {"lr/pg0": 0.01}
    trainer.epoch_time = 1.5
    trainer.metrics = {"metrics/mAP50(B)": 0.25}
    with (
        running(tmp_path / "collector") as collector,
        caplog.at_level(logging.WARNING, HOOKS_LOGGER),
    ):
        hooks = RelayHooks(endpoint=collector.bound_endpoint, stats_interval=0, late_files_timeout=0)
        hooks.callbacks["on_pretrain_routine_start"](trainer)
        hooks._session._model_info_sent = True  # type: ignore[union-attr]  # no model to count FLOPs of
        for epoch in range(3):
            trainer.epoch = epoch
            hooks.callbacks["on_train_epoch_end"](trainer)
            hooks.callbacks["on_fit_epoch_end"](trainer)
        hooks.callbacks["on_train_end"](trainer)
        hooks.callbacks["teardown"](trainer)
        done = _finished(hooks, collector, trainer.save_dir)
    failures = [r for r in caplog.records if "deferred work failed" in r.getMessage()]
    assert len(failures) == 1, [r.getMessage() for r in caplog.records]
    assert not any("on_train_epoch_end failed" in r.getMessage() for r in caplog.records)
    scalars = done.events("scalar")
    assert sorted(e["iteration"] for e in scalars if e["title"] == "lr") == [0, 1, 2]
    assert sorted(e["iteration"] for e in scalars if e["title"] == "metrics") == [0, 1, 2]
    assert sorted(e["iteration"] for e in scalars if e["title"] == "Epoch Time") == [0, 1, 2]
    assert not [e for e in scalars if e["title"] == "train"]
    assert done.status()[0] == "completed"


def test_model_information_is_counted_off_the_training_thread_on_a_copy(tmp_path: Path) -> None:
    """The epoch-0 model information (parameters, GFLOPs, speed) is what Ultralytics'
    ``model_info_for_loggers`` gives, counted on the background thread from a copy: the live
    model's modules are never run, hooked or switched to eval mode by it."""
    torch = pytest.importorskip("torch")
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils.torch_utils import get_flops, get_num_params

    model = DetectionModel("yolov8n.yaml", nc=2, verbose=False)
    expected = (get_num_params(model), round(get_flops(model, 64), 3))
    model.train()
    before = {name: t.clone() for name, t in model.state_dict().items()}
    forwards: list[tuple[object, threading.Thread]] = []  # (module, thread): copies carry the hook
    model.register_forward_pre_hook(lambda module, _: forwards.append((module, threading.current_thread())))
    trainer = _fake_trainer(tmp_path / "run", profile=False, imgsz=64)
    trainer.ema = SimpleNamespace(ema=model)
    trainer.validator.speed = {"inference": 12.34567}
    trainer.epoch_time, trainer.metrics = 1.0, {}
    with running(tmp_path / "collector") as collector:
        hooks = RelayHooks(endpoint=collector.bound_endpoint, stats_interval=0, late_files_timeout=0)
        hooks.callbacks["on_pretrain_routine_start"](trainer)
        hooks.callbacks["on_fit_epoch_end"](trainer)
        hooks.callbacks["on_train_end"](trainer)
        hooks.callbacks["teardown"](trainer)
        done = _finished(hooks, collector, trainer.save_dir)
    values = {e["name"]: e["value"] for e in done.events("single")}
    assert (values["model/parameters"], values["model/GFLOPs"]) == expected
    assert expected[1] > 0
    assert values["model/speed_PyTorch(ms)"] == 12.346
    assert forwards, "no FLOPs were counted"
    assert all(module is not model for module, _ in forwards), "the live model ran a forward pass"
    assert all(thread.name in ("clearml-relay-hooks", "clearml-relay-close") for _, thread in forwards)
    assert all(m.training for m in model.modules()), "the live model was switched to eval mode"
    assert all(torch.equal(before[name], t) for name, t in model.state_dict().items())
    assert not any(hasattr(m, "total_ops") for m in model.modules())


@pytest.mark.parametrize("prepared", [True, False], ids=["attach", "made-directly"])
def test_the_run_opens_off_the_training_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prepared: bool
) -> None:
    """on_pretrain_routine_start only reads the trainer: the run (client threads, socket, outbox)
    is opened by the process's hooks thread, and events handed over meanwhile are kept in order."""
    trainer = _fake_trainer(tmp_path / "run")
    trainer.tloss, trainer.lr = None, {"lr/pg0": 0.01}
    opened_by: list[str] = []

    class SpyRun(producer.Run):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            opened_by.append(threading.current_thread().name)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr("producer.integrations.ultralytics.session.Run", SpyRun)
    with running(tmp_path / "collector") as collector:
        hooks = RelayHooks(endpoint=collector.bound_endpoint, stats_interval=0, late_files_timeout=0)
        if prepared:
            hooks.prepare()
        hooks.callbacks["on_pretrain_routine_start"](trainer)
        hooks.callbacks["on_train_epoch_end"](trainer)
        hooks.callbacks["on_train_end"](trainer)
        hooks.callbacks["teardown"](trainer)
        done = _finished(hooks, collector, trainer.save_dir)
    assert opened_by == ["clearml-relay-hooks"]
    kinds = [r["event"]["t"] for r in done.records]
    assert (kinds[0], kinds[-1]) == ("open", "close")
    assert [e["iteration"] for e in done.events("scalar") if e["title"] == "lr"] == [0]
    assert done.events("model")
    assert done.status()[0] == "completed"


def test_the_current_clearml_task_is_reported_into(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLEARML_TASK_ID", "agent-task-1")
    with running(tmp_path / "collector") as collector:
        hooks = RelayHooks(endpoint=collector.bound_endpoint, stats_interval=0)
        trainer = _fake_trainer(tmp_path / "run")
        hooks.callbacks["on_pretrain_routine_start"](trainer)
        hooks.detach()
        done = _finished(hooks, collector, trainer.save_dir)
    assert done.events("open")[0]["task_id"] == "agent-task-1"
    assert done.status()[0] == "aborted"


def test_env_names_the_project_and_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLEARML_RELAY_PROJECT", "env-project")
    monkeypatch.setenv("CLEARML_RELAY_TASK_NAME", "env-task")
    with running(tmp_path / "collector") as collector:
        hooks = RelayHooks(endpoint=collector.bound_endpoint, stats_interval=0)
        trainer = _fake_trainer(tmp_path / "run")
        hooks.callbacks["on_pretrain_routine_start"](trainer)
        hooks.callbacks["teardown"](trainer)
        assert hooks.wait(DEADLINE)
        assert hooks.run is not None
        run = hooks.run.id
        wait_for(lambda: _closed(collector.backend.records(run)), DEADLINE, "the close to be applied")
        opening = collector.backend.records(run)[0]["event"]
    assert (opening["project"], opening["name"]) == ("env-project", "env-task")


# ------------------------------------------------------------------------------- pieces


def _builtin(name: str) -> Callable[[Any], None]:
    def fn(trainer: Any) -> None:
        raise AssertionError(f"the built-in {name} ran")

    fn.__module__ = BUILTIN_MODULE
    return fn


def test_builtin_callbacks_are_removed_in_place_without_disturbing_the_running_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ran: list[str] = []

    def ours(trainer: Any) -> None:
        ran.append("ours")
        ran.append(f"removed {remove_builtin_callbacks(trainer, ours)}")

    def other(trainer: Any) -> None:
        ran.append("other")

    events = ("on_pretrain_routine_start", "on_val_end", "on_train_end")
    builtin = {event: _builtin(event) for event in events}
    monkeypatch.setitem(sys.modules, BUILTIN_MODULE, SimpleNamespace(callbacks=builtin))
    start = [other, ours, builtin["on_pretrain_routine_start"], other]
    trainer = SimpleNamespace(
        callbacks={
            "on_pretrain_routine_start": start,
            "on_val_end": [builtin["on_val_end"], other, builtin["on_val_end"]],
            "on_fit_epoch_end": [other],  # on_train_end: no list at all
        }
    )
    for callback in trainer.callbacks["on_pretrain_routine_start"]:  # what run_callbacks does
        callback(trainer)
    assert ran == ["other", "ours", "removed 3", "other"]
    assert trainer.callbacks["on_pretrain_routine_start"] is start
    assert start == [other, ours, other]
    assert trainer.callbacks["on_val_end"] == [other]
    assert trainer.callbacks["on_fit_epoch_end"] == [other]


def test_a_builtin_that_already_ran_is_left_in_the_running_list(monkeypatch: pytest.MonkeyPatch) -> None:
    """Removing an entry before the running one would make the trainer's loop skip a callback."""
    ran: list[str] = []
    builtin = {"on_pretrain_routine_start": lambda trainer: ran.append("builtin")}
    monkeypatch.setitem(sys.modules, BUILTIN_MODULE, SimpleNamespace(callbacks=builtin))

    def ours(trainer: Any) -> None:
        ran.append(f"ours removed {remove_builtin_callbacks(trainer, ours)}")

    def last(trainer: Any) -> None:
        ran.clear()

    entries = [builtin["on_pretrain_routine_start"], ours, last]
    trainer = SimpleNamespace(callbacks={"on_pretrain_routine_start": entries})
    for callback in trainer.callbacks["on_pretrain_routine_start"]:
        callback(trainer)
    assert ran == [], "the last callback was skipped"
    assert len(entries) == 3


def test_nothing_is_removed_when_the_builtin_was_not_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, BUILTIN_MODULE, raising=False)
    entries = [_builtin("start")]
    assert remove_builtin_callbacks(SimpleNamespace(callbacks={"on_pretrain_routine_start": entries})) == 0
    assert len(entries) == 1


def test_epochs_reach_the_collector_during_the_training_and_its_lines_are_the_runs(tmp_path: Path) -> None:
    """Between the training's start and its end the hooks wake nothing: the hooks thread takes
    an epoch's data within a tick. A line logged right after the first hook is the run's, one
    before it is not; the capture stops at teardown (a later line is not the run's) and is off
    the logger once the run is closed."""
    trainer = _fake_trainer(tmp_path / "run")
    trainer.tloss, trainer.lr, trainer.epoch = None, {"lr/pg0": 0.01}, 1  # epoch 1: no model info
    trainer.epoch_time, trainer.metrics = 1.0, {"metrics/mAP50(B)": 0.5}
    ultralytics_logger = logging.getLogger("ultralytics")
    with running(tmp_path / "collector") as collector:
        hooks = RelayHooks(endpoint=collector.bound_endpoint, stats_interval=0, late_files_timeout=0)
        hooks.prepare()
        ultralytics_logger.warning("a line before the training")
        hooks.callbacks["on_pretrain_routine_start"](trainer)
        ultralytics_logger.warning("the training's first line")
        hooks.callbacks["on_train_epoch_end"](trainer)
        hooks.callbacks["on_fit_epoch_end"](trainer)
        wait_for(lambda: hooks.run is not None, DEADLINE, "the run to be opened")
        run = hooks.run
        assert run is not None

        def epoch_applied() -> bool:
            return any(r["event"]["t"] == "scalar" for r in collector.backend.records(run.id))

        wait_for(epoch_applied, DEADLINE, "the epoch's scalars to reach the collector before the end")
        captures = {h for h in ultralytics_logger.handlers if isinstance(h, ConsoleCapture)}
        hooks.callbacks["on_train_end"](trainer)
        hooks.callbacks["teardown"](trainer)
        ultralytics_logger.warning("a line after the training")
        done = _finished(hooks, collector, trainer.save_dir)
    console = "\n".join(e["text"] for e in done.events("text"))
    assert "the training's first line" in console
    assert "a line before the training" not in console
    assert "a line after the training" not in console
    assert done.status() == ("completed", "")
    assert [e["name"] for e in done.events("model")] == ["fake"]
    assert captures
    assert not captures & set(ultralytics_logger.handlers)


def test_the_hooks_never_wait_for_a_stuck_hooks_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the hooks thread cannot open the run (blocked here), every hook returns and nothing
    handed over is lost: once it goes on, the run gets all of it."""
    from producer.integrations.ultralytics.session import Session

    trainer = _fake_trainer(tmp_path / "run")
    trainer.tloss, trainer.lr = None, {"lr/pg0": 0.01}
    trainer.epoch_time, trainer.metrics = 1.0, {"metrics/mAP50(B)": 0.5}
    release, blocked = threading.Event(), threading.Event()
    opening = Session.open

    def stuck_open(session: Session) -> bool:
        blocked.set()
        assert release.wait(DEADLINE)
        return opening(session)

    monkeypatch.setattr(Session, "open", stuck_open)
    with running(tmp_path / "collector") as collector:
        hooks = RelayHooks(endpoint=collector.bound_endpoint, stats_interval=0, late_files_timeout=0)
        hooks.prepare()
        hooks.callbacks["on_pretrain_routine_start"](trainer)
        wait_for(blocked.is_set, DEADLINE, "the hooks thread to be stuck")
        for epoch in (1, 2):
            trainer.epoch = epoch
            hooks.callbacks["on_train_epoch_end"](trainer)
            hooks.callbacks["on_fit_epoch_end"](trainer)
        hooks.callbacks["on_train_end"](trainer)
        hooks.callbacks["teardown"](trainer)  # returned: nothing waited for the stuck thread
        assert not hooks.wait(0)
        release.set()
        done = _finished(hooks, collector, trainer.save_dir)
    assert sorted(e["iteration"] for e in done.events("scalar") if e["title"] == "lr") == [1, 2]
    assert done.events("model")
    assert done.status()[0] == "completed"


def test_hooks_pickle_as_their_options_for_ddp_children() -> None:
    hooks = producer.attach(
        SimpleNamespace(callbacks={}, add_callback=lambda event, fn: None), project="p", stats_interval=2
    )
    restored = pickle.loads(pickle.dumps(hooks.callbacks))
    clone = restored["teardown"].hooks
    assert clone is restored["on_train_end"].hooks  # one RelayHooks per process
    assert clone is not hooks
    assert clone._options == hooks._options
    assert _hooks_threads() == 1  # started (in a child: as it unpickles), ahead of its training
    assert pickle.loads(pickle.dumps(producer.callbacks)) == producer.callbacks


_WORKERS = "sum(t.name == 'clearml-relay-hooks' for t in threading.enumerate())"


def _hooks_threads() -> int:
    return sum(t.name == "clearml-relay-hooks" for t in threading.enumerate())


def _python(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=Path(__file__).resolve().parents[2],
        env=env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_taking_the_module_callbacks_starts_the_hooks_thread_and_importing_does_not() -> None:
    """``producer.callbacks`` get the hooks thread ``attach()`` gets; ``import`` starts none."""
    out = _python(f"""
        import base64, pickle, threading
        import producer
        import producer.integrations.ultralytics as ultralytics_hooks
        print({_WORKERS})
        callbacks = producer.callbacks
        print({_WORKERS})
        assert producer.callbacks == callbacks and ultralytics_hooks.callbacks == callbacks
        print(len(callbacks))
        from types import SimpleNamespace
        for _ in range(3):  # one hooks thread per process, however many models
            producer.attach(SimpleNamespace(callbacks={{}}, add_callback=lambda event, fn: None))
        print({_WORKERS})
        print(base64.b64encode(pickle.dumps(callbacks)).decode())
    """)
    before, after, count, attached, pickled = out.split()
    assert (before, after, count, attached) == ("0", "1", "6", "1")
    # A DDP child: it unpickles the trainer's callbacks, it never takes producer.callbacks.
    child = _python(f"""
        import base64, pickle, threading
        callbacks = pickle.loads(base64.b64decode({pickled!r}))
        print({_WORKERS})
        from producer.integrations.ultralytics import default_hooks
        print(all(fn.hooks is default_hooks() for fn in callbacks.values()))
    """)
    assert child.split() == ["1", "True"]


@pytest.mark.parametrize("prepared", [True, False], ids=["attach", "made-directly"])
def test_a_training_whose_run_cannot_be_set_up_leaves_no_capture_behind(
    tmp_path: Path, prepared: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """A session that cannot be made (here a trainer without ``save_dir``) leaves no console
    capture on the logger, and the failure is logged."""
    trainer = _fake_trainer(tmp_path / "run")
    del trainer.save_dir
    hooks = RelayHooks(endpoint="tcp://127.0.0.1:9", stats_interval=0, late_files_timeout=0)
    if prepared:
        hooks.prepare()
    logger = logging.getLogger("ultralytics")

    def capturing() -> set[logging.Handler]:
        return {h for h in logger.handlers if isinstance(h, ConsoleCapture) and h.level == logging.NOTSET}

    before = capturing()
    with caplog.at_level(logging.WARNING, HOOKS_LOGGER):
        hooks.callbacks["on_pretrain_routine_start"](trainer)
        hooks.callbacks["teardown"](trainer)
    assert hooks.run is None
    assert not capturing() - before
    assert any("save_dir" in r.getMessage() for r in caplog.records)


def test_a_forked_child_starts_its_own_hooks_thread() -> None:
    """The hooks thread stays in the parent: a forked child's first training starts its own."""
    out = _python(f"""
        import os, threading
        import producer
        from producer.integrations.worker import worker
        callbacks = producer.callbacks
        parent = worker()
        pid = os.fork()
        if pid == 0:
            ok = not parent.usable() and {_WORKERS} == 0
            child = worker()
            os._exit(0 if ok and child is not parent and child.usable() and {_WORKERS} == 1 else 1)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status), parent.usable(), worker() is parent)
    """)
    assert out.split() == ["0", "True", "True"]


def test_detach_removes_the_callbacks_from_the_model() -> None:
    registry: dict[str, list[Any]] = {}
    model = SimpleNamespace(
        callbacks=registry, add_callback=lambda e, fn: registry.setdefault(e, []).append(fn)
    )
    hooks = producer.attach(model)
    assert set(registry) == set(hooks.callbacks)
    hooks.detach()
    assert all(not fns for fns in registry.values())


def test_the_watcher_sends_a_file_once_it_is_complete_and_each_version_once(tmp_path: Path) -> None:
    watcher = FileWatcher()
    watcher.watch(tmp_path, "val*.jpg", "Validation")
    path = tmp_path / "val_batch1_pred.jpg"
    body = _jpeg()
    path.write_bytes(body[:500])
    assert watcher.poll() == ([], 1)  # incomplete: no end marker
    path.write_bytes(body)
    assert watcher.poll() == ([], 1)  # complete, but just written: one more look
    ready, waiting = watcher.poll()
    assert not waiting
    (item,) = ready
    assert (item.title, item.series, item.iteration) == ("Validation", "val_pred.jpg", 1)
    assert watcher.poll() == ([], 0)
    os.utime(path, ns=(time.time_ns() - 5 * 10**9,) * 2)  # rewritten with the same bytes
    assert watcher.poll() == ([], 0)
    path.write_bytes(_jpeg(3000))
    os.utime(path, ns=(time.time_ns() - 5 * 10**9,) * 2)
    assert [r.path for r in watcher.poll()[0]] == [path]


def test_a_fresh_file_needs_two_identical_looks(tmp_path: Path) -> None:
    watcher = FileWatcher()
    path = tmp_path / "results.png"
    path.write_bytes(b"\x89PNG....IEND\xaeB`\x82")
    watcher.add(path, "plot", "results", "plot image")
    assert watcher.poll() == ([], 1)
    ready, _ = watcher.poll()
    assert [(r.kind, r.title, r.series, r.iteration) for r in ready] == [("plot", "results", "plot image", 0)]


def test_debug_image_slots_match_the_builtin() -> None:
    assert debug_image_slot("train_batch2.jpg") == ("train.jpg", 2)
    assert debug_image_slot("val_batch0_labels.jpg") == ("val_labels.jpg", 0)
    assert debug_image_slot("labels.jpg") == ("labels.jpg", 0)


def test_console_capture_batches_lines_by_level() -> None:
    capture = ConsoleCapture(max_lines=4)
    logger = logging.getLogger("test_hooks.console")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(capture)
    try:
        for message, level in [("a", logging.INFO), ("b", logging.INFO), ("c", logging.WARNING)]:
            logger.log(level, message)
        logger.error("d")
        logger.error("dropped")
    finally:
        logger.removeHandler(capture)
    assert capture.drain() == [
        ("info", "a\nb"),
        ("warning", "c"),
        ("error", "d"),
        ("warning", "clearml-relay: 1 console lines were dropped"),
    ]
    assert capture.drain() == []


def test_a_console_capture_is_switched_on_and_off_without_the_logging_lock() -> None:
    """Installed ahead switched off, a capture keeps the lines logged between start() and stop()
    only, at every level; switching is its level, which loggers check before calling it."""
    capture = ConsoleCapture(started=False)
    logger = logging.getLogger("test_hooks.console-switch")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(capture)
    try:
        logger.critical("before")
        capture.start()
        logger.debug("during")
        logger.critical("also during")
        capture.stop()
        logger.critical("after")
    finally:
        logger.removeHandler(capture)
    assert capture.drain() == [("debug", "during"), ("error", "also during")]


def test_machine_sampler_reads_cpu_and_memory_without_torch() -> None:
    sampler = MachineSampler()
    burn = time.perf_counter() + 0.05
    while time.perf_counter() < burn:
        pass
    values = sampler.sample()
    assert 0 <= values["cpu_usage"] <= 100
    assert values["memory_used_gb"] > 0
    assert values["memory_free_gb"] > 0
    assert not [k for k in values if k.startswith("gpu")] or "torch" in sys.modules


def test_worker_threads_end(detect_run: Trained) -> None:
    # Each run's closing thread stops once the run is closed, and one hooks thread serves the
    # whole process: nothing leaks into later tests.
    assert not [t for t in threading.enumerate() if t.name == "clearml-relay-close"]
    assert _hooks_threads() <= 1
