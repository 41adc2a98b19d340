"""Parity with Ultralytics' built-in ClearML callback: the same tiny training logged both ways.

The built-in callback runs in ClearML offline mode in a plain script (Ultralytics registers no
integration under pytest) and crashes at the end (clearml issue 1243) after everything but the
model is logged; its session is the oracle. The relay run goes through the hooks, a collector
process with the ClearML backend in offline mode, and is read back from its session. Every
scalar (metric, variant, iteration), single value, debug image (title, series, iteration), plot
title, hyperparameter and tag of the oracle must be in ours; ours also holds the output model.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

import numpy as np
import pytest
from e2e import env, free_port, start_collector, status, stop, wait_for, wait_ready
from PIL import Image
from sessions import local_file, raw_events

from collector.backends.clearml import state as clearml_state
from collector.service.demo_data import TASKS, make_dataset
from producer.integrations.ultralytics import charts

TRAIN = Path(__file__).resolve().parents[1] / "support" / "parity_train.py"
#: Added by ClearML's ``task.connect(..., ignore_remote_overrides=True)``, not a training argument.
CLEARML_BOOKKEEPING = {"_ignore_remote_overrides_"}
#: Values that legitimately differ between two trainings: where each run saved its files.
RUN_SPECIFIC = {"save_dir", "name"}


def _session_summary(session: Path) -> dict[str, Any]:
    events = [e for line in (session / "metrics.jsonl").read_text().splitlines() for e in json.loads(line)]
    task = json.loads((session / "task.json").read_text())
    scalars = {(e["metric"], e["variant"], e["iter"]) for e in events if e["type"] == "training_stats_scalar"}
    general = task.get("hyperparams", {}).get("General", {})
    return {
        "scalars": {s for s in scalars if s[0] != "Summary"},
        "single_values": {s[1] for s in scalars if s[0] == "Summary"},
        "images": {
            (e["metric"], e["variant"], e["iter"]) for e in events if e["type"] == "training_debug_image"
        },
        "plots": {e["metric"] for e in events if e["type"] == "plot"},
        "hyperparams": {k: v["value"] for k, v in general.items() if k not in CLEARML_BOOKKEEPING},
        "tags": set(task.get("tags") or []),
        "models": task.get("offline_output_models") or [],
        "project_name": task.get("project_name"),
        "name": task.get("name"),
    }


def _relay_training(
    tmp_path: Path,
    task: str,
    data: str,
    monkeypatch: pytest.MonkeyPatch,
    *extra_args: str,
    name: str = "relay",
) -> tuple[dict[str, Any], Path]:
    """One training through the hooks and a collector (ClearML backend, offline): its outcome
    (with what its final validation held) and its offline session, once applied and completed."""
    cache = tmp_path / f"{name}-cache"
    monkeypatch.setenv("CLEARML_CACHE_DIR", str(cache))  # the collector process inherits it
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    data_dir = tmp_path / f"{name}-collector"
    collector = start_collector(
        endpoint, data_dir, tmp_path / f"{name}-collector.log", "--backend", "clearml", "--offline"
    )
    try:
        wait_ready(endpoint, collector)
        outcome = _train(
            "relay",
            task,
            data,
            tmp_path / name,
            {"CLEARML_RELAY_ENDPOINT": endpoint, "CLEARML_CACHE_DIR": str(cache)},
            *extra_args,
            runs="ultralytics-runs" if name == "relay" else f"{name}-runs",  # a save_dir of its own
        )
        assert outcome["returncode"] == 0, outcome["output"]
        run = outcome["run"]

        def completed() -> bool:
            reply = status(endpoint)
            info = next((r for r in reply.runs if r.run == run), None) if reply else None
            return info is not None and info.state == "completed" and info.applied >= info.journaled

        wait_for(completed, 120, f"run {run} to be applied and completed")
    finally:
        stop(collector)
    state = clearml_state.load(data_dir / "clearml", run)
    assert state is not None
    return outcome, Path(state.session)


def _only_session(cache: Path) -> Path:
    """The one offline session in ``cache``, once ClearML has finished writing it.

    The session is complete when its zip exists and its ``task.json`` (rewritten in place by
    ClearML) parses; with in-process reporting that is when the training process has exited.
    """

    def finished() -> Path | None:
        sessions = [p for p in (cache / "offline").iterdir() if p.is_dir()]
        assert len(sessions) == 1, sessions
        try:
            json.loads((sessions[0] / "task.json").read_text())
        except (OSError, ValueError):
            return None
        return sessions[0] if sessions[0].with_suffix(".zip").is_file() else None

    session: Path = wait_for(finished, 60, f"ClearML to finish the offline session in {cache}")
    return session


def _plain_script_env(extra: dict[str, str]) -> dict[str, str]:
    """The test's environment minus what makes Ultralytics think it runs under a test runner
    (it then registers no integration, and the built-in callback would silently not run)."""
    out = {k: v for k, v in env().items() if k not in ("PYTEST_CURRENT_TEST", "GITHUB_ACTIONS")}
    return {**out, **extra}


def _train(
    mode: str,
    task: str,
    data: str,
    workdir: Path,
    extra_env: dict[str, str],
    *extra_args: str,
    runs: str = "ultralytics-runs",
) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    result = workdir / "result.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(TRAIN),
            "--mode",
            mode,
            "--task",
            task,
            "--data",
            data,
            "--project",
            # Absolute, and the same for both runs: Ultralytics would put a relative project under
            # its own install's git root (this repo), and the project name is part of the parity.
            str(workdir.parent / runs),
            "--name",
            task,
            "--result",
            str(result),
            *extra_args,
        ],
        cwd=workdir,
        env=_plain_script_env(extra_env),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    outcome: dict[str, Any] = json.loads(result.read_text()) if result.exists() else {}
    outcome["returncode"] = proc.returncode
    outcome["output"] = proc.stdout[-3000:] + proc.stderr[-3000:]
    return outcome


@pytest.mark.slow
@pytest.mark.parametrize("task", TASKS)
def test_relay_logs_everything_the_builtin_callback_logs(
    tmp_path: Path, task: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = str(make_dataset(tmp_path / "data", task))

    builtin_cache = tmp_path / "builtin-cache"
    # ClearML reports through a forked subprocess by default, which can finish the session long
    # after the training process exits on a loaded machine; in-process reporting logs the same
    # events and has the session complete when the process ends.
    conf = tmp_path / "clearml.conf"
    conf.write_text("sdk { development { report_use_subprocess: false } }\n")
    builtin = _train(
        "builtin",
        task,
        data,
        tmp_path / "builtin",
        {"CLEARML_CACHE_DIR": str(builtin_cache), "CLEARML_CONFIG_FILE": str(conf)},
    )
    # The built-in callback crashes the training in offline mode: today's behaviour, asserted so
    # that the day it changes this test says so.
    assert builtin["returncode"] == 3, builtin["output"]
    assert "locked" in builtin.get("error", ""), builtin["output"]
    oracle = _session_summary(_only_session(builtin_cache))

    relay, session = _relay_training(tmp_path, task, data, monkeypatch)
    ours = _session_summary(session)
    _assert_interactive_plots(task, session, relay["validator"])

    for kind in ("scalars", "single_values", "images", "plots", "tags"):
        missing = oracle[kind] - ours[kind]
        assert not missing, (
            f"{task}: {kind} the built-in callback logs but the relay did not: {sorted(missing)}"
        )
    expected = {k: v for k, v in oracle["hyperparams"].items() if k not in RUN_SPECIFIC}
    got = {k: ours["hyperparams"].get(k) for k in expected}
    assert got == expected, f"{task}: hyperparameters differ"
    assert (ours["project_name"], ours["name"]) == (oracle["project_name"], oracle["name"])
    assert not oracle["models"], "the built-in callback loses the model offline"
    assert [m["init"]["name"] for m in ours["models"]] == [task], "the relay must log the output model"
    assert (session / "models").is_dir()

    # plots="collector": the trainer draws the mosaics only, the collector the rest; the task
    # holds every plot title of the default run all the same.
    offloaded, offloaded_session = _relay_training(
        tmp_path, task, data, monkeypatch, "--plots", "collector", name="offloaded"
    )
    drawn_by_ultralytics = set(relay["validator"]["files"]) & DRAWABLE
    assert drawn_by_ultralytics, relay["validator"]["files"]
    assert not set(offloaded["validator"]["files"]) & DRAWABLE, "the trainer drew what the collector draws"
    assert any(f.startswith("train_batch") for f in offloaded["validator"]["files"]), "mosaics stay"
    titles = _session_summary(offloaded_session)["plots"]
    missing = ours["plots"] - titles
    assert not missing, f"{task}: plots='collector' lacks the default run's plots {sorted(missing)}"
    for name in drawn_by_ultralytics:
        assert _image_plot_size(offloaded_session, Path(name).stem) == _png_size(name, relay), name
    _assert_interactive_plots(task, offloaded_session, offloaded["validator"])


#: What Ultralytics draws with plots=True that plots="collector" leaves to the collector.
DRAWABLE: Final = {
    "results.png", "labels.jpg", "confusion_matrix.png", "confusion_matrix_normalized.png",
    *(f"{part}{curve}_curve.png" for part in ("Box", "Mask", "Pose") for curve in ("PR", "F1", "P", "R")),
}  # fmt: skip


def _plots(session: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """Each plot of the session, ``(title, series)`` -> its plotly figure."""
    return {
        (e["metric"], e["variant"]): json.loads(e["plot_str"])
        for e in raw_events(session)
        if e["type"] == "plot"
    }


def _assert_interactive_plots(task: str, session: Path, validator: dict[str, Any]) -> None:
    """The curves, the confusion matrix and the per-class table, equal to the validator's arrays."""
    plots = _plots(session)
    names = {int(k): v for k, v in validator["names"].items()}
    assert (task == "classify") == (not validator["curves"])
    for title, curve in validator["curves"].items():
        figure = plots[(title, "")]  # a line plot's series are its traces
        traces = {trace["name"]: trace for trace in figure["data"]}
        expected = [names[c] for c in curve["classes"]]
        assert list(traces) == [*expected, charts.ALL_CLASSES], f"{task} {title}: series {list(traces)}"
        for name, row in zip(expected, curve["y"], strict=True):
            assert np.allclose(traces[name]["x"], curve["x"]), f"{task} {title} {name}: x"
            assert np.allclose(traces[name]["y"], row), f"{task} {title} {name}: y"
        assert np.allclose(
            np.asarray(traces[charts.ALL_CLASSES]["y"]).mean(), np.asarray(curve["y"]).mean(), atol=0.05
        )
        assert figure["layout"]["xaxis"]["title"] == curve["xlabel"]
    labels = list(validator["confusion_names"])
    if validator["confusion_task"] != "classify":
        labels.append("background")
    counts = np.asarray(validator["confusion"])
    assert counts.sum() > 0, "the validator counted nothing"
    for series, matrix in (("Counts", counts), ("Normalized", counts / (counts.sum(0) + 1e-9))):
        heatmap = plots[(charts.CONFUSION_TITLE, series)]["data"][0]
        assert heatmap["x"] == labels, f"{task} {series}: labels"
        assert heatmap["y"] == labels, f"{task} {series}: labels"
        assert np.allclose(np.asarray(heatmap["z"], dtype=float), matrix), f"{task} {series}: values"
    table = plots[(charts.TABLE_TITLE, charts.TABLE_SERIES)]["data"][0]
    header = table["header"]["values"]
    assert all(any(key in str(h) for h in header) for key in validator["summary"][0]), header
    cells = [v for column in table["cells"]["values"] for v in column]
    for row in validator["summary"]:
        first = next(iter(row.values()))
        assert any(str(first) in str(v) for v in cells), f"{task}: {first} not in the table"


def _image_plot_size(session: Path, title: str) -> tuple[int, int]:
    """The pixel size of the image behind an image plot (a PNG or JPEG the session holds)."""
    figure = _plots(session)[(title, "plot image")]
    source = figure["layout"]["images"][0]["source"]
    path = local_file(session, source)
    assert path is not None, f"{title}: {source}"
    with Image.open(path) as image:
        return image.size


def _png_size(name: str, outcome: dict[str, Any]) -> tuple[int, int]:
    with Image.open(Path(outcome["validator"]["save_dir"]) / name) as image:
        return image.size
