"""The service settings: environment variables, flags, and what a bad value or a busy port does."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from e2e import env, free_port

from collector.config import (
    ENV_ALLOW_PICKLED_FIGURES,
    ENV_BIND,
    ENV_DRAIN_TIMEOUT,
    ENV_HEARTBEAT_TIMEOUT,
    ENV_KEEP_SESSIONS,
    ENV_KEEP_SESSIONS_DAYS,
    ENV_LOG_LEVEL,
    ENV_MAX_FILE_BYTES,
    ENV_MAX_JOURNAL_BYTES,
    ENV_MAX_RUNS_PER_KEY,
    ENV_METRICS_HOST,
    ENV_METRICS_PORT,
    ENV_NONFINITE,
    SETTINGS,
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


ENDPOINT_EXPECTED = "expected a ZeroMQ endpoint: tcp://host:port, ipc://path or inproc://name"
SIZE_EXPECTED = "expected a size in bytes such as 10GiB, 512MiB, 64GB or 1048576"


@pytest.mark.parametrize(
    ("var", "value", "expected"),
    [
        (ENV_METRICS_PORT, "70000", "expected a TCP port between 0 and 65535 (0: any free port)"),
        (ENV_METRICS_PORT, "-1", "expected a TCP port between 0 and 65535 (0: any free port)"),
        (ENV_METRICS_PORT, "http", "expected a TCP port between 0 and 65535 (0: any free port)"),
        (ENV_METRICS_HOST, "http://0.0.0.0", "expected a host name or IP address such as 0.0.0.0"),
        (ENV_KEEP_SESSIONS_DAYS, "-1", "expected a number of days >= 0"),
        (ENV_KEEP_SESSIONS_DAYS, "forever", "expected a number of days >= 0"),
        (ENV_KEEP_SESSIONS, "-3", "expected a whole number >= 0"),
        (ENV_KEEP_SESSIONS, "2.5", "expected a whole number >= 0"),
        (ENV_DRAIN_TIMEOUT, "0", "expected a number of seconds > 0"),
        (ENV_HEARTBEAT_TIMEOUT, "abc", "expected a number of seconds > 0"),
        (ENV_HEARTBEAT_TIMEOUT, "inf", "expected a number of seconds > 0"),
        (ENV_MAX_RUNS_PER_KEY, "many", "expected a whole number > 0"),
        (ENV_MAX_JOURNAL_BYTES, "10 gigs", SIZE_EXPECTED),
        (ENV_MAX_JOURNAL_BYTES, "0", SIZE_EXPECTED),
        (ENV_MAX_FILE_BYTES, "1.5B", SIZE_EXPECTED),
        (ENV_BIND, "127.0.0.1:5555", ENDPOINT_EXPECTED),
        (ENV_BIND, "http://0.0.0.0:80", ENDPOINT_EXPECTED),
        (ENV_NONFINITE, "zero", "expected one of skip, clearml"),
    ],
)
def test_a_bad_service_setting_says_what_is_expected(var: str, value: str, expected: str) -> None:
    """The variable, the value, and what was expected: never Python's own wording."""
    with pytest.raises(ConfigError) as info:
        CollectorConfig.from_env({var: value})
    assert str(info.value) == f"{var}={value!r}: {expected}"


@pytest.mark.parametrize(
    ("written", "size"),
    [("10GiB", 10 * 1024**3), ("10GB", 10 * 1000**3), ("512 MiB", 512 * 1024**2), ("64GB", 64 * 1000**3),
     ("8Mi", 8 * 1024**2), ("1048576", 1048576), ("10_000", 10_000)],
)  # fmt: skip
def test_sizes_take_units_as_the_docs_write_them(written: str, size: int) -> None:
    config = CollectorConfig.from_env({ENV_MAX_JOURNAL_BYTES: written}, max_file_bytes=written)
    assert (config.max_journal_bytes, config.max_file_bytes) == (size, size)


def test_every_size_default_reads_back_as_the_docs_write_it() -> None:
    for setting in SETTINGS:
        if setting.unit == "bytes":
            assert CollectorConfig.from_env({setting.env: setting.shown}) == CollectorConfig(), setting.shown


@pytest.mark.parametrize(
    ("args", "environ", "line"),
    [
        (["--bind", "127.0.0.1:46999"], {},
         f"--bind='127.0.0.1:46999': {ENDPOINT_EXPECTED}"),
        ([], {ENV_BIND: "127.0.0.1:46999"},
         f"CLEARML_RELAY_BIND='127.0.0.1:46999': {ENDPOINT_EXPECTED}"),
        (["--heartbeat-timeout", "abc"], {ENV_HEARTBEAT_TIMEOUT: "30"},
         "--heartbeat-timeout='abc': expected a number of seconds > 0"),
        ([], {ENV_HEARTBEAT_TIMEOUT: "abc"},
         "CLEARML_RELAY_HEARTBEAT_TIMEOUT='abc': expected a number of seconds > 0"),
        (["--max-journal-bytes", "lots"], {},
         f"--max-journal-bytes='lots': {SIZE_EXPECTED}"),
        (["--metrics-port", "http"], {},
         "--metrics-port='http': expected a TCP port between 0 and 65535 (0: any free port)"),
        (["--log-level", "LOUD"], {},
         "--log-level='LOUD': expected one of DEBUG, INFO, WARNING, ERROR"),
        ([], {ENV_LOG_LEVEL: "loud"},
         "CLEARML_RELAY_LOG_LEVEL='LOUD': expected one of DEBUG, INFO, WARNING, ERROR"),
    ],
)  # fmt: skip
@pytest.mark.slow
def test_the_collector_names_the_flag_or_the_variable_that_gave_a_bad_value(
    args: list[str], environ: dict[str, str], line: str, tmp_path: Path
) -> None:
    """A flag's value is blamed on the flag, the environment's on the variable; exit status 2."""
    result = _cli("collector", "--data-dir", str(tmp_path / "data"), *args, **environ)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"clearml-relay: configuration error: {line}\n"
    assert not (tmp_path / "data").exists(), "a refused configuration made the data directory"


@pytest.mark.parametrize(
    ("bind", "curve", "allowed"),
    [
        ("tcp://0.0.0.0:5555", False, False),
        ("tcp://10.1.2.3:5555", False, False),
        ("tcp://127.0.0.1:5555", False, True),
        ("tcp://localhost:5555", False, True),
        ("ipc:///run/relay.sock", False, True),
        ("tcp://0.0.0.0:5555", True, True),
    ],
)
def test_pickled_figures_need_authenticated_producers_or_a_local_bind(
    bind: str, curve: bool, allowed: bool
) -> None:
    """Unpickling runs the sender's code: only CURVE-authenticated or same-machine producers."""
    import zmq

    keys = {}
    if curve:
        public, secret = zmq.curve_keypair()
        keys = {
            "CLEARML_RELAY_CURVE_SECRET_KEY": secret.decode(),
            "CLEARML_RELAY_ALLOW_KEYS": public.decode(),
        }
    environ = {ENV_BIND: bind, ENV_ALLOW_PICKLED_FIGURES: "1", **keys}
    if allowed:
        assert CollectorConfig.from_env(environ).allow_pickled_figures is True
        return
    with pytest.raises(ConfigError, match=r"CLEARML_RELAY_ALLOW_PICKLED_FIGURES \(--allow-pickled-figures\)"):
        CollectorConfig.from_env(environ)
    assert CollectorConfig.from_env({ENV_BIND: bind}).allow_pickled_figures is False


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
