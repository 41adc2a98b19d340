"""Helpers for the framework integration tests: a ClearML collector, a script, its session read back."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from e2e import completed, env, free_port, start_collector, stop, wait_for, wait_ready
from sessions import raw_events

from collector.backends.clearml import state as clearml_state

SUPPORT = Path(__file__).resolve().parent
#: A value as ClearML stores it and as the framework had it: float32 rounding, no more.
REL = 1e-6


class Collector:
    """A collector process with the ClearML backend in offline mode, sessions under ``data``."""

    def __init__(self, tmp_path: Path, name: str = "collector", endpoint: str | None = None) -> None:
        self.endpoint = endpoint or f"tcp://127.0.0.1:{free_port()}"
        self.data = tmp_path / f"{name}-data"
        self.log = tmp_path / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Collector:
        self.proc = start_collector(self.endpoint, self.data, self.log, "--backend", "clearml", "--offline")
        wait_ready(self.endpoint, self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None

    def session(self, run: str, timeout: float = 120) -> Path:
        """The offline session of ``run``, once the run is completed and wholly applied."""
        wait_for(lambda: completed(self.endpoint, run), timeout, f"run {run} to be applied and completed")
        return self.session_of(run)

    def session_of(self, run: str) -> Path:
        """The offline session of ``run`` as it is now."""
        state = clearml_state.load(self.data / "clearml", run)
        assert state is not None, f"the backend never saw run {run}"
        return Path(state.session)


@contextlib.contextmanager
def collector(tmp_path: Path, name: str = "collector") -> Iterator[Collector]:
    running = Collector(tmp_path, name).start()
    try:
        yield running
    finally:
        running.stop()


def run_script(script: str, *args: str, workdir: Path, **extra_env: str) -> dict[str, Any]:
    """Run ``tests/support/<script>`` with ``args`` and ``--result``; its result, exit code and output."""
    workdir.mkdir(parents=True, exist_ok=True)
    result = workdir / "result.json"
    proc = subprocess.run(
        [sys.executable, str(SUPPORT / script), *args, "--result", str(result)],
        cwd=workdir,
        env=env(**extra_env),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = proc.stdout[-4000:] + proc.stderr[-4000:]
    assert proc.returncode == 0, output
    outcome: dict[str, Any] = json.loads(result.read_text())
    outcome["output"] = proc.stdout + proc.stderr
    return outcome


#: Each framework's training script and the folder option it writes into (``tmp_path / <folder>``).
SCRIPTS = {
    "lightning": ("lightning_train.py", "--root", "root"),
    "transformers": ("transformers_train.py", "--output", "output"),
    "tensorboard": ("tensorboard_script.py", "--logdir", "logs"),
}


def train(framework: str, tmp_path: Path, *args: str, **extra_env: str) -> dict[str, Any]:
    """Run ``framework``'s script (:data:`SCRIPTS`) writing below ``tmp_path``; its result."""
    script, option, folder = SCRIPTS[framework]
    return run_script(script, option, str(tmp_path / folder), *args, workdir=tmp_path / "work", **extra_env)


def trained(framework: str, tmp_path: Path, *args: str) -> tuple[dict[str, Any], Path]:
    """:func:`train` through a collector (ClearML, offline): the result and the run's session."""
    with collector(tmp_path) as running:
        result = train(framework, tmp_path, *args, CLEARML_RELAY_ENDPOINT=running.endpoint)
        return result, running.session(result["run"])


def scalars(session: Path) -> Counter[tuple[str, str, int, float]]:
    """Every scalar of the session (not the single values) as (title, series, iteration, value)."""
    return Counter(
        (e["metric"], e["variant"], e["iter"], e["value"])
        for e in raw_events(session)
        if e["type"] == "training_stats_scalar" and e["metric"] != "Summary"
    )


def single_values(session: Path) -> dict[str, float]:
    """The session's single values (the last one reported of each name)."""
    values = {}
    for e in raw_events(session):
        if e["type"] == "training_stats_scalar" and e["metric"] == "Summary":
            values[e["variant"]] = e["value"]
    return values


def events(session: Path, kind: str) -> list[dict[str, Any]]:
    """The session's events of ``type`` ``kind`` (``training_debug_image``, ``plot``...)."""
    return [e for e in raw_events(session) if e["type"] == kind]


def task(session: Path) -> dict[str, Any]:
    task_json: dict[str, Any] = json.loads((session / "task.json").read_text())
    return task_json


def hyperparams(session: Path, section: str) -> dict[str, str]:
    """One hyperparameter section of the session's task: name -> value (as ClearML stores it, text)."""
    return {k: v["value"] for k, v in (task(session).get("hyperparams") or {}).get(section, {}).items()}


def same_scalars(
    got: Counter[tuple[str, str, int, float]], expected: Counter[tuple[str, str, int, float]]
) -> list[str]:
    """What differs between two multisets of scalars, values compared to :data:`REL`; [] if none."""
    problems = []
    remaining = list(got.elements())
    for title, series, iteration, value in expected.elements():
        match = next(
            (
                g
                for g in remaining
                if g[:3] == (title, series, iteration) and abs(g[3] - value) <= REL * max(1.0, abs(value))
            ),
            None,
        )
        if match is None:
            problems.append(f"missing {title}/{series} @ {iteration} = {value}")
        else:
            remaining.remove(match)
    problems += [f"unexpected {g}" for g in remaining]
    return problems
