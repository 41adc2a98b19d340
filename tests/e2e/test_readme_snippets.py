"""The README's Lightning, Transformers and TensorBoard snippets run as they are printed.

Each Python block of the README's "Lightning, Transformers, TensorBoard" section runs in a
fresh process (in a private working directory) against a collector process with the ClearML
backend in offline mode; its one run must land completed, with the scalars the snippet logs.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from e2e import ROOT, env, status, wait_for
from frameworks import collector, scalars

pytestmark = pytest.mark.slow
SECTION = "## Lightning, Transformers, TensorBoard"


def _snippets() -> dict[str, str]:
    text = (ROOT / "README.md").read_text()
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"\n### ([^\n]+)\n.*?```python\n(.*?)```", section, flags=re.S)
    return {title.split(":")[0].strip(): code for title, code in blocks}


def test_the_section_has_a_snippet_per_integration() -> None:
    assert sorted(_snippets()) == ["Hugging Face Transformers", "PyTorch Lightning", "TensorBoard"]


@pytest.mark.parametrize(
    ("name", "title"),
    [("PyTorch Lightning", "train"), ("Hugging Face Transformers", "train"), ("TensorBoard", "loss")],
)
def test_a_readme_snippet_runs_and_its_run_lands(tmp_path: Path, name: str, title: str) -> None:
    script = tmp_path / "snippet.py"
    script.write_text(_snippets()[name])
    with collector(tmp_path) as running:
        done = subprocess.run(
            [sys.executable, str(script)],
            cwd=tmp_path,
            env=env(CLEARML_RELAY_ENDPOINT=running.endpoint, HF_HUB_OFFLINE="1"),
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

        def one_run() -> list[str]:
            reply = status(running.endpoint)
            return [r.run for r in reply.runs] if reply else []

        wait_for(lambda: len(one_run()) == 1, 30, "the snippet's run to reach the collector")
        session = running.session(one_run()[0])
    assert any(t == title for t, *_ in scalars(session)), sorted(scalars(session))[:5]
