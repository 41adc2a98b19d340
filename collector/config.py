"""The collector's configuration: every setting, its environment variable and its default.

All environment variable names of the collector live here, under one prefix
(``CLEARML_RELAY_``). Precedence is explicit argument > environment variable > default, so
the environment alone is enough to configure a collector (Docker, systemd) and the CLI only
passes the flags it was given. A bad value raises :class:`ConfigError` naming the variable.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from producer.wire import protocol

PREFIX: Final = "CLEARML_RELAY_"
ENV_BIND: Final = PREFIX + "BIND"
ENV_DATA_DIR: Final = PREFIX + "DATA_DIR"
ENV_FSYNC: Final = PREFIX + "JOURNAL_FSYNC"
ENV_MAX_BODY_BYTES: Final = PREFIX + "MAX_BODY_BYTES"
ENV_MAX_JOURNAL_BYTES: Final = PREFIX + "MAX_JOURNAL_BYTES"
ENV_SEGMENT_BYTES: Final = PREFIX + "JOURNAL_SEGMENT_BYTES"
ENV_HEARTBEAT_TIMEOUT: Final = PREFIX + "HEARTBEAT_TIMEOUT"
ENV_DRAIN_TIMEOUT: Final = PREFIX + "DRAIN_TIMEOUT"
ENV_BACKEND: Final = PREFIX + "BACKEND"
ENV_OFFLINE: Final = PREFIX + "OFFLINE"
ENV_CALL_TIMEOUT: Final = PREFIX + "CLEARML_CALL_TIMEOUT"
ENV_METRICS_PORT: Final = PREFIX + "METRICS_PORT"
ENV_METRICS_HOST: Final = PREFIX + "METRICS_HOST"
ENV_KEEP_SESSIONS_DAYS: Final = PREFIX + "KEEP_SESSIONS_DAYS"
ENV_KEEP_SESSIONS: Final = PREFIX + "KEEP_SESSIONS"
ENV_CURVE_SECRET_KEY: Final = PREFIX + "CURVE_SECRET_KEY"
ENV_ALLOW_KEYS: Final = PREFIX + "ALLOW_KEYS"
ENV_MAX_FILE_BYTES: Final = PREFIX + "MAX_FILE_BYTES"
ENV_MAX_RUNS_PER_KEY: Final = PREFIX + "MAX_RUNS_PER_KEY"
ENV_NONFINITE: Final = PREFIX + "NONFINITE"
#: Read by the CLI only: a library never configures logging.
ENV_LOG_LEVEL: Final = PREFIX + "LOG_LEVEL"
ENV_LOG_FORMAT: Final = PREFIX + "LOG_FORMAT"

FsyncPolicy = Literal["batch", "never"]
FSYNC_POLICIES: Final = ("batch", "never")
NonfinitePolicy = Literal["skip", "clearml"]
NONFINITE_POLICIES: Final = ("skip", "clearml")
BACKENDS: Final = ("clearml", "jsonl")
LOG_FORMATS: Final = ("text", "json")


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the variable and value."""


@dataclass(frozen=True)
class CollectorConfig:
    """Everything a :class:`collector.service.server.Collector` needs to know.

    Attributes:
        bind: ZeroMQ endpoint of the ROUTER socket (``tcp://host:0`` picks a free port).
        data_dir: Root of the journal, the file store and the record backend.
        fsync: ``batch``: fsync every touched journal once per group commit, before acking;
            ``never``: rely on the page cache (survives ``kill -9``, not a power loss).
        max_body_bytes: Largest message body and file chunk payload accepted.
        max_journal_bytes: Above this many journal bytes new events are refused with
            ``Refuse(code="backoff")``; producers keep spooling.
        journal_segment_bytes: Size at which a run's journal starts a new segment file.
        heartbeat_timeout: Seconds without a heartbeat after which a run counts as orphaned.
        drain_timeout: Seconds a graceful stop waits for appliers to catch up.
        backend: Which backend applies events: ``clearml`` (a ClearML task per run) or
            ``jsonl`` (JSON lines, for tests and transport demos).
        offline: Force ClearML offline mode even when a server is configured.
        call_timeout: Longest wait for one ClearML call that can block on the network.
        metrics_port: TCP port of the HTTP server with ``/metrics`` and ``/healthz``; None: no
            server (the default outside the container image); 0: any free port (tests).
        metrics_host: Address that server binds: loopback by default, so that nothing is
            exposed unless asked; the container image sets ``0.0.0.0``.
        keep_sessions_days: Delete the offline session (its folder) of a completed or failed
            run this many days after it finished; None keeps them.
        keep_sessions: Keep at most this many finished offline sessions, the newest; None
            keeps them all.
        curve_secret_key: The collector's ``.key_secret`` file: CurveZMQ encryption, and only
            the producer keys in ``allow_keys`` may connect. Both or neither.
        allow_keys: Directory of the producer public keys (``*.key``) allowed to connect.
        max_file_bytes: Larger files (images, models) are refused with ``too_large``.
        max_runs_per_key: Open runs one producer key may own (CURVE only); beyond, refused.
        nonfinite: What the ClearML backend does with a NaN or infinite scalar, single value or
            machine stat: ``skip``: report nothing for it (ClearML would show 0, so a diverged
            loss would look perfect), count it (``nonfinite_skipped``) and say so once per
            series in the task's console; ``clearml``: hand it to ClearML, which reports its
            ``Logger.set_reporting_nan_value`` / ``set_reporting_inf_value`` value (0 unless
            changed).

    """

    bind: str = "tcp://127.0.0.1:5555"
    data_dir: Path = Path("./clearml-relay-data")
    fsync: FsyncPolicy = "batch"
    max_body_bytes: int = protocol.MAX_BODY_BYTES
    max_journal_bytes: int = 10 * 1024**3
    journal_segment_bytes: int = 8 * 1024 * 1024
    heartbeat_timeout: float = 120.0
    drain_timeout: float = 10.0
    backend: str = "clearml"
    offline: bool = False
    call_timeout: float = 60.0
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    keep_sessions_days: float | None = None
    keep_sessions: int | None = None
    curve_secret_key: Path | None = None
    allow_keys: Path | None = None
    max_file_bytes: int = 64 * 1024**3
    max_runs_per_key: int = 1000
    nonfinite: NonfinitePolicy = "skip"

    def __post_init__(self) -> None:
        if (self.curve_secret_key is None) != (self.allow_keys is None):
            raise ConfigError(
                f"{ENV_CURVE_SECRET_KEY} (--curve-secret-key) and {ENV_ALLOW_KEYS} (--allow-keys) "
                "go together: the secret key encrypts, the allow-list says who may connect"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> CollectorConfig:
        """Build a config: explicit ``overrides`` > ``environ`` (default ``os.environ``) > default.

        An override of ``None`` and an empty variable count as not given, so a CLI can pass
        every flag through.

        Raises:
            ConfigError: a value is malformed or out of range, or an override is unknown.

        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            var, parse = _FIELDS[field.name]
            raw = overrides.pop(field.name, None)
            if raw is None:
                raw = env.get(var, "").strip() or None
            if raw is not None:
                values[field.name] = _parse(var, raw, parse)
        if overrides:
            raise ConfigError(f"unknown collector settings: {', '.join(sorted(overrides))}")
        return cls(**values)


def _parse(var: str, raw: Any, parse: Callable[[Any], Any]) -> Any:
    try:
        return parse(raw)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{var}={raw!r}: {exc}") from None


def _bind(raw: Any) -> str:
    value = str(raw).strip()
    if "://" not in value:
        raise ValueError("expected a ZeroMQ endpoint such as tcp://0.0.0.0:5555")
    return value


def _choice(*allowed: str) -> Callable[[Any], str]:
    def parse(raw: Any) -> str:
        value = str(raw).strip().lower()
        if value not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}")
        return value

    return parse


def _int(raw: Any) -> int:
    # bool is an int subclass, and True as a byte count is surely a mistake.
    if isinstance(raw, bool):
        raise TypeError("expected an integer")
    return int(str(raw).strip().replace("_", "")) if not isinstance(raw, int) else raw


def _positive_int(raw: Any) -> int:
    value = _int(raw)
    if value <= 0:
        raise ValueError("expected a positive integer")
    return value


def _positive_float(raw: Any) -> float:
    value = float(raw)
    if not value > 0 or value == float("inf"):
        raise ValueError("expected a positive number of seconds")
    return value


def _non_negative_int(raw: Any) -> int:
    value = _int(raw)
    if value < 0:
        raise ValueError("expected an integer >= 0")
    return value


def _port(raw: Any) -> int:
    value = _non_negative_int(raw)
    if value > 65535:
        raise ValueError("expected a TCP port between 0 and 65535 (0: any free port)")
    return value


def _days(raw: Any) -> float:
    value = float(raw)
    if not value >= 0 or value == float("inf"):
        raise ValueError("expected a number of days >= 0")
    return value


def _host(raw: Any) -> str:
    value = str(raw).strip()
    # A host name or an IPv4/IPv6 address ("::" binds every IPv6 address), not a URL.
    if not value or "/" in value or any(c.isspace() for c in value):
        raise ValueError("expected a host name or IP address such as 0.0.0.0")
    return value


def _flag(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    value = str(raw).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _data_dir(raw: Any) -> Path:
    if not str(raw).strip():
        raise ValueError("expected a directory path")
    return Path(raw).expanduser()


_FIELDS: Final[dict[str, tuple[str, Callable[[Any], Any]]]] = {
    "bind": (ENV_BIND, _bind),
    "data_dir": (ENV_DATA_DIR, _data_dir),
    "fsync": (ENV_FSYNC, _choice(*FSYNC_POLICIES)),
    "max_body_bytes": (ENV_MAX_BODY_BYTES, _positive_int),
    "max_journal_bytes": (ENV_MAX_JOURNAL_BYTES, _positive_int),
    "journal_segment_bytes": (ENV_SEGMENT_BYTES, _positive_int),
    "heartbeat_timeout": (ENV_HEARTBEAT_TIMEOUT, _positive_float),
    "drain_timeout": (ENV_DRAIN_TIMEOUT, _positive_float),
    "backend": (ENV_BACKEND, _choice(*BACKENDS)),
    "offline": (ENV_OFFLINE, _flag),
    "call_timeout": (ENV_CALL_TIMEOUT, _positive_float),
    "metrics_port": (ENV_METRICS_PORT, _port),
    "metrics_host": (ENV_METRICS_HOST, _host),
    "keep_sessions_days": (ENV_KEEP_SESSIONS_DAYS, _days),
    "keep_sessions": (ENV_KEEP_SESSIONS, _non_negative_int),
    "curve_secret_key": (ENV_CURVE_SECRET_KEY, _data_dir),
    "allow_keys": (ENV_ALLOW_KEYS, _data_dir),
    "max_file_bytes": (ENV_MAX_FILE_BYTES, _positive_int),
    "max_runs_per_key": (ENV_MAX_RUNS_PER_KEY, _positive_int),
    "nonfinite": (ENV_NONFINITE, _choice(*NONFINITE_POLICIES)),
}
