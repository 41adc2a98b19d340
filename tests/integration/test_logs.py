"""Logs as JSON lines: every line a real collector process writes parses, with run and kind fields.

The collector runs as a subprocess with its stdout and stderr in one file, as a container runtime
collects them; every line of that file must be one JSON object. With the ClearML backend that
includes what ClearML's own loggers write.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from clearml_server import ClearMLServerDouble
from collector_helpers import Producer, run_events
from e2e import check_online_exactly_once, env, produce, stop, wait_for
from service_helpers import running_service, stuck_backend

from collector.config import ENV_LOG_FORMAT

DEADLINE = 30.0


def _json_lines(log: Path) -> list[dict[str, Any]]:
    lines = log.read_text().splitlines()
    assert lines, "the collector logged nothing"
    parsed = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise AssertionError(f"line {number} is not JSON: {line!r}") from None
        assert isinstance(record, dict), line
        assert {"time", "level", "logger", "message"} <= record.keys(), line
        assert datetime.fromisoformat(record["time"]).utcoffset() is not None, line
        parsed.append(record)
    return parsed


@pytest.mark.slow
def test_json_logs_carry_run_and_kind_and_every_line_parses(tmp_path: Path) -> None:
    stuck_backend(tmp_path / "data", "stuck")
    with running_service(tmp_path, environ=env(**{ENV_LOG_FORMAT: "json"})) as service:
        with Producer(service.endpoint) as producer:
            producer.submit(run_events("stuck", 2))
            producer.until_acked("stuck", 2)
        wait_for(lambda: "failed again" in service.log.read_text(), DEADLINE, "a retried apply logged")
        assert stop(service.proc) == 0
    records = _json_lines(service.log)
    failures = [r for r in records if r.get("run") == "stuck" and r["level"] in ("ERROR", "WARNING")]
    assert failures, records
    first = failures[0]
    assert first["kind"] == "open"  # the run's first event is the one that cannot be applied
    assert first["logger"] == "collector.pipeline.appliers"
    assert first["message"].startswith("run stuck: applying seq 1 (open) failed, retrying in")
    assert "No space left on device" in first["exception"]
    assert all(r["kind"] == "open" for r in failures)
    messages = [r["message"] for r in records]
    assert any(m.startswith("collector listening on tcp://127.0.0.1:") for m in messages)
    assert "received SIGTERM: stopping (send it again to force)" in messages
    assert messages[-1] == "collector stopped"
    assert {r["level"] for r in records} <= {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}


@pytest.mark.slow
def test_json_logs_hold_what_clearml_logs_too(tmp_path: Path) -> None:
    """Online, the server refuses the first event batch: the SDK's own logger reports it, as JSON.

    ClearML's loggers have handlers of their own on the process's streams; those lines must come
    out as JSON records too (``logger`` ``stdout`` or ``stderr``), and the run still lands once.
    """
    spool, work = tmp_path / "spool", tmp_path / "work"
    with ClearMLServerDouble() as server:
        server.fail("events.add_batch", status=500, times=1)
        args = ("--backend", "clearml", "--log-format", "json")
        with running_service(tmp_path, *args, environ=server.child_env()) as service:
            files = ("--file-every", "5", "--model-bytes", "100000")
            proc = produce(service.endpoint, spool, work, "run", 10, *files, "--flush-timeout", "30")
            output = proc.communicate(timeout=120)[0].decode()
            assert proc.returncode == 0, output
            manifest = json.loads((work / "run.json").read_text())
            wait_for(lambda: "journal retired" in service.log.read_text(), 60, "the run to finish and retire")
            assert stop(service.proc) == 0
        check_online_exactly_once(server, manifest, "run", 10, 5)
        assert not server.escapes, "nothing may leave this machine"
    run = manifest["run"]
    records = _json_lines(service.log)
    printed = [r["message"] for r in records if r["logger"] in ("stdout", "stderr")]
    assert any("events.add_batch" in m and "injected failure" in m for m in printed), records
    retired = [r for r in records if "journal retired" in r["message"]]
    assert [r["run"] for r in retired] == [run]


def test_an_unknown_log_format_is_a_configuration_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "collector", "collector", "--data-dir", str(tmp_path)],
        env=env(**{ENV_LOG_FORMAT: "xml"}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"clearml-relay: configuration error: {ENV_LOG_FORMAT}='xml': expected one of text, json"
    )
