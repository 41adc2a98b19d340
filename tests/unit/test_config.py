from __future__ import annotations

from pathlib import Path

import pytest

from producer.config import (
    ENV_ENDPOINT,
    ENV_FLUSH_TIMEOUT,
    ENV_FSYNC,
    ENV_MAX_OUTBOX_BYTES,
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


ENDPOINT_EXPECTED = "expected a ZeroMQ endpoint: tcp://host:port, ipc://path or inproc://name"
SIZE_EXPECTED = "expected a size in bytes such as 10GiB, 512MiB, 64GB or 1048576"


@pytest.mark.parametrize(
    ("var", "value", "message"),
    [
        (ENV_FLUSH_TIMEOUT, "abc", "CLEARML_RELAY_FLUSH_TIMEOUT='abc': expected a number of seconds >= 0"),
        (ENV_FLUSH_TIMEOUT, "-1", "CLEARML_RELAY_FLUSH_TIMEOUT='-1': expected a number of seconds >= 0"),
        (ENV_FLUSH_TIMEOUT, "nan", "CLEARML_RELAY_FLUSH_TIMEOUT='nan': expected a number of seconds >= 0"),
        (ENV_MAX_PENDING, "0", "CLEARML_RELAY_MAX_PENDING='0': expected a whole number >= 1"),
        (ENV_MAX_PENDING, "lots", "CLEARML_RELAY_MAX_PENDING='lots': expected a whole number >= 1"),
        (ENV_MAX_PENDING, "1.5", "CLEARML_RELAY_MAX_PENDING='1.5': expected a whole number >= 1"),
        (ENV_FSYNC, "sometimes", "CLEARML_RELAY_FSYNC='sometimes': expected one of close, always, never"),
        (ENV_MAX_OUTBOX_BYTES, "20 gigs", f"CLEARML_RELAY_MAX_OUTBOX_BYTES='20 gigs': {SIZE_EXPECTED}"),
        (ENV_MAX_OUTBOX_BYTES, "0GiB", f"CLEARML_RELAY_MAX_OUTBOX_BYTES='0GiB': {SIZE_EXPECTED}"),
        (ENV_ENDPOINT, "localhost:5555", f"CLEARML_RELAY_ENDPOINT='localhost:5555': {ENDPOINT_EXPECTED}"),
        (ENV_ENDPOINT, "tcp://host", f"CLEARML_RELAY_ENDPOINT='tcp://host': {ENDPOINT_EXPECTED}"),
        (ENV_ENDPOINT, "tcp://host:99999", f"CLEARML_RELAY_ENDPOINT='tcp://host:99999': {ENDPOINT_EXPECTED}"),
        (ENV_ENDPOINT, "tcp://host:0", f"CLEARML_RELAY_ENDPOINT='tcp://host:0': {ENDPOINT_EXPECTED}"),
        (ENV_ENDPOINT, "tcp://*:5555", f"CLEARML_RELAY_ENDPOINT='tcp://*:5555': {ENDPOINT_EXPECTED}"),
        (ENV_ENDPOINT, "udp://host:1", f"CLEARML_RELAY_ENDPOINT='udp://host:1': {ENDPOINT_EXPECTED}"),
        (ENV_ENDPOINT, "http://host:80", f"CLEARML_RELAY_ENDPOINT='http://host:80': {ENDPOINT_EXPECTED}"),
    ],
)
def test_bad_environment_value_names_variable_and_value(var: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        ProducerConfig.from_env(environ={var: value})
    assert str(info.value) == message
    assert isinstance(info.value, ValueError)


def test_bad_argument_names_the_argument() -> None:
    with pytest.raises(ConfigError) as info:
        ProducerConfig.from_env(flush_timeout=-2, environ={})
    assert str(info.value) == "flush_timeout=-2: expected a number of seconds >= 0"
    with pytest.raises(ConfigError) as info:
        ProducerConfig.from_env(endpoint="nonsense", environ={})
    assert str(info.value) == f"endpoint='nonsense': {ENDPOINT_EXPECTED}"
    with pytest.raises(ConfigError) as info:
        ProducerConfig.from_env(max_pending=True, environ={})  # a bool is no count
    assert str(info.value) == "max_pending=True: expected a whole number >= 1"


@pytest.mark.parametrize(
    ("written", "size"),
    [("20GiB", 20 * 1024**3), ("512 MiB", 512 * 1024**2), ("64GB", 64 * 1000**3), ("1_000", 1000),
     ("1.5KiB", 1536), ("2Gi", 2 * 1024**3), ("7B", 7), ("3k", 3000)],
)  # fmt: skip
def test_outbox_bound_takes_sizes_as_the_docs_write_them(written: str, size: int) -> None:
    config = ProducerConfig.from_env(environ={ENV_MAX_OUTBOX_BYTES: written})
    assert config.max_outbox_bytes == size


def test_bad_environment_value_is_not_used_when_argument_given() -> None:
    config = ProducerConfig.from_env(flush_timeout=1.0, environ={ENV_FLUSH_TIMEOUT: "abc"})
    assert config.flush_timeout == 1.0


@pytest.mark.parametrize(
    "endpoint", ["tcp://127.0.0.1:5555", "tcp://[::1]:5555", "tcp://my-host.lan:1", "ipc:///run/relay.sock"]
)
def test_accepted_tcp_endpoints(endpoint: str) -> None:
    assert ProducerConfig.from_env(endpoint=endpoint, environ={}).endpoint == endpoint


def test_config_is_frozen() -> None:
    config = ProducerConfig.from_env(environ={})
    with pytest.raises(AttributeError):
        config.endpoint = "tcp://x:1"  # type: ignore[misc]
