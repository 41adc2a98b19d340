"""The service settings: environment variables, flags, and what a bad value or a busy port does."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from e2e import env, free_port

from collector.config import (
    ENV_DRAIN_TIMEOUT,
    ENV_KEEP_SESSIONS,
    ENV_KEEP_SESSIONS_DAYS,
    ENV_METRICS_HOST,
    ENV_METRICS_PORT,
    ENV_NONFINITE,
    CollectorConfig,
    ConfigError,
)


def _cli(*args: str, **environ: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "collector", *args],
        env=env(**environ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_service_settings_come_from_the_environment_and_flags_beat_it() -> None:
    environ = {
        ENV_METRICS_PORT: "9555",
        ENV_METRICS_HOST: "0.0.0.0",
        ENV_KEEP_SESSIONS_DAYS: "7.5",
        ENV_KEEP_SESSIONS: "100",
        ENV_DRAIN_TIMEOUT: "30",
        ENV_NONFINITE: "ClearML",
    }
    config = CollectorConfig.from_env(environ)
    assert (config.metrics_port, config.metrics_host) == (9555, "0.0.0.0")
    assert (config.keep_sessions_days, config.keep_sessions, config.drain_timeout) == (7.5, 100, 30.0)
    assert config.nonfinite == "clearml"
    flagged = CollectorConfig.from_env(
        environ, metrics_port=0, drain_timeout=2.0, keep_sessions=0, nonfinite="skip"
    )
    assert (flagged.metrics_port, flagged.drain_timeout, flagged.keep_sessions) == (0, 2.0, 0)
    assert flagged.nonfinite == "skip"
    default = CollectorConfig.from_env({})
    assert default.nonfinite == "skip", "a NaN or infinity is not shown as a 0"
    assert default.metrics_port is None, "no HTTP server unless asked for"
    assert default.metrics_host == "127.0.0.1"
    assert (default.keep_sessions_days, default.keep_sessions) == (None, None), "keep every session"


@pytest.mark.parametrize(
    ("var", "value"),
    [
        (ENV_METRICS_PORT, "70000"),
        (ENV_METRICS_PORT, "-1"),
        (ENV_METRICS_PORT, "http"),
        (ENV_METRICS_HOST, "http://0.0.0.0"),
        (ENV_KEEP_SESSIONS_DAYS, "-1"),
        (ENV_KEEP_SESSIONS_DAYS, "forever"),
        (ENV_KEEP_SESSIONS, "-3"),
        (ENV_DRAIN_TIMEOUT, "0"),
        (ENV_NONFINITE, "zero"),
    ],
)
@pytest.mark.slow
def test_a_bad_service_setting_names_the_variable_and_the_value(var: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"{var}='{value}'"):
        CollectorConfig.from_env({var: value})


def test_a_busy_metrics_port_stops_the_collector_with_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = _cli(
            "collector", "--bind", f"tcp://127.0.0.1:{free_port()}", "--data-dir", str(tmp_path),
            "--backend", "jsonl", "--metrics-port", str(port),
        )  # fmt: skip
    assert result.returncode == 1
    assert f"cannot serve metrics on 127.0.0.1:{port}: Address already in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_healthcheck_without_a_metrics_port_is_a_configuration_error() -> None:
    result = _cli("healthcheck", **{ENV_METRICS_PORT: ""})
    assert result.returncode == 2
    assert ENV_METRICS_PORT in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
