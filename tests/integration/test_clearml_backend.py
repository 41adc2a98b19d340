"""The ClearML backend against the real ClearML SDK in offline mode, read back from disk."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest
from collector_helpers import DEADLINE
from e2e import env

from collector.backends.clearml import compat
from collector.backends.clearml import state as clearml_state
from collector.backends.clearml.backend import ClearMLBackend
from collector.backends.clearml.compat import ORIGINAL_PUBLISHED
from collector.backends.clearml.mapping import MONITOR_GPU, MONITOR_MACHINE
from collector.config import ENV_NONFINITE, CollectorConfig
from collector.counters import Counters
from collector.pipeline.files import FileStore
from collector.service.server import make_backend
from producer.wire import execution
from producer.wire import protocol as p

# A tiny valid PNG (1x1, RGB), so PIL can read its size.
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108020000009077"
    "53de0000000c4944415408d763f8cfc0000003010100c9fe92ef0000000049454e44ae426082"
)


def put(files: FileStore, run: str, data: bytes, name: str) -> p.FileRef:
    sha = hashlib.sha256(data).hexdigest()
    files.offer(run, sha, len(data))
    status = files.chunk(run, sha, 0, data)
    assert status.complete
    return p.FileRef(sha256=sha, size=len(data), name=name)


def loaded(directory: Path, run: str) -> clearml_state.RunState:
    state = clearml_state.load(directory, run)
    assert state is not None
    return state


def session_of(directory: Path, run: str) -> Path:
    return Path(loaded(directory, run).session)


def metrics(session: Path) -> list[dict[str, Any]]:
    return [
        event for line in (session / "metrics.jsonl").read_text().splitlines() for event in json.loads(line)
    ]


def log_lines(session: Path) -> list[dict[str, Any]]:
    path = session / "log.jsonl"
    if not path.exists():
        return []
    return [event for line in path.read_text().splitlines() for event in json.loads(line)]


def console(session: Path) -> list[tuple[str, str]]:
    """(level, line) of every console line (ClearML joins lines reported together in one event)."""
    return [(e["level"], line) for e in log_lines(session) for line in e["msg"].splitlines()]


def task_json(session: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((session / "task.json").read_text())
    return data


def scalars(session: Path, metric: str = "loss") -> list[tuple[int, float]]:
    return [(e["iter"], e["value"]) for e in metrics(session) if e["metric"] == metric]


def opening(run: str, **fields: Any) -> p.RunOpen:
    return p.RunOpen(run=run, seq=1, project="proj", name=f"train-{run}", **fields)


def scalar(run: str, seq: int) -> p.Scalar:
    return p.Scalar(run=run, seq=seq, title="loss", series="train", value=float(seq), iteration=seq)


def offline_sessions() -> list[Path]:
    return sorted(p for p in (Path(os.environ["CLEARML_CACHE_DIR"]) / "offline").iterdir() if p.is_dir())


@pytest.fixture
def files(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "files", fsync=False)


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "clearml"


@pytest.mark.slow
def test_every_event_kind_lands_where_clearml_puts_it(state_dir: Path, files: FileStore) -> None:
    backend = ClearMLBackend(state_dir, offline=True, call_timeout=10)
    run = "r1"
    context = execution.ExecutionContext(
        argv=["train.py", "--epochs", "3"],
        script="train.py",
        cwd="/src",
        host="node1",
        pid=7,
        user="ann",
        python="3.11.9",
        packages=["torch==2.3.0", "ultralytics==8.4.0"],
        git=execution.GitInfo(
            repository="https://example.com/y.git", commit="abc123", branch="main", diff="+x"
        ),
    )
    events: list[p.Event] = [
        opening(
            run,
            tags=["Ultralytics"],
            hyperparams={"General": {"lr0": 0.01, "epochs": 3, "model": "yolov8n.yaml", "amp": True}},
            context=context,
        ),
        p.Scalar(run=run, seq=2, title="train", series="box_loss", value=1.5, iteration=0),
        p.SingleValue(run=run, seq=3, name="GFLOPs", value=8.7),
        p.DebugImage(
            run=run,
            seq=4,
            title="Mosaic",
            series="train_batch",
            iteration=1,
            file=put(files, run, PNG, "a.jpg"),
        ),
        p.Plot(
            run=run,
            seq=5,
            title="BoxPR_curve",
            series="plot image",
            iteration=0,
            file=put(files, run, PNG + b"\0", "BoxPR_curve.png"),
        ),
        p.ConsoleText(run=run, seq=6, text="epoch 1 done", level="warning"),
        p.MachineStats(run=run, seq=7, values={"cpu_usage": 50.0, "gpu_0_utilization": 90.0}, iteration=3),
        p.Hyperparams(run=run, seq=8, section="Extra", values={"batch": 8}),
        p.Model(run=run, seq=9, name="best", file=put(files, run, b"weights" * 100, "../best.pt")),
        p.Gap(run=run, seq=10, last=11, reason="refused as invalid"),
        p.RunClose(run=run, seq=12, status="failed", error="CUDA out of memory"),
    ]
    for event in events:
        backend.apply(run, event, files)
    assert backend.applied(run) == 12
    state = clearml_state.load(state_dir, run)
    assert state is not None
    assert state.state == "failed"
    session = Path(state.session)
    assert loaded(state_dir, run).session == str(session)
    by_type: dict[str, list[dict[str, Any]]] = {}
    for event in metrics(session):
        by_type.setdefault(event["type"], []).append(event)

    values = {(e["metric"], e["variant"]): (e["iter"], e["value"]) for e in by_type["training_stats_scalar"]}
    assert values[("train", "box_loss")] == (0, 1.5)
    assert values[("Summary", "GFLOPs")] == (-(2**31), 8.7)
    assert values[(MONITOR_MACHINE, "cpu_usage")] == (3, 50.0)
    assert values[(MONITOR_GPU, "gpu_0_utilization")] == (3, 90.0)
    (image,) = by_type["training_debug_image"]
    assert (image["metric"], image["variant"], image["iter"]) == ("Mosaic", "train_batch", 1)
    assert Path(image["url"]).read_bytes() == PNG
    assert Path(image["url"]).is_relative_to(session / "data")
    (plot,) = by_type["plot"]
    assert (plot["metric"], plot["variant"], plot["iter"]) == ("BoxPR_curve", "plot image", 0)
    plot_image = json.loads(plot["plot_str"])["layout"]["images"][0]["source"]
    assert Path(plot_image).read_bytes() == PNG + b"\0"  # the producer's PNG, not re-rendered

    logs = [(e["level"], e["msg"]) for e in log_lines(session)]
    assert ("warning", "epoch 1 done") in logs
    assert ("warning", "clearml-relay: events 10..11 were lost, run r1: refused as invalid") in logs
    assert ("error", "CUDA out of memory") in logs

    task = task_json(session)
    assert (task["project_name"], task["name"], task["type"], task["tags"]) == (
        "proj",
        "train-r1",
        "training",
        ["Ultralytics"],
    )
    general = task["hyperparams"]["General"]
    assert {k: v["value"] for k, v in general.items()} == {
        "lr0": "0.01",
        "epochs": "3",
        "model": "yolov8n.yaml",
        "amp": "True",
    }
    assert task["hyperparams"]["Extra"]["batch"]["value"] == "8"
    script = task["script"]
    assert (script["repository"], script["branch"], script["version_num"], script["diff"]) == (
        "https://example.com/y.git",
        "main",
        "abc123",
        "+x",
    )
    assert (script["entry_point"], script["working_dir"], script["binary"]) == (
        "train.py",
        "/src",
        "python3.11",
    )
    assert script["requirements"]["pip"] == "torch==2.3.0\nultralytics==8.4.0"
    assert "argv: train.py --epochs 3" in task["comment"]
    assert task["status_message"] == "failed: CUDA out of memory"
    (model,) = task["offline_output_models"]
    assert model["init"]["name"] == "best"
    assert model["init"]["framework"] == "PyTorch"
    assert Path(model["weights"]["weights_filename"]) == session / "models" / "best.pt"
    assert (session / "models" / "best.pt").read_bytes() == b"weights" * 100

    assert state.closed > 0
    assert not Path(f"{session}.zip").exists(), "the folder is the session's one copy"
    backend.close()


def test_resume_after_a_crash_keeps_one_session_and_writes_each_event_once(
    state_dir: Path, files: FileStore
) -> None:
    run = "r"
    model = p.Model(run=run, seq=7, name="last", file=put(files, run, b"w" * 64, "last.pt"))
    events: list[p.Event] = [opening(run), *(scalar(run, seq) for seq in range(2, 7)), model]
    events += [p.ConsoleText(run=run, seq=8, text="after the checkpoint"), scalar(run, 9), scalar(run, 10)]
    first = ClearMLBackend(state_dir, offline=True, call_timeout=10)
    for event in events[:4]:
        first.apply(run, event, files)
    first.checkpoint(run)
    for event in events[4:9]:  # the model (seq 7) checkpoints by itself
        first.apply(run, event, files)
    assert first.applied(run) == 7
    # Applied but not checkpointed: written to the session, then the collector dies (no close).
    first.apply(run, events[9], files)
    first._live[run].drain()
    session = session_of(state_dir, run)
    with (session / "metrics.jsonl").open("a") as torn:
        torn.write('[{"type": "training_stats_sca')  # a kill -9 in the middle of a line
    text = (session / "task.json").read_text()
    (session / "task.json").write_text(text[: len(text) // 2])  # ClearML rewrites it in place

    second = ClearMLBackend(state_dir, offline=True, call_timeout=10)
    start = second.applied(run)
    assert start == 7
    for event in events[start:]:
        second.apply(run, event, files)
    second.apply(run, p.RunClose(run=run, seq=11), files)

    assert offline_sessions() == [session]
    assert scalars(session) == [(seq, float(seq)) for seq in (2, 3, 4, 5, 6, 9, 10)]
    assert [e["msg"] for e in log_lines(session)] == ["after the checkpoint"]
    task = task_json(session)
    assert [m["init"]["name"] for m in task["offline_output_models"]] == ["last"]
    assert (task["project_name"], task["name"]) == ("proj", "train-r")
    second.close()


def test_a_closed_or_aborted_run_takes_a_late_event(state_dir: Path, files: FileStore) -> None:
    backend = ClearMLBackend(state_dir, offline=True, call_timeout=10)
    run = "late"
    backend.apply(run, opening(run), files)
    backend.apply(run, scalar(run, 2), files)
    backend.abort(run, "no heartbeat for 600 s")
    state = clearml_state.load(state_dir, run)
    assert state is not None
    assert (state.state, state.applied) == ("aborted", 2)
    assert state.closed > 0
    backend.apply(run, scalar(run, 3), files)  # the producer came back
    backend.apply(run, p.RunClose(run=run, seq=4), files)
    session = Path(state.session)
    assert scalars(session) == [(2, 2.0), (3, 3.0)]
    assert "run aborted: no heartbeat" in log_lines(session)[0]["msg"]
    assert loaded(state_dir, run).state == "completed"
    assert not Path(f"{session}.zip").exists()
    backend.close()


def test_a_late_event_after_retention_deleted_the_session_goes_to_a_new_task(
    state_dir: Path, files: FileStore
) -> None:
    import shutil

    backend = ClearMLBackend(state_dir, offline=True, call_timeout=10)
    backend.apply("late", opening("late"), files)
    backend.apply("late", scalar("late", 2), files)
    backend.apply("late", p.RunClose(run="late", seq=3), files)
    first = clearml_state.load(state_dir, "late")
    assert first is not None
    shutil.rmtree(first.session)  # what retention deletes
    backend.apply("late", scalar("late", 4), files)
    backend.checkpoint("late")
    state = clearml_state.load(state_dir, "late")
    assert state is not None
    assert state.task_id != first.task_id
    assert (state.applied, state.name, state.project) == (4, "train-late", "proj")
    assert scalars(Path(state.session)) == [(4, 4.0)]
    backend.close()


def test_resume_run_continues_the_earlier_runs_task(state_dir: Path, files: FileStore) -> None:
    backend = ClearMLBackend(state_dir, offline=True, call_timeout=10)
    backend.apply("a", opening("a"), files)
    backend.apply("a", scalar("a", 2), files)
    backend.apply("a", p.RunClose(run="a", seq=3, status="aborted"), files)
    backend.apply("b", opening("b", resume_run="a"), files)
    backend.apply("b", scalar("b", 2), files)
    backend.apply("b", p.RunClose(run="b", seq=3), files)
    assert session_of(state_dir, "a") == session_of(state_dir, "b")
    assert scalars(session_of(state_dir, "b")) == [(2, 2.0), (2, 2.0)]
    backend.close()


def test_a_checkpoint_rewrites_task_json_only_if_the_task_changed(state_dir: Path, files: FileStore) -> None:
    """Rewriting task.json was three quarters of a checkpoint's CPU; reports leave it alone."""
    backend = ClearMLBackend(state_dir, offline=True, call_timeout=10)
    backend.apply("t", opening("t"), files)  # checkpointed at once
    task_file = session_of(state_dir, "t") / "task.json"
    written = (task_file.stat().st_mtime_ns, task_file.read_text())
    for seq in range(2, 6):
        backend.apply("t", scalar("t", seq), files)
        backend.checkpoint("t")
    assert (task_file.stat().st_mtime_ns, task_file.read_text()) == written
    state = clearml_state.load(state_dir, "t")
    assert state is not None
    assert (state.applied, state.task_json) == (5, written[1])
    backend.apply("t", p.Hyperparams(run="t", seq=6, section="Args", values={"lr0": 0.25}), files)
    backend.apply("t", scalar("t", 7), files)
    backend.checkpoint("t")
    state = clearml_state.load(state_dir, "t")
    assert state is not None
    assert state.task_json == task_file.read_text() != written[1]
    assert json.loads(state.task_json)["hyperparams"]["Args"]["lr0"]["value"] == "0.25"
    weights = put(files, "t", b"w" * 64, "best.pt")
    backend.apply("t", scalar("t", 8), files)
    backend.apply("t", p.Model(run="t", seq=9, name="best", file=weights), files)  # checkpointed at once
    state = clearml_state.load(state_dir, "t")
    assert state is not None
    assert state.applied == 9
    assert len(json.loads(state.task_json)["offline_output_models"]) == 1
    assert scalars(session_of(state_dir, "t")) == [(seq, float(seq)) for seq in (2, 3, 4, 5, 7, 8)]
    backend.close()


def test_offline_model_work_around_is_still_needed(state_dir: Path, files: FileStore) -> None:
    from clearml import OutputModel

    backend = ClearMLBackend(state_dir, offline=True, call_timeout=10)
    backend.apply("m", opening("m"), files)
    model = OutputModel(task=backend._live["m"].task, name="probe")
    # If this stops raising, clearml fixed issue 1243 (DummyModel has no `locked`): remove the
    # OutputModel.published replacement in collector/backends/clearml/compat.py and this test.
    with pytest.raises(AttributeError, match="locked"):
        ORIGINAL_PUBLISHED.fget(model)
    assert model.published is False
    backend.close()


@pytest.mark.slow
def test_fifty_concurrent_runs_each_get_their_own_complete_session(state_dir: Path, files: FileStore) -> None:
    backend = ClearMLBackend(state_dir, offline=True, call_timeout=30)
    runs = [f"run{i:02d}" for i in range(50)]
    errors: list[BaseException] = []

    def drive(run: str) -> None:
        try:
            image = put(files, run, PNG, "train_batch0.jpg")
            backend.apply(run, opening(run), files)
            for seq in range(2, 12):
                backend.apply(run, scalar(run, seq), files)
            backend.apply(
                run, p.DebugImage(run=run, seq=12, title="Mosaic", series="b", iteration=0, file=image), files
            )
            backend.apply(run, p.ConsoleText(run=run, seq=13, text=f"I am {run}"), files)
            backend.checkpoint(run)
            backend.apply(run, p.RunClose(run=run, seq=14), files)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=drive, args=(run,)) for run in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert len(offline_sessions()) == 50
    for run in runs:
        state = clearml_state.load(state_dir, run)
        assert state is not None
        assert (state.state, state.applied) == ("completed", 14)
        session = Path(state.session)
        assert scalars(session) == [(seq, float(seq)) for seq in range(2, 12)]
        assert [e["msg"] for e in log_lines(session)] == [f"I am {run}"]
        assert task_json(session)["name"] == f"train-{run}"
        assert not Path(f"{session}.zip").exists()
    backend.close()


_BURSTS = """
import sys, threading
from pathlib import Path
from collector.backends.clearml.backend import ClearMLBackend
from collector.pipeline.files import FileStore
from producer.wire import execution
from producer.wire import protocol as p

rounds, width, root = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
backend = ClearMLBackend(root / "state", offline=True, call_timeout=30, fsync=False)
files = FileStore(root / "files")
for r in range(rounds):
    barrier = threading.Barrier(width)

    def drive(run):
        barrier.wait()  # every run's task is made at the same instant
        backend.apply(run, p.RunOpen(run=run, seq=1, project="proj", name=run), files)
        backend.apply(run, p.Scalar(run=run, seq=2, title="a", series="b", value=1.0, iteration=1), files)
        backend.apply(run, p.RunClose(run=run, seq=3), files)

    threads = [threading.Thread(target=drive, args=(f"r{r}-{i}",)) for i in range(width)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
print(len(list((root / "state").glob("*.json"))))
"""


@pytest.mark.slow
def test_tasks_made_at_the_same_instant_do_not_crash_the_process(tmp_path: Path) -> None:
    """A regression test: bursts of runs opening at once used to crash the collector.

    Without ``compat.start_shared_pools`` this process died (segmentation fault, abort or a corrupted
    type) in three runs of four with 60 bursts (100 here); it runs in a child so that a crash
    fails only this test.
    """
    script = tmp_path / "bursts.py"
    script.write_text(_BURSTS)
    done = subprocess.run(
        [sys.executable, "-X", "faulthandler", str(script), "100", "10", str(tmp_path)],
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.split()[-1] == "1000"  # every run's state: each task was made and closed


def test_the_sdk_pools_exist_before_any_task_and_stay(state_dir: Path, files: FileStore) -> None:
    from clearml.backend_interface.metrics.interface import Metrics
    from clearml.storage.helper import _StorageHelper

    backend = ClearMLBackend(state_dir, offline=True, call_timeout=30)

    def pools() -> tuple[object, ...]:
        return Metrics._upload_pool, Metrics._file_upload_pool, _StorageHelper._upload_pool

    before = pools()
    assert None not in before
    barrier = threading.Barrier(8)

    def drive(run: str) -> None:
        barrier.wait()
        backend.apply(run, opening(run), files)
        backend.apply(run, p.RunClose(run=run, seq=2), files)

    threads = [threading.Thread(target=drive, args=(f"pool{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert all(clearml_state.load(state_dir, f"pool{i}") is not None for i in range(8))
    assert pools() == before
    backend.close()


@pytest.mark.slow
def test_a_hung_clearml_call_times_out_and_does_not_delay_other_runs(
    state_dir: Path, files: FileStore
) -> None:
    backend = ClearMLBackend(state_dir, offline=True, call_timeout=0.5)
    backend.apply("hung", opening("hung"), files)
    backend.apply("hung", scalar("hung", 2), files)
    release = threading.Event()
    service = backend._live["hung"].writers.reporter._report_service
    real_send = service.send_all_events

    def hang(wait: bool = True) -> None:  # a test double for a server call that never returns
        release.wait()
        real_send(wait=wait)

    service.send_all_events = hang
    outcome: list[BaseException | None] = []

    def checkpoint_hung() -> None:
        started = time.monotonic()
        try:
            backend.checkpoint("hung")
            outcome.append(None)
        except TimeoutError as exc:
            outcome.append(exc)
        assert time.monotonic() - started < 5

    stuck = threading.Thread(target=checkpoint_hung)
    stuck.start()
    started = time.monotonic()
    for seq, event in enumerate([opening("free"), scalar("free", 2), p.RunClose(run="free", seq=3)], 1):
        assert event.seq == seq
        backend.apply("free", event, files)
    assert time.monotonic() - started < 0.5 * 2  # done while the other run's call hangs
    stuck.join(5)
    assert isinstance(outcome[0], TimeoutError)
    assert backend.applied("hung") == 1
    with pytest.raises(TimeoutError):
        backend.checkpoint("hung")  # the retry re-joins the same hung call
    release.set()
    backend.checkpoint("hung")
    assert backend.applied("hung") == 2
    assert scalars(session_of(state_dir, "hung")) == [(2, 2.0)]
    assert loaded(state_dir, "free").state == "completed"
    backend.close()


def test_a_close_that_timed_out_completes_when_the_event_is_retried(
    state_dir: Path, files: FileStore
) -> None:
    backend = ClearMLBackend(state_dir, offline=True, call_timeout=0.3)
    run = "slow"
    backend.apply(run, opening(run), files)
    task = backend._live[run].task
    release = threading.Event()
    real_close = task.close

    def hanging_close() -> None:  # a test double for a close that waits on a dead server
        release.wait()
        real_close()

    task.close = hanging_close
    close = p.RunClose(run=run, seq=2, status="failed", error="killed")
    with pytest.raises(TimeoutError):
        backend.apply(run, close, files)
    release.set()
    backend.apply(run, close, files)  # the applier's retry of the same event
    state = clearml_state.load(state_dir, run)
    assert state is not None
    assert (state.state, state.applied) == ("failed", 2)
    assert state.closed > 0
    assert [e["msg"] for e in log_lines(Path(state.session))] == ["killed"]
    backend.close()


def test_a_crash_inside_the_close_leaves_the_close_to_be_applied_again(
    state_dir: Path, files: FileStore
) -> None:
    # Found by the kill -9 end-to-end test: the close's position was made durable before the
    # task was closed, so a kill in between left a run "applied" but never closed nor zipped.
    backend = ClearMLBackend(state_dir, offline=True, call_timeout=0.3)
    run = "closing"
    backend.apply(run, opening(run), files)
    backend.apply(run, scalar(run, 2), files)
    backend.checkpoint(run)
    dying = threading.Event()
    backend._live[run].task.close = dying.wait  # the process dies inside the close
    with pytest.raises(TimeoutError):
        backend.apply(run, p.RunClose(run=run, seq=3), files)
    try:
        restarted = ClearMLBackend(state_dir, offline=True)  # what a new collector process sees
        assert restarted.applied(run) == 2, "the close must not count as applied"
        restarted.apply(run, p.RunClose(run=run, seq=3), files)
        state = clearml_state.load(state_dir, run)
        assert state is not None
        assert (state.state, state.applied) == ("completed", 3)
        assert state.closed > 0
        assert scalars(Path(state.session)) == [(2, 2.0)]
        restarted.close()
    finally:
        dying.set()


def _bytes_on_disk(*roots: Path) -> int:
    """Bytes of the files under ``roots``, a file with several hard links counted once."""
    sizes = {}
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file():
                info = path.stat()
                sizes[(info.st_dev, info.st_ino)] = info.st_size
    return sum(sizes.values())


def test_a_closed_run_keeps_one_copy_of_its_session_and_model(
    tmp_path: Path, state_dir: Path, files: FileStore
) -> None:
    """ClearML zips a session at close and the model was staged for it: only the folder stays."""
    weights = os.urandom(5 * 2**20)  # incompressible, as model weights are: a zip is as big
    run = "big"
    backend = ClearMLBackend(state_dir, offline=True, call_timeout=30)
    model = p.Model(run=run, seq=3, name="best", file=put(files, run, weights, "best.pt"))
    for event in [opening(run), scalar(run, 2), model, p.RunClose(run=run, seq=4)]:
        backend.apply(run, event, files)
    backend.close()
    files.remove_run(run)  # what the collector does once the run is retired
    (session,) = offline_sessions()
    (registered,) = task_json(session)["offline_output_models"]
    assert Path(registered["weights"]["weights_filename"]).read_bytes() == weights
    assert list(session.parent.iterdir()) == [session], "no zip beside the session folder"
    assert not (state_dir / f"{run}.models").exists(), "no staged copy of the model"
    assert _bytes_on_disk(tmp_path, session.parent) < 1.2 * len(weights)


def test_a_crash_after_clearml_zipped_the_session_closes_it_again_at_restart(
    state_dir: Path, files: FileStore
) -> None:
    backend = ClearMLBackend(state_dir, offline=True, call_timeout=0.3)
    run = "zipped"
    backend.apply(run, opening(run), files)
    backend.apply(run, scalar(run, 2), files)
    backend.checkpoint(run)
    task = backend._live[run].task
    real_close, zipped, dying = task.close, threading.Event(), threading.Event()

    def close_then_die() -> None:  # a zip was written; the process dies before the backend goes on
        real_close()
        # The collector stops ClearML's own zip (compat._skip_session_zip); one written by a
        # clearml that zips some other way, or by an earlier collector, is handled the same.
        zip_folder(session_of(state_dir, run))
        zipped.set()
        dying.wait()

    task.close = close_then_die
    with pytest.raises(TimeoutError):
        backend.apply(run, p.RunClose(run=run, seq=3), files)
    session = session_of(state_dir, run)
    try:
        assert zipped.wait(DEADLINE)
        assert Path(f"{session}.zip").is_file()
        restarted = ClearMLBackend(state_dir, offline=True)  # what a new collector process sees
        assert restarted.applied(run) == 2
        restarted.apply(run, p.RunClose(run=run, seq=3), files)  # the appliers re-apply the close
        state = clearml_state.load(state_dir, run)
        assert state is not None
        assert (state.state, state.applied) == ("completed", 3)
        assert list(session.parent.iterdir()) == [session], "the zip is gone, the folder stays"
        assert scalars(session) == [(2, 2.0)]
        restarted.close()
    finally:
        dying.set()


def zip_folder(folder: Path) -> None:
    """What ClearML's close writes unless stopped: the session folder zipped beside it."""
    with zipfile.ZipFile(f"{folder}.zip", "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, arcname=path.relative_to(folder).as_posix())


def test_clearml_writes_no_zip_of_the_session_at_close(state_dir: Path, files: FileStore) -> None:
    """ClearML zips a whole offline session at close; the collector keeps the folder instead.

    The zip would be a second copy of everything (models included) written only to be deleted.
    The closed task's task.json is written as before, and the folder imports as a session.
    """
    import inspect

    import clearml.task

    # The line compat._skip_session_zip relies on: clearml.task's ZipFile, called at close.
    shutdown = inspect.getsource(clearml.task.Task._Task__shutdown)  # type: ignore[attr-defined]
    assert 'with ZipFile(zip_file, "w", allowZip64=True, compression=ZIP_DEFLATED) as zf:' in shutdown
    backend = ClearMLBackend(state_dir, offline=True, call_timeout=30)
    assert clearml.task.ZipFile is not zipfile.ZipFile, "installed by the backend"
    run = "nozip"
    task_zipped: list[str] = []
    for event in [opening(run), scalar(run, 2)]:
        backend.apply(run, event, files)
    task = backend._live[run].task
    real_close = task.close

    def close() -> None:  # the backend deletes a zip after close: look before it can
        real_close()
        task_zipped.extend(str(path) for path in Path(task.get_offline_mode_folder()).parent.glob("*.zip"))

    task.close = close
    backend.apply(run, p.RunClose(run=run, seq=3), files)
    backend.close()
    assert task_zipped == [], "ClearML wrote a zip at close"
    (session,) = offline_sessions()
    assert task_json(session)["status_message"] == "completed", "task.json written at close as before"
    assert scalars(session) == [(2, 2.0)]
    assert zipfile.ZipFile.__module__ == "zipfile", "zipfile itself untouched"


def test_a_clearml_that_zips_another_way_is_left_alone_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import clearml.task

    def other_zip(*args: Any, **kwargs: Any) -> Any:  # what a changed clearml might import
        return zipfile.ZipFile(*args, **kwargs)

    monkeypatch.setattr(clearml.task, "ZipFile", other_zip)
    with caplog.at_level("WARNING", logger=compat.__name__):
        compat._skip_session_zip()
    assert clearml.task.ZipFile is other_zip, "not replaced"
    assert "cannot skip that zip, it deletes it after each close instead" in caplog.text


@pytest.mark.parametrize("policy", ["skip", "clearml"])
def test_nan_and_infinity_are_skipped_and_noted_or_handed_to_clearml(
    tmp_path: Path, files: FileStore, policy: str
) -> None:
    """ClearML reports a NaN or an infinity as 0: a diverged loss would look perfect."""
    config = CollectorConfig.from_env({ENV_NONFINITE: policy}, data_dir=tmp_path, offline=True)
    counters = Counters()
    backend = make_backend(config, counters)
    assert isinstance(backend, ClearMLBackend)
    run = "nan"

    def loss(seq: int, series: str, value: float, iteration: int) -> p.Scalar:
        return p.Scalar(run=run, seq=seq, title="loss", series=series, value=value, iteration=iteration)

    events: list[p.Event] = [
        opening(run),
        loss(2, "train", math.nan, 2),
        loss(3, "train", math.inf, 3),
        loss(4, "val", -math.inf, 3),
        loss(5, "train", 0.5, 4),
        p.SingleValue(run=run, seq=6, name="fitness", value=math.nan),
    ]
    for event in events:
        backend.apply(run, event, files)
    backend.close()
    session = session_of(tmp_path / "clearml", run)
    summary = [(e["variant"], e["value"]) for e in metrics(session) if e["metric"] == "Summary"]
    notes = console(session)
    if policy == "clearml":
        assert scalars(session) == [(2, 0.0), (3, 0.0), (3, 0.0), (4, 0.5)]  # ClearML's way
        assert summary == [("fitness", 0.0)]
        assert notes == []
        assert counters.get("nonfinite_skipped") == 0
        return
    assert scalars(session) == [(4, 0.5)]
    assert summary == []
    assert counters.get("nonfinite_skipped") == 4
    tail = ": not reported, nor any later NaN or infinity of this series (ClearML would show 0; "
    tail += f"{ENV_NONFINITE}=clearml hands them to it)"
    expected = [
        ("warning", f"clearml-relay: loss / train is nan at iteration 2{tail}"),
        ("warning", f"clearml-relay: loss / val is -inf at iteration 3{tail}"),
        ("warning", f"clearml-relay: Summary / fitness is nan{tail}"),
    ]
    assert notes == expected, "one line per series"
    restarted = make_backend(config, counters)  # the series noted stay noted across a restart
    restarted.apply(run, loss(7, "train", math.nan, 5), files)
    restarted.apply(run, p.RunClose(run=run, seq=8), files)
    assert console(session) == expected
    assert scalars(session) == [(4, 0.5)]
    assert counters.get("nonfinite_skipped") == 5
    restarted.close()


def test_the_sdk_internals_that_reveal_dropped_events_are_still_there() -> None:
    """Pins what compat.py's "sends the SDK drops" watch relies on.

    If this fails, clearml changed how it writes events: check that a batch the server refuses
    is still dropped silently and re-hook the watch (``compat._watch_metrics``, ``_WatchedSession``).
    """
    import inspect

    from clearml.backend_interface.metrics.interface import Metrics
    from clearml.backend_interface.metrics.reporter import BackgroundReportService
    from clearml.backend_interface.task.log import BackgroundLogService

    assert "self._metrics.write_events(" in inspect.getsource(BackgroundReportService._write)
    write_events = inspect.getsource(Metrics.write_events)
    assert write_events.count("self._do_write_events(") == 2  # sync, and async through safe_call
    do_write = inspect.getsource(Metrics._do_write_events)
    assert "upload_exception is None" in do_write  # events whose file did not upload are left out
    assert "return self.send(req, raise_on_errors=False)" in do_write  # a refused batch returns
    assert "self.session.send(a_request)" in inspect.getsource(BackgroundLogService._send_events)


def test_an_event_the_sdk_drops_rewinds_the_run_to_its_last_checkpoint(
    state_dir: Path, files: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Offline, a failed file upload is the loss to provoke (online: a refused batch, see
    tests/integration/test_clearml_online.py); either way ClearML leaves the event out and raises nothing."""
    from clearml.storage.helper import StorageHelper

    from collector.backends.base import Rewind

    backend = ClearMLBackend(state_dir, offline=True, call_timeout=10)
    run = "lost"
    image = p.DebugImage(
        run=run, seq=4, title="img", series="s", iteration=4, file=put(files, run, PNG, "i.png")
    )
    events: list[p.Event] = [opening(run), scalar(run, 2), scalar(run, 3), image, scalar(run, 5)]
    for event in events[:2]:
        backend.apply(run, event, files)
    backend.checkpoint(run)
    upload = StorageHelper.upload

    def failing(*args: Any, **kwargs: Any) -> Any:
        raise OSError("the files server is unhappy")

    monkeypatch.setattr(StorageHelper, "upload", failing)
    for event in events[2:]:
        backend.apply(run, event, files)
    with pytest.raises(Rewind, match="lost their file upload"):
        backend.checkpoint(run)
    assert backend.applied(run) == 2, "nothing after the lost event may become durable"
    monkeypatch.setattr(StorageHelper, "upload", upload)
    for event in events[backend.applied(run) :]:  # what the appliers do after a Rewind
        backend.apply(run, event, files)
    backend.checkpoint(run)
    assert backend.applied(run) == 5
    session = session_of(state_dir, run)
    assert scalars(session) == [(2, 2.0), (3, 3.0), (5, 5.0)], "each written once"
    assert [e["iter"] for e in metrics(session) if e["type"] == "training_debug_image"] == [4]
    backend.close()


def test_the_installed_clearml_is_a_supported_one() -> None:
    """If this fails, clearml was upgraded: see docs/clearml-compat.md before widening compat's range."""
    assert compat.supported(compat.check_version())
    compat.install()
    compat.install()  # idempotent
    assert type(compat.OutputModel.__dict__["published"]) is property
    assert compat.OutputModel.__dict__["published"] is not ORIGINAL_PUBLISHED


@pytest.mark.parametrize("version", ["2.2.0", "2.0.9", "1.16.4", "3.0.0rc1"])
@pytest.mark.slow
def test_an_unknown_clearml_version_is_refused_with_what_to_do(
    version: str, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from collector.config import ConfigError

    monkeypatch.setattr(compat.importlib.metadata, "version", lambda _name: version)
    monkeypatch.setattr(compat, "_installed", False)
    with pytest.raises(compat.UnsupportedClearMLError) as raised:
        ClearMLBackend(state_dir, offline=True)
    message = str(raised.value)
    assert f"clearml {version} is installed" in message
    assert compat.SUPPORTED_RANGE in message
    assert f"pip install 'clearml{compat.SUPPORTED_RANGE}'" in message
    assert isinstance(raised.value, ConfigError)


def test_release_numbers_of_clearml_versions() -> None:
    assert compat.release("2.1.12") == (2, 1, 12)
    assert compat.release("2.1.13rc1") == (2, 1, 13)
    assert compat.release("2.1") == (2, 1)
    assert compat.supported("2.1.0")
    assert compat.supported("2.1.13rc1")
    assert not compat.supported("2.2.0")
    assert not compat.supported("")
