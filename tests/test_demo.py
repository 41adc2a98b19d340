from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from e2e import env


def test_the_demo_runs_a_collector_and_a_training_process_and_everything_lands(tmp_path: Path) -> None:
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
        env=env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "result     everything landed" in result.stdout
    # 2 epochs: RunOpen, params, 5 scalars + image + text per epoch, plot, single value, model, close.
    assert ", 20 events applied" in result.stdout
    assert "image 2, model 1, open 1, params 1, plot 1, scalar 10, single 1, text 2" in result.stdout
    records = list((tmp_path / "collector" / "records").glob("*.jsonl"))
    assert len(records) == 1
