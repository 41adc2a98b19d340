"""Scalars by the batch are what the SDK itself writes and sends, byte for byte.

The collector builds each scalar's add request as a dict and writes a batch of them in one go
(:mod:`collector.backends.clearml.scalars`) instead of going through the SDK's datamodel per
scalar. These tests pin that against ClearML itself: the same calls, at the same frozen clock,
through ``Logger.report_scalar`` and through the batch path, in one process
(``tests/support/scalar_rows.py``), give the same bytes in the offline session's metrics.jsonl
and the same ``events.add_batch`` bodies at the server double. A ClearML upgrade that changes
the format fails here (and, at run time, the per-task probe falls back to the SDK's own path).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from clearml_server import ClearMLServerDouble
from e2e import env

from collector.backends.clearml import compat, scalars
from collector.backends.clearml.backend import ClearMLBackend

SCRIPT = Path(__file__).resolve().parents[1] / "support" / "scalar_rows.py"


def _run(environ: dict[str, str]) -> dict[str, list[str]]:
    done = subprocess.run(
        [sys.executable, str(SCRIPT)], env=environ, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    tasks: dict[str, list[str]] = json.loads(done.stdout.strip().splitlines()[-1])
    return tasks


def test_offline_the_batch_path_writes_the_sdks_bytes() -> None:
    tasks = _run(env())
    written = {}
    for how, (task_id, session) in tasks.items():
        data = (Path(session) / "metrics.jsonl").read_bytes()
        assert task_id.encode() in data
        written[how] = data.replace(task_id.encode(), b"<task>")
    assert written["rows"] == written["sdk"]
    lines = written["sdk"].splitlines()
    assert len(lines) == 2  # one line per drain, as the SDK writes it
    requests = [r for line in lines for r in json.loads(line)]
    assert [r["metric"] for r in requests][-1] == "Summary"
    assert {r["value"] for r in requests if r["metric"] in ("nan", "inf")} == {0.0}  # the SDK's stand-in


def test_online_the_batch_path_sends_the_sdks_bytes(tmp_path: Path) -> None:
    with ClearMLServerDouble() as server:
        tasks = _run(env(**server.env()) | {"CLEARML_CACHE_DIR": str(tmp_path / "cache")})
        sent: dict[str, list[bytes]] = {"sdk": [], "rows": []}
        for call in server.calls("events.add_batch"):
            task_ids = {request["task"] for request in call.body}
            assert len(task_ids) == 1
            (how,) = [how for how, (task_id, _) in tasks.items() if task_id in task_ids]
            sent[how].append(call.raw.replace(tasks[how][0].encode(), b"<task>"))
        assert len(sent["sdk"]) == 2
        assert sent["rows"] == sent["sdk"]
        assert call.headers["content-type"] == "application/json-lines"
        stored = {
            how: server.events(task_id, type="training_stats_scalar") for how, (task_id, _) in tasks.items()
        }
    for events in stored.values():
        for event in events:
            event.pop("task")
    assert stored["rows"] == stored["sdk"]
    assert len(stored["rows"]) == 9


def _session_scalars(session: Path) -> list[tuple[str, str, float, int]]:
    requests: list[dict[str, Any]] = [
        r for line in (session / "metrics.jsonl").read_text().splitlines() for r in json.loads(line)
    ]
    return [(r["metric"], r["variant"], r["value"], r["iter"]) for r in requests]


def test_a_clearml_that_writes_requests_otherwise_gets_its_own_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The per-task probe finds the SDK's request differs from ours: scalars go through the SDK."""
    original = scalars.scalar_request

    def reordered(extra: dict[str, Any], **fields: Any) -> dict[str, Any]:
        request = original(extra, **fields)
        return {"value": request.pop("value"), **request}

    monkeypatch.setattr(scalars, "scalar_request", reordered)
    ClearMLBackend(tmp_path / "state", offline=True)  # installs compat, as the collector does
    task = compat.create_task("rows-pin", "fallback", compat.Task.TaskTypes.training)
    with caplog.at_level(logging.WARNING, logger="collector.backends.clearml.backend"):
        writers = compat.TaskWriters(task)
    assert writers._scalar_extra is None
    assert "reporting them one by one" in caplog.text
    writers.report_scalars([("loss", "train", 0.5, 3), ("loss", "train", 0.25, 4)])
    writers.drain()
    assert _session_scalars(Path(task.get_offline_mode_folder())) == [
        ("loss", "train", 0.5, 3),
        ("loss", "train", 0.25, 4),
    ]
