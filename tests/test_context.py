from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from producer.context import git_info


def test_all_git_calls_share_one_time_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A git that answers every call, slowly (a repository on a hung network filesystem): each
    # call alone is under any per-call timeout, but four of them would stall the writer thread.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "git"
    fake.write_text("#!/bin/sh\nsleep 0.4\necho 0123456789abcdef\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")

    started = time.monotonic()
    info = git_info(tmp_path, budget=0.6)
    elapsed = time.monotonic() - started

    assert info is not None
    assert info.commit == "0123456789abcdef"  # the first call fits in the budget
    assert info.diff == ""  # the last ones do not, and are skipped
    assert elapsed < 1.2, f"git calls took {elapsed:.2f}s against a 0.6s budget"
