"""The package builds: an sdist and a wheel, from a copy of the sources, offline, without a warning.

The build runs without isolation (``--no-isolation``: the dev extra installs ``build`` and the
setuptools it needs), so it never reaches a package index, and from a copy of the files a build
reads, so it writes nothing into the working tree (no ``*.egg-info`` there).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: What the build reads: the metadata, the readme it names and the packages it finds.
SOURCES = ("pyproject.toml", "README.md", "producer", "collector")
WARNING = re.compile(r"warning|deprecat", re.IGNORECASE)


@pytest.mark.slow
def test_the_sdist_and_the_wheel_build_offline_without_a_warning(tmp_path: Path) -> None:
    source = tmp_path / "src"
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            source.mkdir(exist_ok=True)
            shutil.copy(ROOT / name, source / name)
    dist = tmp_path / "dist"
    # PYTHONDONTWRITEBYTECODE would make setuptools warn that it skips byte-compiling.
    environ = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    built = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(source)],
        env=environ,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    output = built.stdout + built.stderr
    assert built.returncode == 0, output
    warnings = [line for line in output.splitlines() if WARNING.search(line)]
    assert not warnings, "\n".join(warnings)

    (sdist,) = dist.glob("clearml_relay-*.tar.gz")
    (wheel,) = dist.glob("clearml_relay-*-py3-none-any.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        headers = archive.read(metadata).decode()
    assert "producer/run.py" in names
    assert "collector/service/cli.py" in names
    assert not [n for n in names if n.startswith("tests/")]
    assert "License-Expression: Apache-2.0" in headers.splitlines()
    assert "producer/integrations/lightning.py" in names
    assert "producer/integrations/transformers.py" in names
    extras = {line.split(": ", 1)[1] for line in headers.splitlines() if line.startswith("Provides-Extra: ")}
    assert {"collector", "ultralytics", "lightning", "transformers", "tensorboard"} <= extras, extras
    assert 'Requires-Dist: lightning>=2.0; extra == "lightning"' in headers.splitlines()
    assert 'Requires-Dist: transformers>=4.40; extra == "transformers"' in headers.splitlines()
    with tarfile.open(sdist) as archive:
        members = archive.getnames()
    assert any(m.endswith("/pyproject.toml") for m in members)
    assert any(m.endswith("/producer/run.py") for m in members)
