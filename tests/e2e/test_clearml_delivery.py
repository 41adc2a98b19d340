"""End to end through the ClearML backend: real producers, a collector killed with -9 again and
again, the real ClearML SDK in offline mode, and the sessions read back from disk."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from e2e import free_port, kill_while_running, produce, start_collector, status, stop, wait_for, wait_ready

from collector.backends.clearml import state as clearml_state


def _session(data: Path, run: str) -> Path:
    state = clearml_state.load(data / "clearml", run)
    assert state is not None, f"the backend never saw run {run}"
    return Path(state.session)


def _events(session: Path) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for line in (session / "metrics.jsonl").read_text().splitlines():
        batch = json.loads(line)
        events += batch if isinstance(batch, list) else [batch]
    return events


@pytest.mark.slow
def test_kill_9_keeps_one_task_per_run_and_writes_every_event_once(tmp_path: Path) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    data, spool, work, log = (
        tmp_path / "data",
        tmp_path / "spool",
        tmp_path / "work",
        tmp_path / "collector.log",
    )
    args = ("--backend", "clearml", "--offline")
    collector = start_collector(endpoint, data, log, *args)
    wait_ready(endpoint, collector)
    events, every = 1200, 40
    producers = {
        name: produce(
            endpoint,
            spool,
            work,
            name,
            events,
            "--file-every",
            str(every),
            "--model-bytes",
            str(2 * 1024 * 1024 + 3),
            "--rate",
            "150",
            "--flush-timeout",
            "180",
        )
        for name in ("alpha", "beta")
    }
    try:
        collector, kills = kill_while_running(
            producers,
            lambda: start_collector(endpoint, data, log, *args),
            endpoint,
            collector,
            (0.5, 1.5),
            seed=4321,
        )
        wait_ready(endpoint, collector)
        runs = {name: json.loads((work / f"{name}.json").read_text())["run"] for name in producers}

        def all_completed() -> bool:
            reply = status(endpoint)
            states = {info.run: (info.state, info.applied) for info in reply.runs} if reply else {}
            return all(states.get(run) == ("completed", events + 3) for run in runs.values())

        wait_for(all_completed, 120, "both runs to be applied and completed")
    finally:
        stop(collector)
    assert kills >= 4, f"only {kills} kills: the run ended too soon to test anything"

    sessions = {name: _session(data, run) for name, run in runs.items()}
    assert len(set(sessions.values())) == 2, "one session (one task) per run"
    offline = sorted(sessions["alpha"].parent.iterdir())
    # A restart never creates a second task, and a kill during a close leaves no zip behind.
    assert offline == sorted(sessions.values()), "one session folder per run, and nothing else"
    for name, session in sessions.items():
        evs = _events(session)
        scalars = Counter(
            e["iter"] for e in evs if e.get("type") == "training_stats_scalar" and e.get("metric") == "train"
        )
        images = Counter(e["iter"] for e in evs if e.get("type") == "training_debug_image")
        assert scalars == Counter(i for i in range(events) if i % every), f"{name}: scalars not exactly once"
        assert images == Counter(range(0, events, every)), f"{name}: debug images not exactly once"
        task = json.loads((session / "task.json").read_text())
        assert len(task["offline_output_models"]) == 1, f"{name}: the model must be registered once"
        assert list((session / "models").iterdir()), f"{name}: the model file must be in the session"
        state = clearml_state.load(data / "clearml", runs[name])
        assert state is not None
        assert state.closed, "a finished run's task is closed"
