from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from e2e import ROOT, env


def _shape(line: str) -> str:
    """A line of the demo's output without what changes from run to run: ids, paths, numbers."""
    line = re.sub(r"[0-9a-f]{32}", "<id>", line)
    line = re.sub(r"(?<![\w.])/\S+", "<path>", line)
    return re.sub(r" +", " ", re.sub(r"\d+(\.\d+)?", "<n>", line))  # numbers are padded to widths


def _own_lines(text: str) -> list[str]:
    """The demo's own lines (``label      what``, the hooks' timings), not the training's."""
    return [
        _shape(line)
        for line in text.splitlines()
        if re.match(r"([a-z]+ {2,}|  [a-z_]+ +\d+ calls +)\S", line)
    ]


def documented_sample() -> str:
    """The demo's sample output in docs/user-guide.md ("Try it")."""
    guide = (ROOT / "docs" / "user-guide.md").read_text()
    return guide.split("## Try it", 1)[1].split("```\n", 2)[1]


@pytest.mark.slow
def test_the_demo_trains_yolo_through_a_collector_and_everything_lands(tmp_path: Path) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "collector",
            "--log-level",
            "WARNING",
            "demo",
            "--workdir",
            str(tmp_path),
            "--epochs",
            "2",
        ],
        env={k: v for k, v in env().items() if k != "PYTEST_CURRENT_TEST"},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    # Other installed loggers (MLflow writes ./mlflow.db) stay off: nothing lands in the cwd.
    assert not list(cwd.iterdir())
    assert "result     everything landed" in out
    landed = {
        kind: int(n)
        for n, kind in re.findall(r"(\d+) ([a-z ]+?)(?:,|$)", out.split("landed     ")[1].splitlines()[0])
    }
    assert landed["output models"] == 1
    assert landed["plots"] >= 7
    assert landed["debug images"] >= 3
    assert landed["scalars"] > 20
    assert landed["single values"] >= 4
    assert landed["console lines"] > 20  # lines, however the run's thread batched them
    assert re.search(r"the hooks took [0-9.]+ ms of it", out)
    session = out.split("session    ")[1].splitlines()[0]
    assert Path(session).is_dir()
    assert not Path(session + ".zip").exists(), "one copy of the session: the folder"
    assert Path(session).is_relative_to(tmp_path), "the demo keeps everything in its work folder"
    # What the docs show is what a run prints, but for its ids, paths and numbers.
    assert _own_lines(documented_sample()) == _own_lines(out)
