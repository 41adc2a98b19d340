"""PyTorch Lightning, Hugging Face Transformers and TensorBoard through the relay, end to end.

Each framework trains for real on CPU in its own process (tests/support/*_train.py,
tensorboard_script.py) and logs through its integration into a collector process with the ClearML
backend in offline mode; the session is read back from disk and compared with what the framework
itself recorded: Lightning's ``CSVLogger`` file, the Trainer's ``log_history``, TensorBoard's own
event files. With the collector down, the training finishes as fast, its hooks never wait, and
``clearml-relay sync`` later delivers the same run.
"""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from e2e import env, free_port, status, sync, wait_for
from frameworks import (
    SUPPORT,
    Collector,
    collector,
    events,
    hyperparams,
    same_scalars,
    scalars,
    single_values,
    task,
    train,
    trained,
)
from sessions import file_content, local_file

pytestmark = pytest.mark.slow
#: No hook may take this long: far below the flush timeout the down tests set.
NEVER_WAITS = 0.5
DOWN_FLUSH_TIMEOUT = "3"


# ---------------------------------------------------------------------------------- Lightning


def _lightning_expected(result: dict[str, Any]) -> Counter[tuple[str, str, int, float]]:
    """Every metric of Lightning's own CSV record, as the relay titles it."""
    expected: Counter[tuple[str, str, int, float]] = Counter()
    with open(result["csv"], newline="") as f:
        for row in csv.DictReader(f):
            step = int(row.pop("step"))
            for key, value in row.items():
                if value != "":
                    title, _, series = key.rpartition("/")
                    expected[(title or key, series if title else key, step, float(value))] += 1
    return expected


def _check_lightning(session: Path, result: dict[str, Any]) -> None:
    problems = same_scalars(scalars(session), _lightning_expected(result))
    assert not problems, problems
    got = hyperparams(session, "General")
    assert got == {"lr": "0.05", "hidden": "8", "optimizer/name": "sgd", "optimizer/momentum": "0.0"}
    the_task = task(session)
    assert the_task["tags"] == ["e2e"]
    models = {m["init"]["name"]: m for m in the_task["offline_output_models"]}
    best, last = Path(result["best"]), Path(result["last"])
    assert set(models) == {best.name, last.name}, "the best and the last checkpoint, once each"
    assert models[best.name]["init"]["tags"] == ["best"]
    assert models[last.name]["init"]["tags"] == ["last"]
    assert f"\nval_loss={result['best_score']}\n" in models[best.name]["init"]["comment"]
    for name, model in models.items():
        stored = Path(model["weights"]["weights_filename"])
        assert stored.read_bytes() == (best if name == best.name else last).read_bytes()
    images = sorted((e["metric"], e["variant"], e["iter"]) for e in events(session, "training_debug_image"))
    # One per validation: the sanity check (step 0), two epochs, and the validate() after the fit.
    assert images == [
        ("samples", "val", 0),
        ("samples", "val", 8),
        ("samples", "val", 16),
        ("samples", "val", 16),
    ]


@pytest.mark.parametrize("flavour", ["lightning", "pytorch_lightning"])
def test_lightning_lands_every_metric_the_hparams_and_the_checkpoints(tmp_path: Path, flavour: str) -> None:
    result, session = trained("lightning", tmp_path, "--flavour", flavour)
    assert Path(result["checkpoint_dir"]).parent.name == result["run"], "the logger's version is the run id"
    _check_lightning(session, result)
    assert max(result["slowest"].values()) < NEVER_WAITS, result["slowest"]


def test_lightning_log_model_all_reports_each_checkpoint_as_it_is_saved(tmp_path: Path) -> None:
    _, session = trained("lightning", tmp_path, "--log-model", "all")
    names = sorted(m["init"]["name"] for m in task(session)["offline_output_models"])
    # Epoch 0 saves epoch=0-step=8.ckpt and last.ckpt; epoch 1 a new best and last.ckpt again.
    assert names == ["epoch=0-step=8.ckpt", "epoch=1-step=16.ckpt", "last.ckpt", "last.ckpt"]


# ------------------------------------------------------------------------------- Transformers


def _transformers_expected(
    result: dict[str, Any],
) -> tuple[Counter[tuple[str, str, int, float]], dict[str, float]]:
    """The Trainer's log_history as ClearMLCallback reports it: scalars by step, single values."""
    from producer.integrations.transformers import SINGLE_VALUES

    expected: Counter[tuple[str, str, int, float]] = Counter()
    singles: dict[str, float] = {}
    for entry in result["log_history"]:
        step = entry.pop("step")
        for key, value in entry.items():
            if key in SINGLE_VALUES:
                singles[key] = value
            elif key.startswith("eval_"):
                expected[("eval", key[5:], step, value)] += 1
            else:
                expected[("train", key, step, value)] += 1
    return expected, singles


def _check_transformers(session: Path, result: dict[str, Any]) -> None:
    expected, singles = _transformers_expected(result)
    problems = same_scalars(scalars(session), expected)
    assert not problems, problems
    got_singles = single_values(session)
    assert got_singles.keys() == singles.keys()
    assert all(abs(got_singles[k] - v) <= 1e-6 * max(1, abs(v)) for k, v in singles.items()), got_singles
    section = hyperparams(session, "Transformers")
    args = result["args"]
    assert section["learning_rate"] == "0.005"
    assert section["num_train_epochs"] == "2"
    assert section["eval_strategy"] == "epoch"
    assert section["output_dir"] == args["output_dir"]
    from producer.integrations.framework import flatten

    assert set(section) == set(flatten(args)), "every training argument (nested ones by /), nothing else"
    configuration = task(session)["configuration"]["Model Configuration"]
    assert configuration["type"] == "dictionary"
    assert "hidden_size = 16" in configuration["value"]
    assert "num_hidden_layers = 1" in configuration["value"]
    models = {m["init"]["name"]: m for m in task(session)["offline_output_models"]}
    assert sorted(models) == result["checkpoints"] == ["checkpoint-16", "checkpoint-8"]
    for name, model in models.items():
        stored = Path(model["weights"]["weights_filename"])
        assert stored.name == f"{name}.zip"
        folder = Path(result["args"]["output_dir"]) / name
        with zipfile.ZipFile(stored) as packed:
            members = sorted(packed.namelist())
            assert members == sorted(
                p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()
            )
            for member in members:
                assert packed.read(member) == (folder / member).read_bytes(), member


def test_transformers_lands_the_log_history_the_arguments_the_config_and_the_checkpoints(
    tmp_path: Path,
) -> None:
    result, session = trained("transformers", tmp_path)
    _check_transformers(session, result)
    assert max(result["slowest"].values()) < NEVER_WAITS, result["slowest"]


def test_a_training_that_raises_ends_its_run_as_failed_with_the_error(tmp_path: Path) -> None:
    result_file = tmp_path / "work" / "result.json"
    (tmp_path / "work").mkdir()
    with collector(tmp_path) as running:
        done = subprocess.run(
            [
                sys.executable,
                str(SUPPORT / "transformers_train.py"),
                "--output",
                str(tmp_path / "output"),
                "--result",
                str(result_file),
                "--fail",
            ],
            cwd=tmp_path / "work",
            env=env(CLEARML_RELAY_ENDPOINT=running.endpoint),
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert done.returncode == 1, done.stderr[-3000:]
        assert "stopped on purpose" in done.stderr
        run = json.loads(result_file.read_text())["run"]
        wait_for(lambda: _state(running.endpoint, run) == "failed", 60, f"run {run} to end as failed")
        session = running.session_of(run)
    message = task(session)["status_message"]
    assert message == "failed: RuntimeError: stopped on purpose after training", message


def _state(endpoint: str, run: str) -> str | None:
    reply = status(endpoint)
    info = next((r for r in reply.runs if r.run == run), None) if reply else None
    return info.state if info is not None and info.applied >= info.journaled else None


# -------------------------------------------------------------------------------- TensorBoard


def _tensorboard_record(logdir: Path) -> dict[str, Any]:
    """What TensorBoard wrote under ``logdir``, read back by TensorBoard: every run's tags, steps, values."""
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    mux = EventMultiplexer().AddRunsFromDirectory(str(logdir))
    mux.Reload()
    record: dict[str, Any] = {}
    for run_name in sorted(mux.Runs()):
        acc = mux.GetAccumulator(run_name)
        tags = acc.Tags()
        record[run_name] = {
            "scalars": {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in tags["scalars"]},
            "images": {
                t: [(e.step, hashlib.sha256(e.encoded_image_string).hexdigest()) for e in acc.Images(t)]
                for t in tags["images"]
            },
            "histograms": {
                t: [(e.step, list(e.histogram_value.bucket)) for e in acc.Histograms(t)]
                for t in tags["histograms"]
            },
            "tensors": {
                t: [(e.step, e.tensor_proto.SerializeToString()) for e in acc.Tensors(t)]
                for t in tags["tensors"]
            },
        }
    return {k: v for k, v in record.items() if not k.startswith("hp")}  # add_hparams' run is named by time


def _check_tensorboard(session: Path, record: dict[str, Any]) -> None:
    expected: Counter[tuple[str, str, int, float]] = Counter()
    for run_name, content in record.items():
        if run_name == "after":
            continue  # written after release_tensorboard()
        for tag, points in content["scalars"].items():
            for step, value in points:
                if run_name == ".":
                    title, _, series = tag.rpartition("/")
                    expected[(title or tag, series if title else tag, step, value)] += 1
                else:  # add_scalars writes each key into a run of its own: lr_head, lr_backbone
                    expected[(tag, run_name.removeprefix(f"{tag}_"), step, value)] += 1
    expected[("hparam", "accuracy", 0, 0.9)] += 1  # add_hparams' own add_scalar, in its timestamped run
    problems = same_scalars(scalars(session), expected)
    assert not problems, problems
    images = {(e["metric"], e["variant"], e["iter"]): e for e in events(session, "training_debug_image")}
    assert set(images) == {
        ("samples", "first", 2),
        ("samples", "gray", 3),
        ("Text", "notes", 0),
        ("notes", "detail", 1),
    }
    first = file_content(session, images[("samples", "first", 2)]["url"])
    gray = file_content(session, images[("samples", "gray", 3)]["url"])
    assert first is not None
    assert (first["mode"], first["size"]) == ("RGB", [4, 6])
    assert gray is not None
    assert gray["size"] == [6, 4]
    text = local_file(session, images[("Text", "notes", 0)]["url"])
    assert text is not None
    assert text.read_text() == "first **run**"
    plots = {
        (e["metric"], e["variant"], e["iter"]): json.loads(e["plot_str"]) for e in events(session, "plot")
    }
    assert set(plots) == {("weights", "layer1", 4), ("weights", "layer2", 4), ("charts", "squares", 1)}
    layer2 = plots[("weights", "layer2", 4)]["data"][0]["y"]
    assert layer2 == record["."]["histograms"]["weights/layer2"][0][1], "TensorBoard's own buckets"
    # The figure itself, drawn by the collector: ClearML makes an image plot of this one.
    (drawn,) = plots[("charts", "squares", 1)]["layout"]["images"]
    picture = file_content(session, drawn["source"])
    assert picture is not None, drawn
    assert picture["format"] == "PNG", drawn
    assert hyperparams(session, "TB_hparams") == {"lr": "0.1", "optimizer": "sgd"}


def test_tensorboard_capture_lands_every_call_and_leaves_the_writer_as_it_was(tmp_path: Path) -> None:
    nowhere = f"tcp://127.0.0.1:{free_port()}"
    plain = train(
        "tensorboard",
        tmp_path / "plain",
        "--no-capture",
        CLEARML_RELAY_ENDPOINT=nowhere,
        CLEARML_RELAY_FLUSH_TIMEOUT="0",
    )
    result, session = trained("tensorboard", tmp_path)
    record = _tensorboard_record(tmp_path / "logs")
    assert record == _tensorboard_record(tmp_path / "plain" / "logs"), (
        "the writer writes what it writes uncaptured"
    )
    assert "after_release" in record["after"]["scalars"]
    assert not plain["slowest"], "an uncaptured writer forwards nothing"
    _check_tensorboard(session, record)
    assert max(result["slowest"].values()) < NEVER_WAITS, result["slowest"]


# ------------------------------------------------------------------------ the collector is down


@pytest.mark.parametrize("framework", ["lightning", "transformers", "tensorboard"])
def test_with_the_collector_down_training_never_waits_and_sync_delivers_the_run_later(
    tmp_path: Path, framework: str
) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    spool = tmp_path / "spool"
    down = {
        "CLEARML_RELAY_ENDPOINT": endpoint,
        "CLEARML_RELAY_SPOOL_DIR": str(spool),
        "CLEARML_RELAY_FLUSH_TIMEOUT": DOWN_FLUSH_TIMEOUT,
    }
    result = train(framework, tmp_path, **down)
    assert max(result["slowest"].values()) < NEVER_WAITS, result["slowest"]
    output = result["output"]
    assert "not fully delivered" in output, output
    assert "clearml-relay sync" in output, output
    assert "Traceback" not in output, output
    running = Collector(tmp_path, endpoint=endpoint).start()
    try:
        sync(endpoint, spool)
        session = running.session(result["run"])
    finally:
        running.stop()
    if framework == "tensorboard":
        _check_tensorboard(session, _tensorboard_record(tmp_path / "logs"))
    else:
        {"lightning": _check_lightning, "transformers": _check_transformers}[framework](session, result)
