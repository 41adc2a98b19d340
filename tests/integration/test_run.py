from __future__ import annotations

import hashlib
import logging
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from producer_helpers import FakeCollector, free_endpoint
from waiting import wait_for

from producer import Run
from producer.context import git_info
from producer.wire import protocol

#: Stop the producer clients after each test (some drop events on purpose), before the
#: suite's leak check (tests/integration/conftest.py).
pytestmark = pytest.mark.usefixtures("clients_stopped")


def _warnings(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


def test_every_event_kind_is_delivered_in_order_with_files(fake: FakeCollector, tmp_path: Path) -> None:
    image = tmp_path / "train_batch0.jpg"
    image.write_bytes(os.urandom(5000))
    model = tmp_path / "best.pt"
    model.write_bytes(os.urandom(2 * 1024 * 1024 + 3))
    model_sha = hashlib.sha256(model.read_bytes()).hexdigest()
    run = Run(
        "proj", "exp", tags=["a"], hyperparams={"lr": 0.01, "model": {"depth": 3}}, endpoint=fake.endpoint
    )
    run.scalar("loss", "train", 0.5, 1)
    run.single_value("mAP", 0.7)
    run.hyperparams("Args", {"epochs": 3, "path": Path("/data"), "none": None})
    run.image("Mosaic", "train_batch", 0, image)
    run.plot("PR_curve", "plot image", 0, str(image))
    run.model(model)
    run.text("hello", level="warning")
    run.stats({"gpu.util": 55}, iteration=2)
    original = image.read_bytes()
    assert run.flush()
    image.write_bytes(b"overwritten later by the trainer")
    assert run.close() is True
    events = fake.events[run.id]
    assert [type(e).__name__ for e in events] == [
        "RunOpen", "Scalar", "SingleValue", "Hyperparams", "DebugImage", "Plot", "Model",
        "ConsoleText", "MachineStats", "RunClose",
    ]  # fmt: skip
    assert [e.seq for e in events] == list(range(1, 11))
    opening = events[0]
    assert isinstance(opening, protocol.RunOpen)
    assert opening.hyperparams == {"General": {"lr": 0.01}, "model": {"depth": 3}}
    assert opening.context is not None
    assert opening.context.pid == os.getpid()
    assert any(p.startswith("pyzmq==") for p in opening.context.packages)  # gathered by the writer
    params = events[3]
    assert isinstance(params, protocol.Hyperparams)
    assert params.values == {"epochs": 3, "path": "/data", "none": None}
    shot, model_event = events[4], events[6]
    assert isinstance(shot, protocol.DebugImage)
    assert isinstance(model_event, protocol.Model)
    assert fake.files[shot.file.sha256].data == original
    assert model_event.name == "best.pt"
    assert model_event.file.sha256 == model_sha
    assert bytes(fake.files[model_sha].data) == model.read_bytes()
    assert fake.violations == []
    # Delivered and closed: the sender deletes the outbox right after the last ack.
    wait_for(lambda: not (Path(os.environ["CLEARML_RELAY_SPOOL_DIR"]) / run.id).exists())


def test_calls_return_in_microseconds_with_the_collector_down() -> None:
    run = Run("proj", "fast", endpoint=free_endpoint())
    run.scalar("warm", "up", 1.0, 0)
    started = time.perf_counter()
    for i in range(5000):
        run.scalar("loss", "train", float(i), i)
    per_call = (time.perf_counter() - started) / 5000
    assert per_call < 50e-6


def test_bad_arguments_never_raise_and_are_logged_once_each(
    fake: FakeCollector, caplog: pytest.LogCaptureFixture
) -> None:
    class Tensorish:
        def __float__(self) -> float:
            return 2.5

        def __index__(self) -> int:
            return 7

    run = Run("proj", "bad-args", endpoint=fake.endpoint)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            run.scalar("loss", "train", "abc", 1)  # type: ignore[arg-type]
        run.scalar(None, "train", 1.0, 1)  # type: ignore[arg-type]
        run.scalar("loss", "train", 1.0, "x")  # type: ignore[arg-type]
        run.scalar("loss", "train", [1, 2], 1)  # type: ignore[arg-type]
        run.image("t", "s", 1, 123)  # type: ignore[arg-type]
        run.text("hi", level="loud")
        run.stats([1, 2])  # type: ignore[arg-type]
        run.hyperparams("General", "not a mapping")  # type: ignore[arg-type]
        run.scalar("loss", "train", Tensorish(), Tensorish())  # type: ignore[arg-type]
        run.scalar("loss", "train", 1.0, 2**63)
    assert len(_warnings(caplog, "value must be a real number, got the string 'abc'")) == 1
    assert _warnings(caplog, "title must be a string, got NoneType None")
    assert _warnings(caplog, "iteration must be an integer, got str 'x'")
    assert not _warnings(caplog, "got list")  # same method, same reason: logged once, counted
    assert _warnings(caplog, "path must be a str or os.PathLike, got int")
    assert _warnings(caplog, "level must be one of debug, info, warning, error, got 'loud'")
    assert _warnings(caplog, "values must be a mapping of name to number")
    assert _warnings(caplog, "values must be a mapping, got str")
    assert _warnings(caplog, "iteration must be in [-2**31, 2**62]")
    assert run.close()
    assert run.client is not None
    assert run.client.stats()["api_rejected"] == 11
    scalars = [e for e in fake.events[run.id] if isinstance(e, protocol.Scalar)]
    assert [(s.value, s.iteration) for s in scalars] == [(2.5, 7)]


def test_missing_file_drops_only_that_event(
    fake: FakeCollector, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = Run("proj", "missing", endpoint=fake.endpoint)
    missing = tmp_path / "val_batch0_pred.jpg"
    with caplog.at_level(logging.WARNING):
        run.scalar("a", "b", 1.0, 1)
        run.image("Validation", "val_batch_pred", 0, missing)
        run.scalar("a", "b", 2.0, 2)
        assert run.close()
    assert _warnings(caplog, f"cannot read {missing}")
    assert [type(e).__name__ for e in fake.events[run.id]] == ["RunOpen", "Scalar", "Scalar", "RunClose"]
    assert fake.seqs(run.id) == [1, 2, 3, 4]  # no hole where the dropped event was
    assert run.client is not None
    assert run.client.stats()["files_missing"] == 1


def test_closed_run_ignores_calls_and_close_is_idempotent(
    fake: FakeCollector, caplog: pytest.LogCaptureFixture
) -> None:
    run = Run("proj", "closed", endpoint=fake.endpoint)
    assert run.close("completed")
    with caplog.at_level(logging.WARNING):
        run.scalar("a", "b", 1.0, 1)
        run.text("late")
    assert _warnings(caplog, "Run.scalar ignored: the run is closed")
    assert run.close("failed") is True
    assert [type(e).__name__ for e in fake.events[run.id]] == ["RunOpen", "RunClose"]
    closing = fake.events[run.id][-1]
    assert isinstance(closing, protocol.RunClose)
    assert closing.status == "completed"


def test_context_manager_closes_failed_and_keeps_the_exception(fake: FakeCollector) -> None:
    run = Run("proj", "ctx", endpoint=fake.endpoint)

    def train() -> None:
        with run:
            run.scalar("a", "b", 1.0, 1)
            raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        train()
    closing = fake.events[run.id][-1]
    assert isinstance(closing, protocol.RunClose)
    assert (closing.status, closing.error) == ("failed", "ValueError: boom")


@pytest.mark.parametrize(
    ("env", "arguments", "message"),
    [
        ({}, {"endpoint": "localhost:5555"},
         "endpoint='localhost:5555': expected a ZeroMQ endpoint: tcp://host:port, ipc://path or "
         "inproc://name"),
        ({"CLEARML_RELAY_FLUSH_TIMEOUT": "abc"}, {},
         "CLEARML_RELAY_FLUSH_TIMEOUT='abc': expected a number of seconds >= 0"),
        ({"CLEARML_RELAY_ENDPOINT": "127.0.0.1:5555"}, {},
         "CLEARML_RELAY_ENDPOINT='127.0.0.1:5555': expected a ZeroMQ endpoint: tcp://host:port, "
         "ipc://path or inproc://name"),
    ],
)  # fmt: skip
def test_a_bad_setting_raises_at_construction_naming_it(
    env: dict[str, str], arguments: dict[str, str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        Run("proj", "cfg", **arguments)  # type: ignore[arg-type]
    assert str(info.value) == message
    assert not any(Path(os.environ["CLEARML_RELAY_SPOOL_DIR"]).glob("*")), "an outbox was made"


def test_invalid_run_fields_and_duplicate_ids_raise_at_construction(fake: FakeCollector) -> None:
    with pytest.raises(ValueError, match=r"^project must not be empty$"):
        Run("", "name", endpoint=fake.endpoint)
    with pytest.raises(
        ValueError, match=r"^run_id must be 1-64 of \[A-Za-z0-9_.-\], not starting with '.', got "
    ):
        Run("proj", "name", run_id="../escape", endpoint=fake.endpoint)
    first = Run("proj", "name", run_id="same-id", endpoint=fake.endpoint)
    with pytest.raises(ValueError, match=r"^run_id 'same-id' is already in use in this process$"):
        Run("proj", "name", run_id="same-id", endpoint=fake.endpoint)
    first.scalar("a", "b", 1.0, 1)  # the first run is untouched by the refused second
    assert first.close()
    assert [type(e).__name__ for e in fake.events["same-id"]] == ["RunOpen", "Scalar", "RunClose"]


def test_forked_child_calls_are_silent_no_ops(fake: FakeCollector) -> None:
    run = Run("proj", "fork", endpoint=fake.endpoint)
    pid = os.fork()
    if pid == 0:  # the child: nothing may raise, nothing may be sent
        code = 1
        try:
            run.scalar("child", "x", 1.0, 1)
            closed = run.close()
            flushed = run.flush(0.1)
            code = 0 if (closed, flushed) == (False, False) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    run.scalar("parent", "x", 1.0, 1)
    assert run.close()
    titles = [e.title for e in fake.events[run.id] if isinstance(e, protocol.Scalar)]
    assert titles == ["parent"]


def test_git_info_strips_credentials(tmp_path: Path) -> None:
    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q", "-b", "main")
    git("config", "user.email", "t@example.com")
    git("config", "user.name", "t")
    git("remote", "add", "origin", "https://user:secret-token@git.example.com/team/repo.git")
    (tmp_path / "train.py").write_text("print(1)\n")
    git("add", "train.py")
    git("commit", "-q", "-m", "init")
    (tmp_path / "train.py").write_text("print(2)\n")
    info = git_info(tmp_path)
    assert info is not None
    assert info.repository == "https://git.example.com/team/repo.git"
    assert info.branch == "main"
    assert len(info.commit) == 40
    assert "+print(2)" in info.diff
    assert git_info(tmp_path / "..") is None or git_info(Path("/")) is None


def test_scalars_hands_several_series_over_at_once_and_rejects_a_bad_call_whole(
    fake: FakeCollector, caplog: pytest.LogCaptureFixture
) -> None:
    run = Run("proj", "exp", endpoint=fake.endpoint)
    run.scalars("train", {"box_loss": 1.5, "cls_loss": 0.5, "dfl_loss": 0.25}, 3)
    run.scalars("lr", {"lr/pg0": 0.01, "lr/pg1": "fast"}, 3)  # type: ignore[dict-item]
    run.scalars("lr", {"lr/pg0": 0.02}, 4)
    assert run.close() is True
    scalars = [e for e in fake.events[run.id] if isinstance(e, protocol.Scalar)]
    assert [(e.title, e.series, e.value, e.iteration) for e in scalars] == [
        ("train", "box_loss", 1.5, 3),
        ("train", "cls_loss", 0.5, 3),
        ("train", "dfl_loss", 0.25, 3),
        ("lr", "lr/pg0", 0.02, 4),
    ]
    assert [e.seq for e in fake.events[run.id]] == list(range(1, 7)), "no hole where the bad call was"
    assert _warnings(caplog, "Run.scalars ignored")
