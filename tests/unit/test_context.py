from __future__ import annotations

import importlib.metadata
import os
import re
import stat
import sys
import time
from pathlib import Path

import pytest

from producer.context import git_info, installed_packages


@pytest.mark.slow
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


def _normalized(requirements: list[str]) -> set[str]:
    return {re.sub(r"[-_.]+", "-", r.split("==")[0]).lower() + "==" + r.split("==")[1] for r in requirements}


def test_installed_packages_are_those_importlib_metadata_reads() -> None:
    expected = [
        f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions() if d.metadata["Name"]
    ]
    found = installed_packages()
    assert found == sorted(found)
    assert _normalized(found) == _normalized(expected)
    assert any(p.startswith("pyzmq==") for p in found)


def test_installed_packages_reads_a_folder_without_a_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "wheel_made-1.2.3.dist-info").mkdir()
    (tmp_path / "Old_Egg-0.9-py3.11.egg-info").mkdir()
    develop = tmp_path / "develop.egg-info"  # setup.py develop: no version in the name
    develop.mkdir()
    (develop / "PKG-INFO").write_text("Metadata-Version: 2.1\nName: develop\nVersion: 4.5\n")
    (tmp_path / "broken.egg-info").mkdir()  # no metadata at all: left out
    monkeypatch.setattr(sys, "path", [str(tmp_path), str(tmp_path / "missing"), str(tmp_path / "x.zip")])
    assert installed_packages() == ["Old-Egg==0.9", "develop==4.5", "wheel-made==1.2.3"]
