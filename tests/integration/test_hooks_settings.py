"""A bad producer setting under the Ultralytics hooks: told on stderr before the training, and at its end.

Inside trainer hooks nothing may raise, so the training goes on unrecorded; the user reads why
twice: when the hooks are attached (or the module's ``callbacks`` taken), before the first epoch,
and once more when the training ends. Each script runs in a process of its own, with the
logging Python gives a script that configures none, so stderr is exactly what a user sees.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from e2e import env

SUPPORT = Path(__file__).resolve().parents[1] / "support"
PROBLEM = "CLEARML_RELAY_FLUSH_TIMEOUT='abc': expected a number of seconds >= 0"
BEFORE = f"clearml-relay: nothing will be recorded for this training: {PROBLEM}"
AFTER = f"clearml-relay: nothing was recorded for this training because {PROBLEM}"

# The hooks as a trainer calls them, on a fake trainer; markers on stderr show when each line came.
SCRIPT = """
import sys
from pathlib import Path
from hooks_helpers import fake_trainer
import producer
from producer.integrations.ultralytics import RelayHooks

trainer = fake_trainer(Path(sys.argv[2]))
if sys.argv[1] == "attach":
    model = type("Model", (), {"callbacks": {}, "add_callback": lambda self, e, f: None})()
    hooks = producer.attach(model, late_files_timeout=0, stats_interval=0)
    callbacks = hooks.callbacks
else:
    callbacks = producer.callbacks
    from producer.integrations.ultralytics import default_hooks
    hooks = default_hooks()
print("-- training starts", file=sys.stderr, flush=True)
callbacks["on_pretrain_routine_start"](trainer)
callbacks["on_train_end"](trainer)
callbacks["teardown"](trainer)
assert hooks.wait(30), "the training's end was never handled"
print("-- training ended", file=sys.stderr, flush=True)
assert hooks.run is None
"""


@pytest.mark.slow
@pytest.mark.parametrize("way", ["attach", "callbacks"])
def test_a_bad_setting_is_told_before_the_training_and_at_its_end(tmp_path: Path, way: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SCRIPT), way, str(tmp_path / "run")],
        env=env(CLEARML_RELAY_FLUSH_TIMEOUT="abc", PYTHONPATH=f"{SUPPORT}{os.pathsep}{env()['PYTHONPATH']}"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stdout) == (0, ""), result.stderr
    assert result.stderr.splitlines() == [BEFORE, "-- training starts", AFTER, "-- training ended"]
    spool = Path(os.environ["CLEARML_RELAY_SPOOL_DIR"])
    assert not spool.exists() or not any(spool.iterdir()), "an outbox was made"


def test_a_bad_plots_argument_is_refused_when_the_hooks_are_made() -> None:
    import producer

    model = type("Model", (), {"callbacks": {}, "add_callback": lambda self, e, f: None})()
    with pytest.raises(ValueError, match=r"^plots='nowhere': expected one of trainer, collector$"):
        producer.attach(model, plots="nowhere")


ATTACH = """
import producer
model = type("Model", (), {"callbacks": {}, "add_callback": lambda self, e, f: None})()
producer.attach(model, **eval(__import__("sys").argv[1]))
print("-- attached", file=__import__("sys").stderr, flush=True)
"""


@pytest.mark.parametrize(
    ("options", "told"),
    [
        ("{}", "clearml-relay: CLEARML_RELAY_PLOTS='sideways': expected one of trainer, collector; "
               "Ultralytics draws the plots"),
        ("{'plots': 'collector'}", None),  # the argument wins over the variable
    ],
)  # fmt: skip
def test_a_bad_plots_variable_is_told_and_ultralytics_draws(options: str, told: str | None) -> None:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(ATTACH), options],
        env=env(CLEARML_RELAY_PLOTS="sideways"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines[-1] == "-- attached"
    assert lines[:-1] == ([told] if told else []), result.stderr
