"""Console capture: each training's console holds its own lines, however many train in one process.

Two real trainings in two threads of this process, through a collector process with the ClearML
backend (offline), read back from each task's ``log.jsonl``; and the capture's filtering with
threads that log on cue.
"""

from __future__ import annotations

import functools
import json
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e import completed, free_port, start_collector, stop, wait_for, wait_ready

import producer
from collector.backends.clearml import state as clearml_state
from collector.service.demo_data import make_dataset, only_clearml_integration, tiny_training
from producer.integrations import console
from producer.integrations.console import ConsoleCapture

DEADLINE = 10.0
TRAINING_DEADLINE = 180.0
LEFT_OUT = (
    "clearml-relay: 1 console lines of threads that run no training were left out"
    " (several trainings ran in this process)"
)


class _Thread:
    """A thread that runs the calls it is given, one at a time, until closed.

    It stays alive between calls, so its ident is its own for the whole test (the ident of a
    thread that ended may be given to the next one).
    """

    def __init__(self) -> None:
        self._calls: queue.Queue[tuple[Callable[[], object], threading.Event] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while (call := self._calls.get()) is not None:
            function, done = call
            function()
            done.set()

    def run(self, function: Callable[[], object]) -> None:
        done = threading.Event()
        self._calls.put((function, done))
        assert done.wait(DEADLINE), "the call did not return in time"

    def close(self) -> None:
        self._calls.put(None)
        self._thread.join(DEADLINE)
        assert not self._thread.is_alive()


def _log_on_a_new_thread(logger: logging.Logger, message: str) -> None:
    """What Ultralytics' plotting threads do: log from a thread that runs no training."""
    helper = threading.Thread(target=logger.info, args=(message,))
    helper.start()
    helper.join(DEADLINE)
    assert not helper.is_alive()


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    logger = logging.getLogger("test_console.trainings")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    yield logger
    for handler in list(logger.handlers):
        logger.removeHandler(handler)


@pytest.fixture
def no_other_captures(monkeypatch: pytest.MonkeyPatch) -> None:
    """Trainings of earlier tests of this process may still have their captures on."""
    monkeypatch.setattr(console, "_ON", set())
    monkeypatch.setattr(console, "_TRAINING_THREADS", {})


@pytest.mark.usefixtures("no_other_captures")
def test_a_capture_takes_its_training_threads_lines_and_other_threads_only_when_alone(
    logger: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Started for a training's thread (as the hook does) and registered (as the run's set-up
    does), a capture keeps that thread's lines, none of another training's and none of a thread
    whose training ended; a line of any other thread goes to the capture on while it is the only
    one (unless that thread's training registers within ``HOLD``: its lines before the training's
    first hook, or before the registration), to none (counted) while two are. A capture started
    for no thread keeps every line, as before."""
    monkeypatch.setattr(console, "HOLD", 0.0)  # held lines are released by the next drain
    first, second, third = _Thread(), _Thread(), _Thread()
    captures = {name: ConsoleCapture(started=False) for name in ("first", "second", "third")}
    every = ConsoleCapture()
    for handler in (*captures.values(), every):
        logger.addHandler(handler)
    try:
        first.run(lambda: captures["first"].start(threading.current_thread()))
        _log_on_a_new_thread(logger, "a plotting thread's line before the registration")
        captures["first"].register()
        second.run(lambda: captures["second"].start(threading.current_thread()))
        captures["second"].register()
        first.run(lambda: logger.info("first training's line"))
        second.run(lambda: logger.info("second training's line"))
        _log_on_a_new_thread(logger, "a plotting thread's line, two trainings on")
        second.run(captures["second"].stop)
        _log_on_a_new_thread(logger, "a plotting thread's line, one training on")
        second.run(lambda: logger.info("second thread's line after its training"))
        second.close()  # its ident may be the next thread's
        _log_on_a_new_thread(logger, "a plotting thread's line, the second thread gone")
        third.run(lambda: logger.info("third thread's line before its training"))
        third.run(lambda: captures["third"].start(threading.current_thread()))
        third.run(lambda: logger.info("third training's line before its registration"))
        captures["third"].register()
        third.run(lambda: logger.info("third training's line"))
        third.run(captures["third"].stop)
    finally:
        for thread in (first, second, third):
            thread.close()
    assert captures["first"].drain() == [
        (
            "info",
            "first training's line\na plotting thread's line, one training on\n"
            "a plotting thread's line, the second thread gone",
        ),
        ("warning", LEFT_OUT),
    ]
    assert captures["second"].drain() == [("info", "second training's line"), ("warning", LEFT_OUT)]
    assert captures["third"].drain() == [
        ("info", "third training's line before its registration\nthird training's line")
    ]
    assert every.drain() == [
        (
            "info",
            "a plotting thread's line before the registration\n"
            "first training's line\nsecond training's line\na plotting thread's line, two trainings on\n"
            "a plotting thread's line, one training on\nsecond thread's line after its training\n"
            "a plotting thread's line, the second thread gone\nthird thread's line before its training\n"
            "third training's line before its registration\nthird training's line",
        )
    ]
    captures["first"].stop()
    assert not console._ON


@pytest.mark.usefixtures("no_other_captures")
def test_another_threads_line_is_held_until_the_capture_stops(
    logger: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A line of a thread that runs no training waits ``HOLD`` seconds in the capture (long here):
    not in the next drain, but in the one after the capture stopped, in order."""
    monkeypatch.setattr(console, "HOLD", 3600.0)
    capture = ConsoleCapture(thread=threading.current_thread())
    capture.register()
    logger.addHandler(capture)
    logger.info("the training's line")
    _log_on_a_new_thread(logger, "a plotting thread's line")
    _log_on_a_new_thread(logger, "another plotting thread's line")
    assert capture.drain() == [("info", "the training's line")]
    capture.stop()
    assert capture.drain() == [("info", "a plotting thread's line\nanother plotting thread's line")]


# ------------------------------------------------------------------------ real trainings


def _console_of(data_dir: Path, run: str) -> str:
    """The console text of the run's ClearML task: its offline session's ``log.jsonl``."""
    state = clearml_state.load(data_dir / "clearml", run)
    assert state is not None, f"the backend never saw run {run}"
    path = Path(state.session) / "log.jsonl"
    reports = [r for line in path.read_text().splitlines() for r in json.loads(line)]
    return "\n".join(str(r.get("msg", "")) for r in reports)


@pytest.mark.slow
def test_two_trainings_in_threads_of_one_process_each_get_their_own_console(tmp_path: Path) -> None:
    """Both trainings run at once (a barrier holds each at the end of its set-up until the other
    got there too), each in its thread with its own hooks; each task's console names its own
    ``save_dir`` and never the other's. No plots: Ultralytics draws them with matplotlib, which is
    not thread-safe (two trainings plotting at once warn, or worse)."""
    only_clearml_integration()
    from ultralytics.models import YOLO

    names = ("alpha", "bravo")
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    data_dir = tmp_path / "collector"
    collector = start_collector(
        endpoint, data_dir, tmp_path / "collector.log", "--backend", "clearml", "--offline"
    )
    both_set_up = threading.Barrier(len(names), timeout=TRAINING_DEADLINE)
    errors: dict[str, BaseException] = {}
    runs: dict[str, str] = {}
    save_dirs: dict[str, Path] = {}

    def train(name: str, model: Any, data: Path) -> None:
        try:
            hooks = producer.attach(model, endpoint=endpoint)
            model.add_callback("on_pretrain_routine_end", lambda trainer: both_set_up.wait())
            args = tiny_training("detect", tmp_path / "runs", name, 1) | {"plots": False}
            model.train(data=str(data), **args)
            assert hooks.wait(TRAINING_DEADLINE), f"{name}: the run was not closed"
            assert hooks.run is not None
            runs[name] = hooks.run.id
            save_dirs[name] = Path(model.trainer.save_dir)
        except BaseException as exc:
            errors[name] = exc
            both_set_up.abort()

    try:
        wait_ready(endpoint, collector)
        trainings = [
            threading.Thread(
                target=train,
                args=(name, YOLO("yolov8n.yaml"), make_dataset(tmp_path / f"data-{name}", "detect")),
                name=f"training-{name}",
            )
            for name in names
        ]
        for training in trainings:
            training.start()
        for training in trainings:
            training.join(TRAINING_DEADLINE)
            assert not training.is_alive(), f"{training.name} did not end in time"
        assert not errors, errors
        for name in names:
            wait_for(functools.partial(completed, endpoint, runs[name]), 60, f"run {name} to be applied")
    finally:
        stop(collector)
    consoles = {name: _console_of(data_dir, runs[name]) for name in names}
    for name, other in (names, names[::-1]):
        lines = consoles[name].splitlines()
        assert any("Logging results to" in line and str(save_dirs[name]) in line for line in lines), lines
        assert any("Validating" in line and str(save_dirs[name]) in line for line in lines), lines
        assert str(save_dirs[other]) not in consoles[name], f"{name}'s console holds {other}'s lines"
