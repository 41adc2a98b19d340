"""The decoder's fuzz target runs for a bounded time: a crash fails the suite with its input."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from e2e import env

TARGET = Path(__file__).resolve().parents[1] / "fuzz" / "fuzz_decode.py"
#: Seconds of fuzzing per suite run (CLEARML_RELAY_FUZZ_SECONDS overrides, for a longer campaign).
SECONDS = int(os.environ.get("CLEARML_RELAY_FUZZ_SECONDS", "20"))
#: libFuzzer reads the peak RSS from getrusage, which Linux carries across exec from the process
#: that started it: the suite's own pytest process (1.5 GB once torch is loaded) counts too.
RSS_LIMIT_MB = 4096


@pytest.mark.slow
def test_the_decoder_survives_coverage_guided_fuzzing(tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    result = subprocess.run(
        [
            sys.executable,
            str(TARGET),
            f"-max_total_time={SECONDS}",
            f"-rss_limit_mb={RSS_LIMIT_MB}",
            str(corpus),
        ],
        env=env(),
        cwd=tmp_path,  # crash-* files land here
        capture_output=True,
        text=True,
        timeout=SECONDS + 120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    done = re.search(r"Done (\d+) runs", result.stderr)  # libFuzzer's summary at its time limit
    assert done is not None, result.stderr[-4000:]
    assert int(done.group(1)) > 10_000
    assert not list(tmp_path.glob("crash-*"))
    assert list(corpus.iterdir()), "coverage guidance kept no input"
