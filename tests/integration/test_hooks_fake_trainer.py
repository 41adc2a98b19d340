"""The Ultralytics hooks on a fake trainer (what they read of one) into a real collector.

No training runs: each test calls the hooks as a trainer would, in the order it would, and
reads back what the collector holds.
"""

from __future__ import annotations

import copy
import logging
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from collector_helpers import running
from e2e import env
from hooks_helpers import DEADLINE, HOOKS_LOGGER, closed, fake_trainer, finished, jpeg
from waiting import wait_for

import producer
from producer.integrations.console import router
from producer.integrations.ultralytics import RelayHooks


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
    trainer = fake_trainer(tmp_path / "run")
    late = trainer.save_dir / "train_batch7.jpg"
    body = jpeg()
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
        done = finished(hooks, collector, trainer.save_dir)
    (image,) = done.events("image")
    assert (image["title"], image["series"], image["iteration"]) == ("Mosaic", "train.jpg", 7)
    assert image["file"]["size"] == len(body)
    assert done.status()[0] == "completed"
    assert done.events("single")[0]["name"] == "fitness"


def test_a_file_never_completed_is_given_up_at_the_deadline(tmp_path: Path) -> None:
    trainer = fake_trainer(tmp_path / "run")
    (trainer.save_dir / "train_batch0.jpg").write_bytes(b"\xff\xd8 torn")
    with running(tmp_path / "collector") as collector:
        hooks = RelayHooks(endpoint=collector.bound_endpoint, stats_interval=0, late_files_timeout=0.3)
        hooks.callbacks["on_pretrain_routine_start"](trainer)
        hooks.callbacks["teardown"](trainer)  # no on_train_end: the training stopped early
        done = finished(hooks, collector, trainer.save_dir)
    assert not done.events("image")
    status, error = done.status()
    assert status == "failed"
    assert "before on_train_end" in error


def test_a_hook_that_fails_logs_once_and_never_raises(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    trainer = fake_trainer(tmp_path / "run")
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
    trainer = fake_trainer(tmp_path / "run")

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
        done = finished(hooks, collector, trainer.save_dir)
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

    # Ultralytics' Conv layers share one activation module (``Conv.default_act``) across every model
    # in the process, and an in-process training elsewhere in the suite may have left thop's counter
    # on it: a deep copy gives this model modules of its own, cleared of any counter.
    model = copy.deepcopy(DetectionModel("yolov8n.yaml", nc=2, verbose=False))
    for module in model.modules():
        module.__dict__.pop("total_ops", None)
    # On a copy: thop leaves its counters on a module it profiles if anything interrupts it, and the
    # live model must show only what the hooks did to it.
    expected = (get_num_params(model), round(get_flops(copy.deepcopy(model), 64), 3))
    model.train()
    before = {name: t.clone() for name, t in model.state_dict().items()}
    forwards: list[tuple[object, threading.Thread]] = []  # (module, thread): copies carry the hook
    model.register_forward_pre_hook(lambda module, _: forwards.append((module, threading.current_thread())))
    trainer = fake_trainer(tmp_path / "run", profile=False, imgsz=64)
    trainer.ema = SimpleNamespace(ema=model)
    trainer.validator.speed = {"inference": 12.34567}
    trainer.epoch_time, trainer.metrics = 1.0, {}
    with running(tmp_path / "collector") as collector:
        hooks = RelayHooks(endpoint=collector.bound_endpoint, stats_interval=0, late_files_timeout=0)
        hooks.callbacks["on_pretrain_routine_start"](trainer)
        hooks.callbacks["on_fit_epoch_end"](trainer)
        hooks.callbacks["on_train_end"](trainer)
        hooks.callbacks["teardown"](trainer)
        done = finished(hooks, collector, trainer.save_dir)
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
    trainer = fake_trainer(tmp_path / "run")
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
        done = finished(hooks, collector, trainer.save_dir)
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
        trainer = fake_trainer(tmp_path / "run")
        hooks.callbacks["on_pretrain_routine_start"](trainer)
        hooks.detach()
        done = finished(hooks, collector, trainer.save_dir)
    assert done.events("open")[0]["task_id"] == "agent-task-1"
    assert done.status()[0] == "aborted"


def test_env_names_the_project_and_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLEARML_RELAY_PROJECT", "env-project")
    monkeypatch.setenv("CLEARML_RELAY_TASK_NAME", "env-task")
    with running(tmp_path / "collector") as collector:
        hooks = RelayHooks(endpoint=collector.bound_endpoint, stats_interval=0)
        trainer = fake_trainer(tmp_path / "run")
        hooks.callbacks["on_pretrain_routine_start"](trainer)
        hooks.callbacks["teardown"](trainer)
        assert hooks.wait(DEADLINE)
        assert hooks.run is not None
        run = hooks.run.id
        wait_for(lambda: closed(collector.backend.records(run)), DEADLINE, "the close to be applied")
        opening = collector.backend.records(run)[0]["event"]
    assert (opening["project"], opening["name"]) == ("env-project", "env-task")


def test_epochs_reach_the_collector_during_the_training_and_its_lines_are_the_runs(tmp_path: Path) -> None:
    """Between the training's start and its end the hooks wake nothing: the hooks thread takes
    an epoch's data within a tick. A line logged right after the first hook is the run's, one
    before it is not; the capture stops at teardown (a later line is not the run's) and is off
    the logger once the run is closed."""
    trainer = fake_trainer(tmp_path / "run")
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
        capture = router("ultralytics").console_of(threading.current_thread())
        assert capture is not None
        assert capture.on
        hooks.callbacks["on_train_end"](trainer)
        hooks.callbacks["teardown"](trainer)
        ultralytics_logger.warning("a line after the training")
        done = finished(hooks, collector, trainer.save_dir)
    console = "\n".join(e["text"] for e in done.events("text"))
    assert "the training's first line" in console
    assert "a line before the training" not in console
    assert "a line after the training" not in console
    assert done.status() == ("completed", "")
    assert [e["name"] for e in done.events("model")] == ["fake"]
    assert not capture.on


def test_the_hooks_never_wait_for_a_stuck_hooks_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the hooks thread cannot open the run (blocked here), every hook returns and nothing
    handed over is lost: once it goes on, the run gets all of it."""
    from producer.integrations.ultralytics.session import YoloReporter

    trainer = fake_trainer(tmp_path / "run")
    trainer.tloss, trainer.lr = None, {"lr/pg0": 0.01}
    trainer.epoch_time, trainer.metrics = 1.0, {"metrics/mAP50(B)": 0.5}
    release, blocked = threading.Event(), threading.Event()
    opening = YoloReporter.open

    def stuck_open(reporter: YoloReporter) -> bool:
        blocked.set()
        assert release.wait(DEADLINE)
        return opening(reporter)

    monkeypatch.setattr(YoloReporter, "open", stuck_open)
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
        done = finished(hooks, collector, trainer.save_dir)
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
    capturing the thread's lines, and the failure is logged."""
    trainer = fake_trainer(tmp_path / "run")
    del trainer.save_dir
    hooks = RelayHooks(endpoint="tcp://127.0.0.1:9", stats_interval=0, late_files_timeout=0)
    if prepared:
        hooks.prepare()
    with caplog.at_level(logging.WARNING, HOOKS_LOGGER):
        hooks.callbacks["on_pretrain_routine_start"](trainer)
        hooks.callbacks["teardown"](trainer)
    assert hooks.run is None
    capture = router("ultralytics").console_of(threading.current_thread())
    assert capture is None or not capture.on
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


def test_plots_collector_on_a_trainer_it_cannot_take_over_leaves_the_drawing_to_it(tmp_path: Path) -> None:
    """A trainer without Ultralytics' drawing methods (here a fake one) draws its own plots and
    is recorded as with the default: the option takes over only Ultralytics' own methods."""
    trainer = fake_trainer(tmp_path / "run")
    with running(tmp_path / "collector") as collector:
        hooks = RelayHooks(endpoint=collector.bound_endpoint, stats_interval=0, plots="collector")
        for event in ("on_pretrain_routine_start", "on_train_epoch_end", "on_fit_epoch_end", "on_train_end"):
            hooks.callbacks[event](trainer)
        hooks.callbacks["teardown"](trainer)
        done = finished(hooks, collector, trainer.save_dir)
    assert not hasattr(trainer, "get_validator")
    assert not hasattr(trainer, "plot_metrics")
    assert done.status()[0] == "completed"
    assert [e["name"] for e in done.events("single")] == ["fitness"]
