"""The command line as a real subprocess, and the configuration it builds."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from collector_helpers import DEADLINE, Producer, records, run_events

from collector.config import ENV_BIND, ENV_FSYNC, ENV_MAX_JOURNAL_BYTES, CollectorConfig, ConfigError
from producer.wire import protocol

ROOT = Path(__file__).resolve().parents[2]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLEARML_RELAY_")}
    env.update(extra)
    return env


class Lines:
    """Collects a subprocess's stderr lines on a thread, so the test can wait with a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        assert proc.stderr is not None
        self.thread = threading.Thread(target=self._pump, args=(proc.stderr,), daemon=True)
        self.thread.start()
        self.seen: list[str] = []

    def _pump(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self.lines.put(line)

    def wait_for(self, pattern: str, timeout: float = DEADLINE) -> re.Match[str]:
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r}; saw {self.seen}") from None
            self.seen.append(line)
            if match := re.search(pattern, line):
                return match


def _start(data: Path) -> tuple[subprocess.Popen[str], Lines]:
    command = ["collector", "--bind", "tcp://127.0.0.1:0", "--data-dir", str(data), "--backend", "jsonl"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "collector", *command],
        cwd=ROOT,
        env=clean_env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, Lines(proc)


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        assert proc.wait(timeout=DEADLINE) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def test_collector_subprocess_accepts_events_and_stops_on_sigterm(tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc, lines = _start(data)
    try:
        endpoint = lines.wait_for(r"listening on (tcp://\S+), data dir (\S+), backend (\w+)").group(1)
        with Producer(endpoint) as producer:
            producer.submit(run_events("cli", 3))
            assert producer.until_acked("cli", 3)[-1] == protocol.Ack(runs={"cli": 3})
    finally:
        _stop(proc)
    lines.thread.join(DEADLINE)
    assert [line["seq"] for line in records(data, "cli")] == [1, 2, 3]


def test_bad_env_value_exits_2_naming_the_variable(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "collector", "collector", "--data-dir", str(tmp_path)],
        cwd=ROOT,
        env=clean_env(**{ENV_FSYNC: "sometimes"}),
        capture_output=True,
        text=True,
        timeout=DEADLINE * 3,
        check=False,
    )
    assert result.returncode == 2
    assert ENV_FSYNC in result.stderr
    assert "sometimes" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_config_precedence_explicit_then_env_then_default(tmp_path: Path) -> None:
    env = {ENV_BIND: "tcp://0.0.0.0:6000", ENV_MAX_JOURNAL_BYTES: "1_000", ENV_FSYNC: ""}
    config = CollectorConfig.from_env(env, bind="tcp://127.0.0.1:7000", data_dir=tmp_path)
    assert config.bind == "tcp://127.0.0.1:7000"
    assert config.max_journal_bytes == 1000
    assert config.fsync == "batch"  # empty means unset
    assert config.data_dir == tmp_path
    assert CollectorConfig.from_env({}) == CollectorConfig()
    assert CollectorConfig.from_env({ENV_BIND: "tcp://0.0.0.0:6000"}, bind=None).bind == "tcp://0.0.0.0:6000"


@pytest.mark.parametrize(
    ("env", "var"),
    [
        ({ENV_MAX_JOURNAL_BYTES: "lots"}, ENV_MAX_JOURNAL_BYTES),
        ({ENV_MAX_JOURNAL_BYTES: "-1"}, ENV_MAX_JOURNAL_BYTES),
        ({ENV_BIND: "localhost"}, ENV_BIND),
        ({"CLEARML_RELAY_HEARTBEAT_TIMEOUT": "nan"}, "CLEARML_RELAY_HEARTBEAT_TIMEOUT"),
        ({"CLEARML_RELAY_BACKEND": "s3"}, "CLEARML_RELAY_BACKEND"),
    ],
)
@pytest.mark.slow
def test_bad_values_raise_config_error_naming_the_variable(env: dict[str, str], var: str) -> None:
    with pytest.raises(ConfigError, match=var):
        CollectorConfig.from_env(env)


def test_unknown_override_is_an_error() -> None:
    with pytest.raises(ConfigError, match="colour"):
        CollectorConfig.from_env({}, colour="blue")


@pytest.mark.slow
def test_a_data_dir_it_creates_is_logged_once(tmp_path: Path) -> None:
    data = tmp_path / "not" / "there" / "data"
    proc, lines = _start(data)
    try:
        created = lines.wait_for(r"INFO collector.service.server: created data directory (\S+)$").group(1)
        lines.wait_for(r"listening on ")
    finally:
        _stop(proc)
    assert created == str(data.absolute())
    assert data.is_dir()

    proc, lines = _start(data)  # there now: nothing to say about it
    try:
        lines.wait_for(r"listening on ")
    finally:
        _stop(proc)
    assert not [line for line in lines.seen if "created data directory" in line]


def _runs_data(data: Path, runs: dict[str, str]) -> None:
    """A data directory as a ClearML collector leaves it: each run finished, with its offline session."""
    from collector.backends.clearml import state
    from collector.storage import paths
    from collector.storage.journal import META

    for run, session in runs.items():
        journal = data / paths.JOURNAL / run
        journal.mkdir(parents=True)
        meta = {"project": "yolo experiments", "name": "train", "state": "completed", "position": 12}
        (journal / META).write_text(json.dumps(meta))
        (data / paths.CLEARML).mkdir(exist_ok=True)
        task = session.rpartition("/")[2]
        state.save(data / paths.CLEARML, state.RunState(run=run, task_id=task, applied=12, session=session))


def _runs(data: Path, *args: str, columns: int = 80) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "collector", "runs", "--data-dir", str(data), *args],
        cwd=ROOT,
        env=clean_env(COLUMNS=str(columns)),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stderr == ""
    return result.stdout


TASK = "0123456789abcdef0123456789abcdef"
SESSION = f"/home/someone/.clearml/cache/offline/{TASK}"


@pytest.mark.slow
def test_runs_fits_the_terminal_folding_the_session_path(tmp_path: Path) -> None:
    run = "6a1f0c2e9b7d4e3f8a2b1c0d9e8f7a6b"
    _runs_data(tmp_path, {run: SESSION, "second": "/tmp/offline/" + "f" * 32})
    lines = _runs(tmp_path).splitlines()
    assert lines[0] == "2 runs"
    assert max(len(line) for line in lines) <= 80
    header = next(i for i, line in enumerate(lines) if line.endswith("session"))
    column = lines[header].index("session")
    rule = header + 1
    assert set(lines[rule]) == {"─"}
    # The first run's rows, up to where the second one starts: its session path folds whole.
    second = next(i for i, line in enumerate(lines) if line.startswith("second"))
    folded = "".join(line[column:].strip() for line in lines[rule + 1 : second])
    assert folded == SESSION
    project = lines[header].index("project")
    assert "".join(line[:project].strip() for line in lines[rule + 1 : second]) == run  # it folds too


@pytest.mark.slow
def test_runs_wide_prints_every_column_in_full(tmp_path: Path) -> None:
    _runs_data(tmp_path, {"only": SESSION})
    lines = _runs(tmp_path, "--wide").splitlines()
    row = f"only  yolo experiments  train  completed        12       12        0  {TASK}  {SESSION}"
    assert lines == [
        "1 run",
        "run   project           name   state      received  applied  backlog  task id"
        + " " * 27
        + "offline session",
        "─" * len(row),
        row,
    ]
