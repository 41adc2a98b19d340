"""The producer's configuration: every environment variable it reads, and their validation.

Precedence is explicit argument > environment variable > default. The environment alone must be
enough (DDP children inherit the environment, not Python objects), so every setting has a
variable, all named here with the ``CLEARML_RELAY_`` prefix.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal, TypeVar

from producer.wire.curve import CurveKeys, KeySettingError, curve_from_env

ENV_PREFIX: Final = "CLEARML_RELAY_"
ENV_ENDPOINT: Final = ENV_PREFIX + "ENDPOINT"
ENV_SPOOL_DIR: Final = ENV_PREFIX + "SPOOL_DIR"
ENV_FLUSH_TIMEOUT: Final = ENV_PREFIX + "FLUSH_TIMEOUT"
ENV_MAX_PENDING: Final = ENV_PREFIX + "MAX_PENDING"
ENV_FSYNC: Final = ENV_PREFIX + "FSYNC"
ENV_MAX_OUTBOX_BYTES: Final = ENV_PREFIX + "MAX_OUTBOX_BYTES"
# Read by the Ultralytics hooks (producer.integrations.ultralytics): they name the ClearML task of a training.
ENV_PROJECT: Final = ENV_PREFIX + "PROJECT"
ENV_TASK_NAME: Final = ENV_PREFIX + "TASK_NAME"

DEFAULT_ENDPOINT: Final = "tcp://127.0.0.1:5555"
DEFAULT_FLUSH_TIMEOUT: Final = 5.0
DEFAULT_MAX_PENDING: Final = 100_000
DEFAULT_MAX_OUTBOX_BYTES: Final = 20 * 1024**3

FsyncPolicy = Literal["close", "always", "never"]
FSYNC_POLICIES: Final[tuple[FsyncPolicy, ...]] = ("close", "always", "never")

# tcp://host:port (host may be a bracketed IPv6 address), ipc://path, inproc://name.
_ENDPOINT = re.compile(r"^(tcp://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.*-]+):(\d{1,5})|ipc://.+|inproc://.+)$")


class ConfigError(ValueError):
    """A setting with a bad value; the message names the variable (or argument) and the value."""


def default_spool_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CACHE_HOME/clearml-relay/spool``, or ``~/.cache/clearml-relay/spool``."""
    env = os.environ if environ is None else environ
    cache = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "clearml-relay" / "spool"


def _endpoint(name: str, raw: object) -> str:
    match = _ENDPOINT.match(raw) if isinstance(raw, str) else None
    if match is None or (match.group(3) is not None and not 0 < int(match.group(3)) < 65536):
        raise ConfigError(f"{name} must look like tcp://host:port, ipc://path or inproc://name, got {raw!r}")
    return str(raw)


def _path(name: str, raw: object) -> Path:
    try:
        return Path(os.fspath(raw)).expanduser()  # type: ignore[call-overload]
    except TypeError:
        raise ConfigError(f"{name} must be a directory path, got {raw!r}") from None


def _seconds(name: str, raw: object) -> float:
    try:
        value = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        value = math.nan
    if not value >= 0 or math.isinf(value):  # also rejects NaN
        raise ConfigError(f"{name} must be a number of seconds >= 0, got {raw!r}")
    return value


def _positive_int(name: str, raw: object) -> int:
    try:
        value: int = int(raw)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        value = 0
    if value < 1 or isinstance(raw, bool):
        raise ConfigError(f"{name} must be an integer >= 1, got {raw!r}")
    return value


def _fsync(name: str, raw: object) -> FsyncPolicy:
    value = raw.strip().lower() if isinstance(raw, str) else raw
    if value not in FSYNC_POLICIES:
        raise ConfigError(f"{name} must be one of {', '.join(FSYNC_POLICIES)}, got {raw!r}")
    return value


@dataclass(frozen=True)
class ProducerConfig:
    """Settings of one producer client.

    Attributes:
        endpoint: ZeroMQ endpoint of the collector's ROUTER socket.
        spool_dir: directory holding one durable outbox per run.
        flush_timeout: seconds ``close``/exit wait for the collector's acks before giving up
            (the unacked events stay in the outbox).
        max_pending: bound of the hand-off queue between callers and the writer thread; events
            beyond it are dropped and counted, callers never block.
        fsync: ``close`` (fsync the outbox on flush/close), ``always`` (after every written
            batch) or ``never``.
        max_outbox_bytes: disk one run's outbox may hold (events and copied files not yet
            acknowledged); beyond it new events of the run are dropped, counted and logged once.
        curve: CurveZMQ keys (``CLEARML_RELAY_SERVER_KEY`` and this producer's key pair, see
            :mod:`producer.wire.curve`); None: a plain connection.

    """

    endpoint: str = DEFAULT_ENDPOINT
    spool_dir: Path = field(default_factory=default_spool_dir)
    flush_timeout: float = DEFAULT_FLUSH_TIMEOUT
    max_pending: int = DEFAULT_MAX_PENDING
    fsync: FsyncPolicy = "close"
    max_outbox_bytes: int = DEFAULT_MAX_OUTBOX_BYTES
    curve: CurveKeys | None = None

    @classmethod
    def from_env(
        cls,
        *,
        endpoint: str | None = None,
        spool_dir: str | os.PathLike[str] | None = None,
        flush_timeout: float | None = None,
        max_pending: int | None = None,
        fsync: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> ProducerConfig:
        """Build a config: a non-None argument beats the environment, which beats the default.

        Args:
            endpoint: overrides ``CLEARML_RELAY_ENDPOINT``.
            spool_dir: overrides ``CLEARML_RELAY_SPOOL_DIR``.
            flush_timeout: overrides ``CLEARML_RELAY_FLUSH_TIMEOUT``.
            max_pending: overrides ``CLEARML_RELAY_MAX_PENDING``.
            fsync: overrides ``CLEARML_RELAY_FSYNC``.
            environ: the environment to read (``os.environ`` by default).

        Raises:
            ConfigError: a value is invalid; the message names its source and the value.

        """
        env = os.environ if environ is None else environ
        try:
            curve = curve_from_env(env)
        except KeySettingError as exc:
            raise ConfigError(str(exc)) from None
        return cls(
            endpoint=_setting(endpoint, ENV_ENDPOINT, _endpoint, DEFAULT_ENDPOINT, env),
            spool_dir=_setting(spool_dir, ENV_SPOOL_DIR, _path, None, env) or default_spool_dir(env),
            flush_timeout=_setting(flush_timeout, ENV_FLUSH_TIMEOUT, _seconds, DEFAULT_FLUSH_TIMEOUT, env),
            max_pending=_setting(max_pending, ENV_MAX_PENDING, _positive_int, DEFAULT_MAX_PENDING, env),
            fsync=_setting(fsync, ENV_FSYNC, _fsync, "close", env),
            max_outbox_bytes=_setting(
                None, ENV_MAX_OUTBOX_BYTES, _positive_int, DEFAULT_MAX_OUTBOX_BYTES, env
            ),
            curve=curve,
        )


_T = TypeVar("_T")


def _setting(
    arg: object, var: str, parse: Callable[[str, object], _T], default: _T, env: Mapping[str, str]
) -> _T:
    """Explicit argument > environment variable > default, parsed and checked."""
    if arg is not None:
        # Name the argument, not the variable: that is where the bad value came from.
        return parse(var.removeprefix(ENV_PREFIX).lower(), arg)
    raw = env.get(var, "").strip()
    return parse(var, raw) if raw else default
