"""Parity with ``clearml.Logger``: the same script's calls land in ClearML as ClearML's own make them.

``tests/support/logger_script.py`` calls every ``clearml.Logger`` reporting method and the
``Task`` hyperparameter and configuration entry points, once on the real SDK (ClearML offline
mode, the oracle) and once on a ``producer.Run`` through a real collector with the ClearML
backend in offline mode. The two offline sessions, summarized by ``tests/support/sessions.py``
(event types, titles, series, iterations, values, plot JSON, decoded pixels and file digests,
console, hyperparameters, configuration), must be equal.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from e2e import completed as run_completed
from e2e import env, free_port, start_collector, stop, wait_for, wait_ready
from sessions import summarize

from collector.backends.clearml import state as clearml_state

SCRIPT = Path(__file__).resolve().parents[1] / "support" / "logger_script.py"


def script(mode: str, workdir: Path, extra_env: dict[str, str]) -> dict[str, Any]:
    """Run the logger script in ``mode``; its result, with its exit status and output."""
    workdir.mkdir(parents=True, exist_ok=True)
    result = workdir / "result.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--mode", mode, "--workdir", str(workdir), "--result", str(result)],
        cwd=workdir,
        env={**env(), "PYTHONPATH": env()["PYTHONPATH"] + ":" + str(SCRIPT.parent), **extra_env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    outcome: dict[str, Any] = json.loads(result.read_text()) if result.exists() else {}
    outcome["returncode"] = proc.returncode
    outcome["output"] = proc.stdout[-4000:] + proc.stderr[-4000:]
    return outcome


def only_session(cache: Path) -> Path:
    """The one finished offline session under ``cache`` (its zip is written by ``task.close()``)."""

    def finished() -> Path | None:
        sessions = [p for p in (cache / "offline").iterdir() if p.is_dir()]
        assert len(sessions) == 1, sessions
        return sessions[0] if sessions[0].with_suffix(".zip").is_file() else None

    session: Path = wait_for(finished, 60, f"ClearML to finish the offline session in {cache}")
    return session


def clearml_conf(tmp_path: Path) -> Path:
    """In-process reporting: the session is complete when ``task.close()`` returns."""
    conf = tmp_path / "clearml.conf"
    conf.write_text("sdk { development { report_use_subprocess: false } }\n")
    return conf


def relay_session(tmp_path: Path, *collector_args: str, **producer_env: str) -> tuple[dict[str, Any], Path]:
    """The logger script through a collector (ClearML backend, offline): its result and session."""
    cache = tmp_path / "relay-cache"
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    data_dir = tmp_path / "collector"
    collector = start_collector(
        endpoint,
        data_dir,
        tmp_path / "collector.log",
        "--backend",
        "clearml",
        "--offline",
        *collector_args,
        environ={
            **env(),
            "CLEARML_CACHE_DIR": str(cache),
            "CLEARML_CONFIG_FILE": str(clearml_conf(tmp_path)),
        },
    )
    try:
        wait_ready(endpoint, collector)
        relay = script(
            "relay",
            tmp_path / "relay",
            {
                "CLEARML_RELAY_ENDPOINT": endpoint,
                "CLEARML_RELAY_SPOOL_DIR": str(tmp_path / "spool"),
                **producer_env,
            },
        )
        assert relay["returncode"] == 0, relay["output"]
        assert relay["closed"] is True, relay["output"]
        wait_for(lambda: run_completed(endpoint, relay["run"]), 120, f"run {relay['run']} to be applied")
    finally:
        assert stop(collector) == 0, (tmp_path / "collector.log").read_text()[-3000:]
    state = clearml_state.load(data_dir / "clearml", relay["run"])
    assert state is not None
    return relay, Path(state.session)


_ORACLE: dict[str, Any] = {}


@pytest.fixture
def oracle(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The summary of the script's session as ClearML itself writes it (offline mode).

    Made once, by the first test that asks (in that test's isolated environment: a module-scoped
    fixture would run before the suite's per-test HOME and ClearML settings are in place).
    """
    if not _ORACLE:
        _ORACLE.update(_oracle(tmp_path_factory.mktemp("clearml")))
    return _ORACLE


def _oracle(tmp_path: Path) -> dict[str, Any]:
    cache = tmp_path / "clearml-cache"
    result = script(
        "clearml",
        tmp_path / "clearml",
        {"CLEARML_CACHE_DIR": str(cache), "CLEARML_CONFIG_FILE": str(clearml_conf(tmp_path))},
    )
    assert result["returncode"] == 0, result["output"]
    summary = summarize(only_session(cache))
    # What the script reports, so that an empty or partial oracle cannot pass for parity.
    counts = {kind: len(events) for kind, events in summary["events"].items()}
    assert counts == {"plot": 19, "training_debug_image": 14, "training_stats_scalar": 9}, counts
    assert len(summary["console"]) == 4
    assert set(summary["hyperparams"]) == {"Args", "optimizer", "cli", "options"}
    assert set(summary["configuration"]) == {"model cfg", "dataset"}
    return summary


def without(summary: dict[str, Any], title: str) -> dict[str, list[dict[str, Any]]]:
    """The summary's events, less those of ``title``."""
    return {kind: [e for e in events if e["metric"] != title] for kind, events in summary["events"].items()}


def of(summary: dict[str, Any], title: str) -> dict[str, dict[str, Any]]:
    """The events of ``title`` by series."""
    return {e["variant"]: e for events in summary["events"].values() for e in events if e["metric"] == title}


@pytest.mark.slow
def test_every_logger_and_task_call_lands_as_clearml_makes_it(oracle: dict[str, Any], tmp_path: Path) -> None:
    """Pickled figures (a trusted collector): even the interactive matplotlib plots are the SDK's."""
    _, session = relay_session(tmp_path, "--allow-pickled-figures", CLEARML_RELAY_FIGURES="pickle")
    got = summarize(session)
    assert got["hyperparams"] == oracle["hyperparams"]
    assert got["configuration"] == oracle["configuration"]
    assert got["console"] == oracle["console"]
    assert sorted(got["events"]) == sorted(oracle["events"])
    for kind, events in oracle["events"].items():
        assert got["events"][kind] == events, kind


@pytest.mark.slow
def test_figures_drawn_by_the_producer_land_as_clearml_draws_a_figure_as_an_image(
    oracle: dict[str, Any], tmp_path: Path
) -> None:
    """The default (``CLEARML_RELAY_FIGURES=render``): the writer thread draws each figure.

    Every other call is as ClearML makes it. A figure ClearML also draws (subplots,
    ``report_interactive=False``, ``report_image=True``) is pixel for pixel ClearML's; the
    interactive one becomes an image plot of the same title and series.
    """
    _, session = relay_session(tmp_path)
    got = summarize(session)
    assert without(got, "mpl") == without(oracle, "mpl")
    assert (got["console"], got["hyperparams"]) == (oracle["console"], oracle["hyperparams"])
    ours, theirs = of(got, "mpl"), of(oracle, "mpl")
    assert set(ours) == set(theirs) == {"two lines", "subplots", "as image", "static"}
    for series in ("subplots", "as image", "static"):
        assert ours[series] == theirs[series], series
    assert theirs["two lines"]["plot"]["data"], "ClearML converts a one-axes figure to plotly"
    drawn = ours["two lines"]["plot"]["layout"]["images"][0]["source"]["file"]
    assert (ours["two lines"]["type"], drawn["format"]) == ("plot", "PNG")
    assert drawn["size"][0] > 1000, "drawn at 300 dpi, as ClearML draws the figures it does not convert"


@pytest.mark.slow
def test_a_collector_that_does_not_trust_pickles_refuses_them_and_says_so(
    oracle: dict[str, Any], tmp_path: Path
) -> None:
    """Pickled figures to a collector without ``--allow-pickled-figures``: refused, never unpickled.

    The producer logs the refusal with the remedy, the task's console names each lost event,
    and everything else lands.
    """
    relay, session = relay_session(tmp_path, CLEARML_RELAY_FIGURES="pickle")
    got = summarize(session)
    assert without(got, "mpl") == without(oracle, "mpl")
    assert not of(got, "mpl")
    assert "start it with --allow-pickled-figures, or set CLEARML_RELAY_FIGURES=render" in relay["output"]
    lost = [line for level, line in got["console"] if "does not accept pickled figures" in line]
    assert len(lost) == 4, got["console"]
    assert got["console"][: len(oracle["console"])] == oracle["console"]
