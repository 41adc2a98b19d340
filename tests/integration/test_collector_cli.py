"""The command line as a real subprocess, and the configuration it builds."""

from __future__ import annotations

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


def test_collector_subprocess_accepts_events_and_stops_on_sigterm(tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "collector",
            "collector",
            "--bind",
            "tcp://127.0.0.1:0",
            "--data-dir",
            str(data),
            "--backend",
            "jsonl",
        ],
        cwd=ROOT,
        env=clean_env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = Lines(proc)
        endpoint = lines.wait_for(r"listening on (tcp://\S+), data dir (\S+), backend (\w+)").group(1)
        with Producer(endpoint) as producer:
            producer.submit(run_events("cli", 3))
            assert producer.until_acked("cli", 3)[-1] == protocol.Ack(runs={"cli": 3})
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=DEADLINE) == 0
        lines.thread.join(DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
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
