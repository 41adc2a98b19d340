"""The hooks' pieces alone: removing the built-in callback, the file watcher, the sampler."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hooks_helpers import jpeg

from producer.integrations.filewatch import FileWatcher, debug_image_slot
from producer.integrations.machine import MachineSampler
from producer.integrations.ultralytics import BUILTIN_MODULE, remove_builtin_callbacks


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


def test_the_watcher_sends_a_file_once_it_is_complete_and_each_version_once(tmp_path: Path) -> None:
    watcher = FileWatcher()
    watcher.watch(tmp_path, "val*.jpg", "Validation")
    path = tmp_path / "val_batch1_pred.jpg"
    body = jpeg()
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
    path.write_bytes(jpeg(3000))
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
