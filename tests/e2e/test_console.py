"""Console capture: each training's console holds its own lines, however many train in one process.

Two real trainings in two threads of this process, through a collector process with the ClearML
backend (offline), read back from each task's ``log.jsonl`` (the routing itself, with threads
that log on cue: tests/unit/test_console_routing.py).
"""

from __future__ import annotations

import functools
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from e2e import completed, free_port, start_collector, stop, wait_for, wait_ready

import producer
from collector.backends.clearml import state as clearml_state
from collector.service.demo_data import make_dataset, only_clearml_integration, tiny_training

DEADLINE = 10.0
TRAINING_DEADLINE = 180.0
LEFT_OUT = (
    "clearml-relay: 1 console lines of threads that run no training were left out"
    " (several trainings ran in this process)"
)


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
