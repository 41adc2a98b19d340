from __future__ import annotations

from pathlib import Path

import pytest

from producer.config import (
    ENV_ENDPOINT,
    ENV_FLUSH_TIMEOUT,
    ENV_FSYNC,
    ENV_MAX_PENDING,
    ENV_SPOOL_DIR,
    ConfigError,
    ProducerConfig,
)


def test_defaults_without_environment() -> None:
    config = ProducerConfig.from_env(environ={"XDG_CACHE_HOME": "/x/cache"})
    assert config.endpoint == "tcp://127.0.0.1:5555"
    assert config.spool_dir == Path("/x/cache/clearml-relay/spool")
    assert config.flush_timeout == 5.0
    assert config.max_pending == 100_000
    assert config.fsync == "close"


def test_spool_dir_falls_back_to_home_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    config = ProducerConfig.from_env(environ={})
    assert config.spool_dir == tmp_path / ".cache" / "clearml-relay" / "spool"


def test_environment_beats_default_and_argument_beats_environment(tmp_path: Path) -> None:
    env = {
        ENV_ENDPOINT: "tcp://collector.example:7000",
        ENV_SPOOL_DIR: str(tmp_path / "env-spool"),
        ENV_FLUSH_TIMEOUT: "2.5",
        ENV_MAX_PENDING: "10",
        ENV_FSYNC: "ALWAYS",
    }
    from_env = ProducerConfig.from_env(environ=env)
    assert from_env == ProducerConfig(
        endpoint="tcp://collector.example:7000",
        spool_dir=tmp_path / "env-spool",
        flush_timeout=2.5,
        max_pending=10,
        fsync="always",
    )
    explicit = ProducerConfig.from_env(
        endpoint="ipc:///tmp/relay.sock",
        spool_dir=tmp_path / "arg-spool",
        flush_timeout=0,
        max_pending=3,
        fsync="never",
        environ=env,
    )
    assert explicit == ProducerConfig(
        endpoint="ipc:///tmp/relay.sock",
        spool_dir=tmp_path / "arg-spool",
        flush_timeout=0.0,
        max_pending=3,
        fsync="never",
    )


def test_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_FLUSH_TIMEOUT, "0.25")
    monkeypatch.setenv(ENV_ENDPOINT, "inproc://relay")
    config = ProducerConfig.from_env()
    assert config.flush_timeout == 0.25
    assert config.endpoint == "inproc://relay"


@pytest.mark.parametrize(
    ("var", "value", "message"),
    [
        (ENV_FLUSH_TIMEOUT, "abc", "CLEARML_RELAY_FLUSH_TIMEOUT must be a number of seconds >= 0, got 'abc'"),
        (ENV_FLUSH_TIMEOUT, "-1", "CLEARML_RELAY_FLUSH_TIMEOUT must be a number of seconds >= 0, got '-1'"),
        (ENV_FLUSH_TIMEOUT, "nan", "CLEARML_RELAY_FLUSH_TIMEOUT must be a number of seconds >= 0, got 'nan'"),
        (ENV_MAX_PENDING, "0", "CLEARML_RELAY_MAX_PENDING must be an integer >= 1, got '0'"),
        (ENV_MAX_PENDING, "lots", "CLEARML_RELAY_MAX_PENDING must be an integer >= 1, got 'lots'"),
        (ENV_FSYNC, "sometimes", "CLEARML_RELAY_FSYNC must be one of close, always, never, got 'sometimes'"),
        (ENV_ENDPOINT, "localhost:5555", "CLEARML_RELAY_ENDPOINT must look like tcp://host:port"),
        (ENV_ENDPOINT, "tcp://host", "got 'tcp://host'"),
        (ENV_ENDPOINT, "tcp://host:99999", "got 'tcp://host:99999'"),
        (ENV_ENDPOINT, "udp://host:1", "got 'udp://host:1'"),
    ],
)
@pytest.mark.slow
def test_bad_environment_value_names_variable_and_value(var: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        ProducerConfig.from_env(environ={var: value})
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


def test_bad_argument_names_the_argument() -> None:
    with pytest.raises(ConfigError, match=r"^flush_timeout must be a number of seconds >= 0, got -2$"):
        ProducerConfig.from_env(flush_timeout=-2, environ={})
    with pytest.raises(ConfigError, match=r"^endpoint must look like"):
        ProducerConfig.from_env(endpoint="nonsense", environ={})


def test_bad_environment_value_is_not_used_when_argument_given() -> None:
    config = ProducerConfig.from_env(flush_timeout=1.0, environ={ENV_FLUSH_TIMEOUT: "abc"})
    assert config.flush_timeout == 1.0


@pytest.mark.parametrize("endpoint", ["tcp://127.0.0.1:5555", "tcp://[::1]:5555", "tcp://my-host.lan:1"])
@pytest.mark.slow
def test_accepted_tcp_endpoints(endpoint: str) -> None:
    assert ProducerConfig.from_env(endpoint=endpoint, environ={}).endpoint == endpoint


def test_config_is_frozen() -> None:
    config = ProducerConfig.from_env(environ={})
    with pytest.raises(AttributeError):
        config.endpoint = "tcp://x:1"  # type: ignore[misc]
