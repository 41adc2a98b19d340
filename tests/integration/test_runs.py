from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from collector_helpers import DEADLINE, Producer, close_event, run_events, running
from e2e import env

from collector.service.runs import list_runs


@pytest.mark.slow
def test_runs_lists_every_run_with_positions_and_state_read_only(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with running(data) as collector, Producer(collector.bound_endpoint) as producer:
        producer.submit([*run_events("done", 4), close_event("done", 5), *run_events("going", 3)])
        producer.until_acked("going", 3)
        assert collector.wait_applied("done", 5, DEADLINE)
        assert collector.wait_applied("going", 3, DEADLINE)
        # Beside a live collector: the listing reads, it never writes.
        rows = {row.run: row for row in list_runs(data)}
    assert set(rows) == {"done", "going"}
    assert (rows["done"].state, rows["done"].received, rows["done"].applied) == ("completed", 5, 5)
    assert (rows["going"].state, rows["going"].received, rows["going"].applied) == ("open", 3, 3)
    assert rows["going"].project == "proj"
    assert rows["going"].name == "train"

    as_json = subprocess.run(
        [sys.executable, "-m", "collector", "runs", "--data-dir", str(data), "--json"],
        env=env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    listed = {row["run"]: row for row in json.loads(as_json.stdout)}
    assert listed["done"]["state"] == "completed"
    assert listed["going"]["received"] == 3
    table = subprocess.run(
        [sys.executable, "-m", "collector", "runs", "--data-dir", str(data)],
        env=env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "2 runs" in table.stdout
    assert "completed" in table.stdout


def test_runs_without_collector_data_says_so(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "collector", "runs", "--data-dir", str(tmp_path / "nothing")],
        env=env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "no collector data" in result.stderr
