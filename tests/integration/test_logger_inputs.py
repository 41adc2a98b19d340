"""``run.logger`` and the task calls with what callers get wrong, and their settings and bounds.

Bad input never raises: it is logged once per (method, reason) and the calls after it are
delivered. Also: debug-sample history slots, ``delete_after_upload``, ``Logger.current_logger()``,
``Run.connect`` and friends, and ``CLEARML_RELAY_MAX_PENDING_BYTES``.
"""

from __future__ import annotations

import argparse
import errno
import io
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from producer_helpers import FakeCollector
from waiting import wait_for

from producer import Run
from producer.logger import Logger, base
from producer.logger import logger as logger_module
from producer.wire import protocol, reports

#: Stop the producer clients after each test (some drop events on purpose), before the
#: suite's leak check (tests/integration/conftest.py).
pytestmark = pytest.mark.usefixtures("clients_stopped")


def _warnings(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


def _of(fake: FakeCollector, run: Run, kind: type[Any]) -> list[Any]:
    return [e for e in fake.events[run.id] if isinstance(e, kind)]


def test_max_image_history_cycles_slots_and_the_default_history_applies(fake: FakeCollector) -> None:
    run = Run("proj", "history", endpoint=fake.endpoint)
    log = run.logger
    image = np.zeros((2, 2), dtype=np.uint8)
    assert log.get_default_debug_sample_history() == -1
    for i in range(3):
        log.report_image("h", "two", iteration=i, image=image, max_image_history=2)
        log.report_image("h", "unbounded", iteration=i, image=image)
    log.set_default_debug_sample_history(3)
    assert log.get_default_debug_sample_history() == 3
    for i in range(4):
        log.report_image("h", "default", iteration=i, image=image)
    log.report_image("h", "given wins", iteration=0, image=image, max_image_history=1)
    log.report_media("h", "media", iteration=0, url="https://example.com/a.mp4")  # a URL takes no slot
    for i in range(2):
        log.report_media("h", "media", iteration=i, stream=io.BytesIO(b"x"), max_history=1)
    assert run.close()
    slots: dict[str, list[int | None]] = {}
    for event in _of(fake, run, protocol.ImageArray) + _of(fake, run, protocol.Media):
        slots.setdefault(event.series, []).append(event.slot)
    assert slots == {
        "two": [0, 1, 0],
        "unbounded": [None, None, None],
        "default": [0, 1, 2, 0],
        "given wins": [0],
        "media": [0, 0],
    }


def test_delete_after_upload_deletes_the_file_once_delivered_and_only_then(
    fake: FakeCollector, tmp_path: Path
) -> None:
    files = {name: tmp_path / name for name in ("gone.png", "kept.png", "gone.mp4", "kept.mp4")}
    for i, path in enumerate(files.values()):
        path.write_bytes(bytes([i]) * (1000 + i))
    contents = {name: path.read_bytes() for name, path in files.items()}
    run = Run("proj", "delete", endpoint=fake.endpoint)
    run.logger.report_image("d", "gone", 0, local_path=str(files["gone.png"]), delete_after_upload=True)
    run.logger.report_image("d", "kept", 0, local_path=str(files["kept.png"]))
    run.logger.report_media("d", "gone", 0, local_path=str(files["gone.mp4"]), delete_after_upload=True)
    run.logger.report_media("d", "kept", 0, local_path=str(files["kept.mp4"]))
    assert run.close()
    events = _of(fake, run, protocol.DebugImage) + _of(fake, run, protocol.Media)
    delivered = [bytes(fake.files[e.file.sha256].data) for e in events]
    assert delivered == [contents[n] for n in ("gone.png", "kept.png", "gone.mp4", "kept.mp4")]
    assert {name: path.exists() for name, path in files.items()} == {
        "gone.png": False, "kept.png": True, "gone.mp4": False, "kept.mp4": True,
    }  # fmt: skip


def test_bad_logger_input_never_raises_is_logged_once_per_reason_and_the_next_call_is_delivered(
    fake: FakeCollector, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = Run("proj", "bad-input", endpoint=fake.endpoint)
    log = run.logger
    image = np.zeros((4, 4, 3), dtype=np.uint8)
    bad_calls: list[Callable[[], object]] = [
        lambda: log.report_image("i", "none", 0),
        lambda: log.report_image("i", "two", 0, local_path=str(tmp_path / "x.png"), image=image),
        lambda: log.report_image("i", "three", 0, image=image, url="https://example.com/x.png"),
        lambda: log.report_image("i", "channels", 0, image=np.zeros((4, 4, 2), dtype=np.uint8)),
        lambda: log.report_image("i", "5-d", 0, image=np.zeros((1, 1, 1, 1, 1))),
        lambda: log.report_image("i", "list", 0, image=[[1, 2]]),
        lambda: log.report_histogram("h", "strings", ["a", "b"]),  # type: ignore[list-item]
        lambda: log.report_histogram("h", "strings again", np.array(["c"])),  # type: ignore[arg-type]
        lambda: log.report_table("t", "dict", 0, table_plot={"a": [1, 2]}),
        lambda: log.report_text("loud", level="loud"),  # type: ignore[arg-type]
        lambda: log.report_scalar("s", "s", "abc", 0),  # type: ignore[arg-type]
        lambda: log.report_plotly("p", "list", [1, 2]),
        lambda: log.report_line_plot("l", "not a list", "x", "y"),
    ]
    with caplog.at_level(logging.WARNING, logger="producer.run"):
        for i, call in enumerate(bad_calls):
            call()
            log.report_scalar("after", "bad", float(i), i)
        log.report_histogram("h", "non-finite", [1.0, float("nan"), float("inf")], iteration=99)
        assert run.close() is True
    assert len(_warnings(caplog, "Logger.report_image ignored: report_image takes exactly one of")) == 1
    assert _warnings(caplog, "got none")
    assert len(_warnings(caplog, "image must be HxW or HxWxC with 1, 3 or 4 channels")) == 1
    assert _warnings(
        caplog, "Logger.report_image ignored: image must be a numpy.ndarray or a PIL.Image, got list"
    )
    assert (
        len(_warnings(caplog, "Logger.report_histogram ignored: values must hold numbers or booleans")) == 1
    )
    assert _warnings(caplog, "report_table ignored: table_plot must be a pandas DataFrame or a list of rows")
    assert _warnings(caplog, "Logger.report_text ignored: level must be a logging level, got 'loud'")
    assert _warnings(caplog, "value must be a real number, got the string 'abc'")
    assert _warnings(caplog, "Logger.report_plotly ignored: figure must be a dict, got list")
    assert _warnings(caplog, "Logger.report_line_plot ignored: series must be a list of Logger.SeriesInfo")
    assert len(caplog.records) == 9, [r.getMessage() for r in caplog.records]
    assert run.client is not None
    assert run.client.stats()["api_rejected"] == len(bad_calls)
    scalars = _of(fake, run, protocol.Scalar)
    assert [(s.value, s.iteration) for s in scalars] == [(float(i), i) for i in range(len(bad_calls))]
    (histogram,) = _of(fake, run, protocol.Report)  # NaN and infinities travel: the collector decides
    values = histogram.call.values
    assert isinstance(histogram.call, reports.Histogram)
    np.testing.assert_array_equal(np.frombuffer(values.data, "<f8"), [1.0, np.nan, np.inf])


def test_a_missing_local_path_drops_only_that_event(
    fake: FakeCollector, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = tmp_path / "missing.png"
    run = Run("proj", "missing", endpoint=fake.endpoint)
    with caplog.at_level(logging.WARNING):
        run.logger.report_scalar("s", "s", 1.0, 1)
        run.logger.report_image("i", "missing", 0, local_path=str(missing))
        run.logger.report_media("m", "missing", 0, local_path=missing)  # type: ignore[arg-type]
        run.logger.report_scalar("s", "s", 2.0, 2)
        assert run.close()
    assert len(_warnings(caplog, f"cannot read {missing}")) == 2
    assert [type(e).__name__ for e in fake.events[run.id]] == ["RunOpen", "Scalar", "Scalar", "RunClose"]
    assert fake.seqs(run.id) == [1, 2, 3, 4]
    assert run.client is not None
    assert run.client.stats()["files_missing"] == 2


def test_unsupported_logger_calls_do_nothing_and_say_so_once(
    fake: FakeCollector, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logger_module, "_told", set())  # the static methods say so once per process
    run = Run("proj", "unsupported", endpoint=fake.endpoint)
    log = run.logger
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            log.set_default_upload_destination("s3://bucket")
            with log.capture_logging():
                pass
            Logger.set_reporting_nan_value(0.0)
            log.tensorboard_auto_group_scalars(True)
        log.set_flush_period(3.0)
        assert (log.get_flush_period(), log.get_default_upload_destination()) == (None, "")
        assert log.flush() is True
        assert log.flush(wait=True) is True
    assert len(_warnings(caplog, "Logger.set_default_upload_destination ignored: not supported")) == 1
    assert len(_warnings(caplog, "Logger.capture_logging ignored: not supported")) == 1
    assert len(_warnings(caplog, "Logger.set_reporting_nan_value ignored")) == 1
    assert len(_warnings(caplog, "Logger.tensorboard_auto_group_scalars ignored")) == 1
    assert run.close()
    assert [type(e).__name__ for e in fake.events[run.id]] == ["RunOpen", "RunClose"]


# ------------------------------------------------------------------------------ current_logger


def test_current_logger_is_the_newest_open_runs_and_without_one_calls_are_ignored_warned_once(
    fake: FakeCollector, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fresh no-run logger state: it says "no run" once per process, and another test may have.
    monkeypatch.setattr(logger_module._NO_RUN_LOGGER, "_run", base.NoRun())
    first = Run("proj", "first", endpoint=fake.endpoint)
    second = Run("proj", "second", endpoint=fake.endpoint)
    assert Logger.current_logger() is second.logger
    Logger.current_logger().report_scalar("s", "second", 2.0, 2)
    assert second.close()
    assert Logger.current_logger() is first.logger
    Logger.current_logger().report_scalar("s", "first", 1.0, 1)
    assert first.close()
    orphan = Logger.current_logger()
    assert orphan is not first.logger
    with caplog.at_level(logging.WARNING, logger="producer.run"):
        orphan.report_scalar("s", "none", 3.0, 3)
        orphan.report_single_value("v", 1.0)
        orphan.report_text("nobody listens", print_console=False)
        orphan.report_image("i", "none", 0, image=np.zeros((2, 2), dtype=np.uint8))
        orphan.report_histogram("h", "none", [1, 2])
        assert orphan.flush(wait=True) is False
    assert len(_warnings(caplog, "no producer.Run is open")) == 1
    assert [e.series for e in _of(fake, first, protocol.Scalar)] == ["first"]
    assert [e.series for e in _of(fake, second, protocol.Scalar)] == ["second"]


# --------------------------------------------------------------------------------- task calls


class _Base:
    inherited = "base"


class _Settings(_Base):
    lr = 0.01
    layers: ClassVar[list[int]] = [64, 32]
    name = "yolo"
    _private = 1
    device = object()  # not a plain value: left out

    def method(self) -> int:  # a function: left out
        return 1


def test_connect_sends_a_dict_a_namespace_or_an_objects_plain_attributes_and_returns_it(
    fake: FakeCollector,
) -> None:
    options = {"lr": 0.1, "nested": {"depth": 3, "path": Path("/data")}, "sizes": (1, 2)}
    namespace = argparse.Namespace(epochs=3, batch=16, tag=None)
    run = Run("proj", "connect", endpoint=fake.endpoint)
    assert run.connect(options, name="opt") is options
    assert run.connect(namespace, name="Args") is namespace
    assert run.connect(_Settings) is _Settings
    run.set_parameters({"Args/lr": 0.2}, **{"General/seed": 7})
    run.update_parameters({"Args/epochs": 5})
    assert run.close()
    events = _of(fake, run, protocol.Parameters)
    assert [(e.how, e.section) for e in events] == [
        ("connect", "opt"), ("connect", "Args"), ("connect", None), ("set", None), ("update", None),
    ]  # fmt: skip
    assert events[0].values == {"lr": 0.1, "nested": {"depth": 3, "path": "/data"}, "sizes": [1, 2]}
    assert events[1].values == {"epochs": 3, "batch": 16, "tag": None}
    assert events[2].values == {"lr": 0.01, "layers": [64, 32], "name": "yolo", "inherited": "base"}
    assert events[3].values == {"Args/lr": 0.2, "General/seed": 7}
    assert events[4].values == {"Args/epochs": 5}


def test_connecting_a_value_without_attributes_is_rejected_with_its_reason(
    fake: FakeCollector, caplog: pytest.LogCaptureFixture
) -> None:
    run = Run("proj", "connect-int", endpoint=fake.endpoint)
    with caplog.at_level(logging.WARNING, logger="producer.run"):
        assert run.connect(5) == 5
    assert run.close()
    assert _warnings(caplog, "Run.connect ignored: cannot connect a int: pass a dict or an object")


def test_connect_configuration_sends_a_dict_or_a_files_text(fake: FakeCollector, tmp_path: Path) -> None:
    config = {"model": {"depth": 3}, "classes": ["cat", "dog"]}
    yaml_file = tmp_path / "data.yaml"
    yaml_file.write_text("train: images/train\nnames:\n  - cat\n")
    run = Run("proj", "configuration", endpoint=fake.endpoint)
    assert run.connect_configuration(config, name="model config", description="the model") is config
    assert run.connect_configuration(yaml_file) is yaml_file
    assert run.connect_configuration(str(yaml_file), name="as text") == str(yaml_file)
    run.connect_configuration(tmp_path / "missing.yaml")  # logged, nothing sent
    assert run.close()
    events = _of(fake, run, protocol.Configuration)
    assert [(e.name, e.description, e.value, e.text, e.file_name) for e in events] == [
        ("model config", "the model", config, None, ""),
        ("General", "", None, yaml_file.read_text(), "data.yaml"),
        ("as text", "", None, yaml_file.read_text(), "data.yaml"),
    ]


def test_update_output_model_sends_the_weights_and_keeps_the_file(
    fake: FakeCollector, tmp_path: Path
) -> None:
    weights = tmp_path / "best.pt"
    weights.write_bytes(os.urandom(70_000))
    run = Run("proj", "model", endpoint=fake.endpoint)
    result = run.update_output_model(
        str(weights), name="best", comment="mAP 0.7", tags=["final", "yolo"], iteration=7
    )
    run.update_output_model(str(weights), model_name="by model_name")
    assert result == ""
    assert run.close()
    first, second = _of(fake, run, protocol.Model)
    assert (first.name, first.comment, first.tags, first.iteration) == (
        "best",
        "mAP 0.7",
        ["final", "yolo"],
        7,
    )
    assert (second.name, second.iteration) == ("by model_name", None)
    assert bytes(fake.files[first.file.sha256].data) == weights.read_bytes()
    assert weights.exists(), "auto_delete_file is not carried: the file is never deleted"


# ------------------------------------------------------------------------------- memory bound


def test_snapshots_over_max_pending_bytes_are_dropped_counted_and_logged_once(
    fake: FakeCollector, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer thread is held on a table read from a FIFO, so the snapshots queued behind it
    stay in memory: the first image is taken (nothing else is held), the next two are over the bound."""
    monkeypatch.setenv("CLEARML_RELAY_MAX_PENDING_BYTES", "1000")
    fifo = tmp_path / "table.csv"
    os.mkfifo(fifo)
    image = np.zeros((32, 32, 3), dtype=np.uint8)  # 3072 bytes
    run = Run("proj", "pending-bytes", endpoint=fake.endpoint)

    def release_the_writer() -> None:
        def opened() -> int | None:
            try:
                return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # only once the writer reads it
            except OSError as exc:
                if exc.errno != errno.ENXIO:  # ENXIO: no reader yet
                    raise
                return None

        fd = wait_for(opened, what="the writer thread to open the FIFO")
        os.write(fd, b"a,b\n1,2\n")
        os.close(fd)

    with caplog.at_level(logging.WARNING):
        try:
            run.logger.report_table("t", "fifo", 1, csv=str(fifo))
            for i in range(3):
                run.logger.report_image("i", "s", i, image=image)
        finally:
            release_the_writer()
        assert fake.wait_for(
            lambda f: any(isinstance(e, protocol.ImageArray) for e in f.events.get(run.id, []))
        )
        run.logger.report_image("i", "s", 3, image=image)  # written by now: room again
        assert run.close() is False  # two events were lost on this side
    assert [e.iteration for e in _of(fake, run, protocol.ImageArray)] == [0, 3]
    assert [e.call for e in _of(fake, run, protocol.Report)] == [reports.Table(csv="a,b\n1,2\n")]
    assert len(_warnings(caplog, "(CLEARML_RELAY_MAX_PENDING_BYTES); dropping such calls")) == 1
    assert run.client is not None
    assert run.client.stats()["dropped_overflow"] == 2
