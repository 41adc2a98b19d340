"""The framework integrations in process, each call as the events a collector receives.

Real Lightning, Transformers and TensorBoard objects call the integrations, which deliver to a
:class:`FakeCollector` on a real ZeroMQ socket. Checked here: what each call becomes, that no
hook raises into the trainer whatever it is given, that other ranks and processes report
nothing, and that ``capture_tensorboard`` wraps once and ``release_tensorboard`` restores.
The real trainings are in tests/e2e/test_frameworks.py.
"""

from __future__ import annotations

import logging
import zipfile
from argparse import Namespace
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from producer_helpers import FakeCollector

import producer
from producer import Run
from producer.wire import protocol

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("clients_stopped")]


def _events(fake: FakeCollector, run: str, *, closed: bool = True) -> list[protocol.Event]:
    """The run's events once its RunClose (``closed``) or its last event so far has arrived."""
    assert fake.wait_for(
        lambda f: bool(f.events.get(run)) and (not closed or isinstance(f.events[run][-1], protocol.RunClose))
    ), fake.events.get(run)
    return fake.events[run]


def _scalars(events: list[protocol.Event]) -> list[tuple[str, str, float, int]]:
    return [(e.title, e.series, e.value, e.iteration) for e in events if isinstance(e, protocol.Scalar)]


# ---------------------------------------------------------------------------------- Lightning


def test_lightning_logger_reports_hparams_and_metrics_as_lightning_hands_them(fake: FakeCollector) -> None:
    from producer.integrations.lightning import RelayLogger

    logger = RelayLogger("proj", "pl", endpoint=fake.endpoint, tags=["a"])
    logger.log_hyperparams(
        Namespace(lr=0.1, nested={"depth": 2, "act": {"name": "relu"}}, loss=torch.nn.MSELoss())
    )
    logger.log_metrics(
        {"train/loss": torch.tensor(0.5), "acc": 1, "val/top/k": 0.25, "note": "text", "gone": None}, step=3
    )
    logger.log_metrics({"acc": 2.0})  # no step: iteration 0
    assert logger.experiment is not None
    assert logger.version == logger.experiment.id
    logger.close()
    events = _events(fake, logger.version)
    opening = events[0]
    assert isinstance(opening, protocol.RunOpen)
    assert (opening.project, opening.name, opening.tags) == (
        "proj",
        "pl",
        ["a"],
    )
    (params,) = [e for e in events if isinstance(e, protocol.Hyperparams)]
    assert params.section == "General"
    assert params.values == {"lr": 0.1, "nested/depth": 2, "nested/act/name": "relu", "loss": "MSELoss()"}
    assert _scalars(events) == [
        ("train", "loss", 0.5, 3),
        ("acc", "acc", 1.0, 3),
        ("val/top", "k", 0.25, 3),
        ("acc", "acc", 2.0, 0),
    ]
    assert isinstance(events[-1], protocol.RunClose)
    assert events[-1].status == "completed"


def test_lightning_hooks_never_raise_whatever_they_are_given(
    fake: FakeCollector, caplog: pytest.LogCaptureFixture
) -> None:
    from producer.integrations.lightning import RelayLogger

    logger = RelayLogger("proj", "pl", endpoint=fake.endpoint, log_model="all")
    logger.log_metrics(None, step=1)  # type: ignore[arg-type]
    logger.log_metrics(None, step=2)  # type: ignore[arg-type]
    logger.log_hyperparams(42)  # type: ignore[arg-type]
    logger.after_save_checkpoint(object())
    logger.finalize("failed")  # ends the run, failed, at once
    logger.log_metrics({"late": 1.0}, step=5)  # after the end: ignored, said once
    events = _events(fake, logger.version)
    assert isinstance(events[-1], protocol.RunClose)
    assert events[-1].status == "failed"
    assert not _scalars(events)
    failures = [r.getMessage() for r in caplog.records if "RelayLogger.log_metrics failed" in r.getMessage()]
    assert len(failures) == 1, "each failing hook is reported once"
    assert any("RelayLogger.after_save_checkpoint failed" in r.getMessage() for r in caplog.records)


def test_lightning_logger_with_a_bad_setting_records_nothing_and_raises_nothing(
    fake: FakeCollector, caplog: pytest.LogCaptureFixture
) -> None:
    from producer.integrations.lightning import RelayLogger

    logger = RelayLogger("", "pl", endpoint=fake.endpoint)  # an empty project: the run cannot be made
    logger.log_metrics({"loss": 1.0}, step=1)
    logger.finalize("success")
    assert logger.experiment is None
    assert sum("the run cannot be made" in r.getMessage() for r in caplog.records) == 1
    assert fake.events == {}


def test_lightning_logger_reports_nothing_on_other_ranks(fake: FakeCollector) -> None:
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    from producer.integrations.lightning import RelayLogger

    logger = RelayLogger("proj", "pl", endpoint=fake.endpoint)
    rank_zero_only.rank = 1  # type: ignore[attr-defined]
    try:
        logger.log_metrics({"loss": 1.0}, step=1)
        logger.log_hyperparams({"lr": 1})
        assert type(logger.experiment).__name__ == "_DummyExperiment"
    finally:
        rank_zero_only.rank = 0  # type: ignore[attr-defined]
    assert logger._run.started is None, "no run on rank 1"
    assert fake.events == {}


# ------------------------------------------------------------------------------- Transformers


@pytest.fixture
def hf(tmp_path: Path) -> Iterator[tuple[Any, Any, Any]]:
    from transformers import TrainerControl, TrainerState, TrainingArguments

    return (
        TrainingArguments(output_dir=str(tmp_path / "out"), report_to="none", use_cpu=True),
        TrainerState(is_world_process_zero=True, global_step=5),
        TrainerControl(),
    )


def test_transformers_callback_reports_logs_as_clearmls_callback_does(
    fake: FakeCollector, hf: tuple[Any, Any, Any]
) -> None:
    from producer.integrations.transformers import RelayCallback

    args, state, control = hf
    callback = RelayCallback("proj", "hf", endpoint=fake.endpoint)
    callback.on_train_begin(args, state, control, model=None)
    callback.on_log(
        args,
        state,
        control,
        logs={
            "loss": 0.5,
            "eval_acc": 0.9,
            "test_f1": 0.3,
            "train_runtime": 1.5,
            "epoch": 1.0,
            "note": "text",
            "grad_norm": torch.tensor(2.0),
        },
    )
    callback.on_evaluate(args, state, control, metrics={"eval_acc": 0.9})
    assert callback.run is not None
    callback.close()
    events = _events(fake, callback.run.id)
    assert _scalars(events) == [
        ("train", "loss", 0.5, 5),
        ("eval", "acc", 0.9, 5),
        ("test", "f1", 0.3, 5),
        ("train", "grad_norm", 2.0, 5),
    ]
    singles = {e.name: e.value for e in events if isinstance(e, protocol.SingleValue)}
    assert singles == {"train_runtime": 1.5, "epoch": 1.0}
    (params,) = [e for e in events if isinstance(e, protocol.Hyperparams)]
    assert params.section == "Transformers"
    assert params.values["output_dir"] == args.output_dir
    assert not [e for e in events if isinstance(e, protocol.Configuration)], "no model, no configuration"


def test_transformers_callback_on_other_processes_reports_nothing(
    fake: FakeCollector, hf: tuple[Any, Any, Any]
) -> None:
    from producer.integrations.transformers import RelayCallback

    args, state, control = hf
    state.is_world_process_zero = False
    callback = RelayCallback("proj", "hf", endpoint=fake.endpoint, log_model=True)
    for hook in (callback.on_train_begin, callback.on_log, callback.on_save, callback.on_train_end):
        hook(args, state, control, logs={"loss": 1.0})
    assert callback.run is None
    assert fake.events == {}


def test_transformers_hooks_never_raise_and_a_missing_checkpoint_is_skipped(
    fake: FakeCollector, hf: tuple[Any, Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    from producer.integrations.transformers import RelayCallback

    args, state, control = hf
    callback = RelayCallback("proj", "hf", endpoint=fake.endpoint, log_model=True)
    callback.on_train_begin(object(), state, control)  # no to_dict(): logged once, training goes on
    callback.on_log(args, state, control, logs=["not", "a", "mapping"])  # type: ignore[arg-type]
    callback.on_save(args, state, control)  # checkpoint-5 does not exist
    callback.on_log(args, state, control, logs={"loss": 0.25})
    assert callback.run is not None
    callback.close()
    events = _events(fake, callback.run.id)
    assert _scalars(events) == [("train", "loss", 0.25, 5)], "what came after the failures still lands"
    assert not [e for e in events if isinstance(e, protocol.Model)]
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "RelayCallback.on_train_begin failed" in messages
    assert "RelayCallback.on_log failed" in messages
    assert "checkpoint-5" in messages, "the unreadable checkpoint is named"


def test_a_checkpoint_folder_arrives_as_one_zip_of_its_files(fake: FakeCollector, tmp_path: Path) -> None:
    folder = tmp_path / "checkpoint-7"
    (folder / "sub").mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(bytes(range(256)) * 5000)
    (folder / "config.json").write_text('{"a": 1}')
    (folder / "sub" / "optimizer.pt").write_bytes(b"opt" * 10)
    with Run("proj", "dir", endpoint=fake.endpoint) as run:
        run.update_output_model(str(folder), name="checkpoint-7", iteration=7)
    events = _events(fake, run.id)
    (model,) = [e for e in events if isinstance(e, protocol.Model)]
    assert (model.name, model.iteration, model.file.name) == ("checkpoint-7", 7, "checkpoint-7.zip")
    held = fake.files[model.file.sha256]
    assert held.complete
    assert len(held.data) == model.file.size
    packed = tmp_path / "got.zip"
    packed.write_bytes(bytes(held.data))
    with zipfile.ZipFile(packed) as z:
        assert z.namelist() == ["config.json", "model.safetensors", "sub/optimizer.pt"]
        assert all(info.compress_type == zipfile.ZIP_STORED for info in z.infolist())
        for name in z.namelist():
            assert z.read(name) == (folder / name).read_bytes()


# -------------------------------------------------------------------------------- TensorBoard


@pytest.fixture
def released() -> Iterator[None]:
    yield
    producer.release_tensorboard()


@pytest.mark.usefixtures("released")
def test_capture_wraps_once_forwards_to_the_given_run_and_release_restores(
    fake: FakeCollector, tmp_path: Path
) -> None:
    import torch.utils.tensorboard.writer as module
    from torch.utils.tensorboard import SummaryWriter

    own = {name: SummaryWriter.__dict__[name] for name in ("add_scalar", "add_image", "add_figure")}
    histogram = module.histogram
    newest = Run("proj", "newest", endpoint=fake.endpoint)
    target = Run("proj", "target", endpoint=fake.endpoint)
    writer = SummaryWriter(str(tmp_path / "tb"))  # made before the capture: captured all the same
    producer.capture_tensorboard(target)
    producer.capture_tensorboard(target)  # again: nothing wrapped twice
    writer.add_scalar("loss", 1.5, 2)
    producer.release_tensorboard()
    assert all(SummaryWriter.__dict__[name] is fn for name, fn in own.items())
    assert module.histogram is histogram
    writer.add_scalar("loss", 9.0, 3)  # released: TensorBoard's only
    writer.close()
    newest.close()
    target.close()
    assert _scalars(_events(fake, target.id)) == [("loss", "loss", 1.5, 2)]
    assert _scalars(_events(fake, newest.id)) == []


@pytest.mark.usefixtures("released")
def test_capture_without_an_open_run_says_so_once_and_the_writer_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from torch.utils.tensorboard import SummaryWriter

    producer.capture_tensorboard()
    writer = SummaryWriter(str(tmp_path / "tb"))
    for step in range(3):
        writer.add_scalar("loss", 1.0, step)
    writer.close()
    said = [r for r in caplog.records if "no producer.Run is open" in r.getMessage()]
    assert len(said) == 1
    assert said[0].levelno == logging.WARNING


@pytest.mark.usefixtures("released")
def test_a_forwarding_failure_is_logged_once_and_the_writers_own_error_is_its_own(
    fake: FakeCollector, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torch.utils.tensorboard import SummaryWriter

    run = Run("proj", "tb", endpoint=fake.endpoint)
    producer.capture_tensorboard(run)
    writer = SummaryWriter(str(tmp_path / "tb"))
    with pytest.raises(AssertionError, match="input format"):  # TensorBoard refuses a 2-D CHW image itself
        writer.add_image("bad", torch.zeros(4, 4), 0)

    def broken(*_: object) -> None:
        raise RuntimeError("a bug in the relay")

    with monkeypatch.context() as patch:
        patch.setattr(Run, "scalar", broken)  # the relay's side fails: the writer's call returns normally
        writer.add_scalar("loss", 0.1, 0)
        writer.add_scalar("loss", 0.2, 1)
    writer.add_scalar("loss", 0.5, 2)
    writer.close()
    run.close()
    assert _scalars(_events(fake, run.id)) == [("loss", "loss", 0.5, 2)]
    said = [r for r in caplog.records if "SummaryWriter.add_scalar not forwarded" in r.getMessage()]
    assert len(said) == 1
    assert "a bug in the relay" in said[0].getMessage()


@pytest.mark.usefixtures("released")
def test_histograms_carry_tensorboards_buckets_whether_kept_or_counted_again(
    fake: FakeCollector, tmp_path: Path
) -> None:
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import histogram

    from producer.integrations import tensorboard
    from producer.wire import reports

    values = torch.randn(300, generator=torch.Generator().manual_seed(3))
    run = Run("proj", "tb", endpoint=fake.endpoint)
    producer.capture_tensorboard(run)
    writer = SummaryWriter(str(tmp_path / "tb"))
    writer.add_histogram("w/kept", values, 1)  # the buckets of the summary the writer made
    tensorboard._FORWARDS["add_histogram"](run, writer, "w/counted", values, 2)  # none made: counted here
    writer.add_histogram("w/bins", values, 3, bins=7)
    writer.close()
    run.close()
    expected = histogram("w", values.numpy().astype(float), writer.default_bins).value[0].histo
    seven = histogram("w", values.numpy().astype(float), 7).value[0].histo
    reports_by_series = {e.series: e.call for e in _events(fake, run.id) if isinstance(e, protocol.Report)}
    for series, histo in (("kept", expected), ("counted", expected), ("bins", seven)):
        call = reports_by_series[series]
        assert isinstance(call, reports.Histogram)
        assert list(np.frombuffer(call.values.data, dtype=call.values.dtype)) == list(histo.bucket), series
        assert call.xlabels == [f"{x:.6g}" for x in histo.bucket_limit], series


@pytest.mark.usefixtures("released")
def test_images_carry_tensorboards_png_and_are_converted_as_it_does_when_none_is_kept(
    fake: FakeCollector, tmp_path: Path
) -> None:
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import image

    from producer.integrations import tensorboard

    picture = torch.linspace(0, 1, 3 * 5 * 7).reshape(3, 5, 7)
    run = Run("proj", "tb", endpoint=fake.endpoint)
    producer.capture_tensorboard(run)
    writer = SummaryWriter(str(tmp_path / "tb"))
    writer.add_image("img/kept", picture, 1)
    tensorboard._FORWARDS["add_image"](run, writer, "img/converted", picture, 2)  # none made: converted here
    writer.close()
    run.close()
    events = {
        e.series: e for e in _events(fake, run.id) if isinstance(e, protocol.DebugImage | protocol.ImageArray)
    }
    kept, converted = events["kept"], events["converted"]
    assert isinstance(kept, protocol.DebugImage)
    assert kept.file.name == "image.png"
    png = image("img", picture, dataformats="CHW").value[0].image.encoded_image_string
    assert bytes(fake.files[kept.file.sha256].data) == png, "the very PNG TensorBoard wrote"
    assert isinstance(converted, protocol.ImageArray)
    assert converted.shape == [5, 7, 3]
    pixels = np.frombuffer(bytes(fake.files[converted.file.sha256].data), dtype=np.uint8).reshape(5, 7, 3)
    expected = (picture.permute(1, 2, 0).numpy() * 255).clip(0, 255).astype(np.uint8)
    assert np.array_equal(pixels, expected)
