"""The collector's configuration: one table of every setting, its variable, flag and default.

:data:`SETTINGS` is the only place a collector setting is declared: each :class:`Setting` names
its :class:`CollectorConfig` field, its environment variable (one prefix, ``CLEARML_RELAY_``),
its ``clearml-relay collector`` flag, how a value is checked, its default and its help. The
config object, the CLI flags (:mod:`collector.service.cli`), their help and the configuration
table of ``docs/configuration.md`` (:func:`docs_table`, kept equal by a test) all come from it.
:data:`LOG_SETTINGS` does the same for the two settings of the command line itself.

Precedence is explicit argument > environment variable > default, so the environment alone is
enough to configure a collector (Docker, systemd) and the CLI only passes the flags it was given.
A bad value raises :class:`ConfigError` naming the variable.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from producer.wire import protocol
from producer.wire.endpoint import check_endpoint, problem
from producer.wire.sizes import EXPECTED as EXPECTED_SIZE
from producer.wire.sizes import SizeError, format_size, parse_size

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
ENV_ALLOW_PICKLED_FIGURES: Final = PREFIX + "ALLOW_PICKLED_FIGURES"
#: Read by the CLI only: a library never configures logging.
ENV_LOG_LEVEL: Final = PREFIX + "LOG_LEVEL"
ENV_LOG_FORMAT: Final = PREFIX + "LOG_FORMAT"

FsyncPolicy = Literal["batch", "never"]
FSYNC_POLICIES: Final = ("batch", "never")
NonfinitePolicy = Literal["skip", "clearml"]
NONFINITE_POLICIES: Final = ("skip", "clearml")
BACKENDS: Final = ("clearml", "jsonl")
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS: Final = ("text", "json")


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the variable and value."""


# ------------------------------------------------------------------------------ value checks


def _parse(source: str, raw: Any, parse: Callable[[Any], Any]) -> Any:
    try:
        return parse(raw)
    except (ValueError, TypeError) as exc:
        raise ConfigError(problem(source, raw, exc)) from None


def _bind(raw: Any) -> str:
    return check_endpoint(raw, bind=True)


def _choice(*allowed: str, case: Callable[[str], str] = str.lower) -> Callable[[Any], str]:
    def parse(raw: Any) -> str:
        value = case(str(raw).strip())
        if value not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}")
        return value

    return parse


def _int(raw: Any, expected: str) -> int:
    # bool is an int subclass, and True as a count is surely a mistake.
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    text = raw.strip().replace("_", "") if isinstance(raw, str) else ""
    if not (text.isdigit() or (text[:1] in "+-" and text[1:].isdigit())):
        raise ValueError(expected)
    return int(text)


def _number(raw: Any, expected: str) -> float:
    try:
        value = float(raw) if not isinstance(raw, bool) else math.nan
    except (TypeError, ValueError):
        value = math.nan
    if math.isnan(value) or math.isinf(value):
        raise ValueError(expected)
    return value


def _positive_int(raw: Any) -> int:
    expected = "expected a whole number > 0"
    value = _int(raw, expected)
    if value <= 0:
        raise ValueError(expected)
    return value


def _bytes(raw: Any) -> int:
    value = parse_size(raw)
    if value <= 0:
        raise SizeError(EXPECTED_SIZE)
    return value


def _seconds(raw: Any) -> float:
    expected = "expected a number of seconds > 0"
    value = _number(raw, expected)
    if not value > 0:
        raise ValueError(expected)
    return value


def _non_negative_int(raw: Any) -> int:
    expected = "expected a whole number >= 0"
    value = _int(raw, expected)
    if value < 0:
        raise ValueError(expected)
    return value


def _port(raw: Any) -> int:
    expected = "expected a TCP port between 0 and 65535 (0: any free port)"
    value = _int(raw, expected)
    if not 0 <= value <= 65535:
        raise ValueError(expected)
    return value


def _days(raw: Any) -> float:
    expected = "expected a number of days >= 0"
    value = _number(raw, expected)
    if value < 0:
        raise ValueError(expected)
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


def _path(raw: Any) -> Path:
    if not str(raw).strip():
        raise ValueError("expected a path")
    return Path(raw).expanduser()


# ------------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Setting:
    """One setting: where its value comes from, how it is checked, and how it is documented.

    Attributes:
        name: The :class:`CollectorConfig` field (for :data:`LOG_SETTINGS`: the CLI's own).
        env: The environment variable.
        flag: The command-line flag.
        parse: Checks and converts a value from the flag or the variable; raises ValueError or
            TypeError with what was expected.
        default: The value when neither the flag nor the variable gives one.
        help: What it does, in a few words: the flag's help and the docs' description.
        unset: What a default of None means (``not served``, ``keep``).
        unit: ``bytes`` or ``seconds``: how the default is written for a reader.
        flag_type: What the command line converts the flag's text with.
        choices: The values the flag accepts (None: any, checked by ``parse``).
        switch: The flag takes no value and means ``True``.
        doc: More for ``docs/configuration.md`` than a flag's help can say.

    """

    name: str
    env: str
    flag: str
    parse: Callable[[Any], Any]
    default: Any
    help: str
    unset: str = ""
    unit: str = ""
    flag_type: Callable[[str], Any] = str
    choices: tuple[str, ...] | None = None
    switch: bool = False
    doc: str = ""

    @property
    def shown(self) -> str:
        """The default as a reader should see it: ``64 GiB``, ``120 s``, ``batch``, ``not served``."""
        value = self.default
        if value is None:
            return self.unset
        if self.unit == "bytes":
            return format_size(value)
        if self.unit == "seconds":
            return f"{value:g} s"
        if isinstance(value, bool):
            return str(value).lower()
        if isinstance(value, Path) and not value.is_absolute():
            return f"./{value}"
        return str(value)

    @property
    def flag_help(self) -> str:
        """The flag's ``--help`` line: what it does, its variable and its default."""
        default = f", default {self.shown}" if self.shown else ""
        return f"{self.help} (env {self.env}{default})"


SETTINGS: Final[tuple[Setting, ...]] = (
    Setting("bind", ENV_BIND, "--bind", _bind, "tcp://127.0.0.1:5555", "ZeroMQ endpoint to bind",
            doc="`tcp://host:0` picks a free port; another interface than loopback without CurveZMQ "
            "logs a `SECURITY` warning. The container image sets `tcp://0.0.0.0:5555`."),
    Setting("data_dir", ENV_DATA_DIR, "--data-dir", _path, Path("./clearml-relay-data"),
            "journal, files and records", doc="The container image sets `/data` (its volume)."),
    Setting("fsync", ENV_FSYNC, "--fsync", _choice(*FSYNC_POLICIES), "batch", "journal fsync policy",
            choices=FSYNC_POLICIES,
            doc="`batch`: fsync every touched journal once per group commit, before acknowledging; "
            "`never`: rely on the page cache (survives `kill -9`, not a power loss). With `batch`, received "
            "files are also fsynced before they are reported complete, and written with `O_DIRECT` where "
            "the filesystem allows it (no page cache taken for them; the log says once if the filesystem "
            "refuses)."),
    Setting("max_body_bytes", ENV_MAX_BODY_BYTES, "--max-body-bytes", _bytes, protocol.MAX_BODY_BYTES,
            "largest message body and file chunk accepted", unit="bytes"),
    Setting("max_journal_bytes", ENV_MAX_JOURNAL_BYTES, "--max-journal-bytes", _bytes, 10 * 1024**3,
            "journal size above which producers are told to back off", unit="bytes",
            doc="New events and file chunks are refused with `backoff`; producers keep spooling."),
    Setting("journal_segment_bytes", ENV_SEGMENT_BYTES, "--journal-segment-bytes", _bytes,
            8 * 1024 * 1024, "size at which a run's journal starts a new segment file", unit="bytes"),
    Setting("heartbeat_timeout", ENV_HEARTBEAT_TIMEOUT, "--heartbeat-timeout", _seconds, 120.0,
            "seconds of silence after which a run is marked aborted", unit="seconds",
            doc="After everything it sent has been applied; a producer that comes back opens it again."),
    Setting("drain_timeout", ENV_DRAIN_TIMEOUT, "--drain-timeout", _seconds, 10.0,
            "seconds a stop waits for journaled events to be applied", unit="seconds",
            doc="What is not applied by then stays journaled for the next start."),
    Setting("backend", ENV_BACKEND, "--backend", _choice(*BACKENDS), "clearml", "where events go",
            choices=BACKENDS,
            doc="`clearml`: a ClearML task per run; `jsonl`: JSON lines (transport tests and demos)."),
    Setting("offline", ENV_OFFLINE, "--offline", _flag, False,
            "ClearML offline mode even if a server is configured", switch=True),
    Setting("call_timeout", ENV_CALL_TIMEOUT, "--clearml-call-timeout", _seconds, 60.0,
            "longest wait for one ClearML call that can block on the network", unit="seconds"),
    Setting("metrics_port", ENV_METRICS_PORT, "--metrics-port", _port, None,
            "serve /metrics and /healthz on this port", unset="not served",
            doc="`0` picks a free port. The container image sets `9555`."),
    Setting("metrics_host", ENV_METRICS_HOST, "--metrics-host", _host, "127.0.0.1",
            "address the metrics server binds", doc="The container image sets `0.0.0.0`."),
    Setting("keep_sessions_days", ENV_KEEP_SESSIONS_DAYS, "--keep-sessions-days", _days, None,
            "delete finished offline sessions older than this many days", unset="keep",
            doc="Sessions of completed and failed runs only: an aborted run's producer may come back."),
    Setting("keep_sessions", ENV_KEEP_SESSIONS, "--keep-sessions", _non_negative_int, None,
            "keep at most this many finished offline sessions, the newest", unset="all"),
    Setting("curve_secret_key", ENV_CURVE_SECRET_KEY, "--curve-secret-key", _path, None,
            "the collector's .key_secret file: encrypt, admit --allow-keys only", unset="none: plain ZeroMQ",
            doc="CurveZMQ; goes together with `--allow-keys`."),
    Setting("allow_keys", ENV_ALLOW_KEYS, "--allow-keys", _path, None,
            "directory of the producer public keys (*.key) allowed to connect; SIGHUP re-reads it",
            unset="none"),
    Setting("max_file_bytes", ENV_MAX_FILE_BYTES, "--max-file-bytes", _bytes, 64 * 1024**3,
            "largest file accepted", unit="bytes",
            doc="Larger images and models are refused with `too_large` (the event becomes a gap)."),
    Setting("max_runs_per_key", ENV_MAX_RUNS_PER_KEY, "--max-runs-per-key", _positive_int, 1000,
            "open runs one producer key may own, with CURVE"),
    Setting("nonfinite", ENV_NONFINITE, "--nonfinite", _choice(*NONFINITE_POLICIES), "skip",
            "a NaN or infinite scalar: skip it (noted in the task's console) or hand it to ClearML, "
            "which reports 0", choices=NONFINITE_POLICIES,
            doc="Scalars, single values and machine stats. `skip` reports nothing for it (ClearML would "
            "show 0, so a diverged loss would look perfect), counts it (`nonfinite_skipped`) and says "
            "so once per series in the task's console; `clearml` hands it to ClearML, which reports "
            "its `Logger.set_reporting_nan_value` / `set_reporting_inf_value` value (0 unless changed)."),
    Setting("allow_pickled_figures", ENV_ALLOW_PICKLED_FIGURES, "--allow-pickled-figures", _flag, False,
            "draw matplotlib figures that producers send pickled (`CLEARML_RELAY_FIGURES=pickle`)",
            switch=True,
            doc="Unpickling runs the sender's code: allowed only with CurveZMQ (every producer "
            "authenticated) or a bind only this machine reaches (`ipc://`, loopback). Without it a "
            "pickled figure is refused (a gap the producer logs). See docs/logger.md."),
)  # fmt: skip
"""Every setting of :class:`CollectorConfig`, in the order of its fields."""

#: The command line's own settings: every ``clearml-relay`` command takes them (a library never
#: configures logging, so they are no part of :class:`CollectorConfig`).
LOG_SETTINGS: Final[tuple[Setting, ...]] = (
    Setting("log_level", ENV_LOG_LEVEL, "--log-level", _choice(*LOG_LEVELS, case=str.upper), "INFO",
            "log level", flag_type=str.upper, choices=LOG_LEVELS),
    Setting("log_format", ENV_LOG_FORMAT, "--log-format", _choice(*LOG_FORMATS), "text",
            "log lines as text or one JSON object per line", flag_type=str.lower, choices=LOG_FORMATS),
)  # fmt: skip

#: :class:`CollectorConfig`'s field defaults: the table's.
_DEFAULTS: Final[dict[str, Any]] = {setting.name: setting.default for setting in SETTINGS}


@dataclass(frozen=True)
class CollectorConfig:
    """Everything a :class:`collector.service.server.Collector` needs to know.

    One field per entry of :data:`SETTINGS`, which says what each means, its variable, its flag
    and its default (``docs/configuration.md`` lists them). ``bind`` may be ``tcp://host:0``
    (a free port); ``metrics_port`` None serves no ``/metrics``, 0 any free port;
    ``keep_sessions_days`` and ``keep_sessions`` None keep every session; ``curve_secret_key``
    and ``allow_keys`` go together.
    """

    bind: str = _DEFAULTS["bind"]
    data_dir: Path = _DEFAULTS["data_dir"]
    fsync: FsyncPolicy = _DEFAULTS["fsync"]
    max_body_bytes: int = _DEFAULTS["max_body_bytes"]
    max_journal_bytes: int = _DEFAULTS["max_journal_bytes"]
    journal_segment_bytes: int = _DEFAULTS["journal_segment_bytes"]
    heartbeat_timeout: float = _DEFAULTS["heartbeat_timeout"]
    drain_timeout: float = _DEFAULTS["drain_timeout"]
    backend: str = _DEFAULTS["backend"]
    offline: bool = _DEFAULTS["offline"]
    call_timeout: float = _DEFAULTS["call_timeout"]
    metrics_port: int | None = _DEFAULTS["metrics_port"]
    metrics_host: str = _DEFAULTS["metrics_host"]
    keep_sessions_days: float | None = _DEFAULTS["keep_sessions_days"]
    keep_sessions: int | None = _DEFAULTS["keep_sessions"]
    curve_secret_key: Path | None = _DEFAULTS["curve_secret_key"]
    allow_keys: Path | None = _DEFAULTS["allow_keys"]
    max_file_bytes: int = _DEFAULTS["max_file_bytes"]
    max_runs_per_key: int = _DEFAULTS["max_runs_per_key"]
    nonfinite: NonfinitePolicy = _DEFAULTS["nonfinite"]
    allow_pickled_figures: bool = _DEFAULTS["allow_pickled_figures"]

    def __post_init__(self) -> None:
        if (self.curve_secret_key is None) != (self.allow_keys is None):
            raise ConfigError(
                f"{ENV_CURVE_SECRET_KEY} (--curve-secret-key) and {ENV_ALLOW_KEYS} (--allow-keys) "
                "go together: the secret key encrypts, the allow-list says who may connect"
            )
        if self.allow_pickled_figures and self.curve_secret_key is None and not local_only(self.bind):
            raise ConfigError(
                f"{ENV_ALLOW_PICKLED_FIGURES} (--allow-pickled-figures) with --bind {self.bind}: unpickling "
                "a figure runs its sender's code, so it needs authenticated producers (CurveZMQ: "
                "--curve-secret-key and --allow-keys) or a bind only this machine reaches "
                "(ipc://..., tcp://127.0.0.1:...)"
            )

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, flags: bool = False, **overrides: Any
    ) -> CollectorConfig:
        """Build a config: explicit ``overrides`` > ``environ`` (default ``os.environ``) > default.

        An override of ``None`` and an empty variable count as not given, so a CLI can pass
        every flag through. A bad value's message names where it came from: the variable, or
        the override (its flag when ``flags``: the command line gave the overrides).

        Raises:
            ConfigError: a value is malformed or out of range, or an override is unknown.

        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for setting in SETTINGS:
            raw, source = overrides.pop(setting.name, None), setting.flag if flags else setting.name
            if raw is None:
                raw, source = env.get(setting.env, "").strip() or None, setting.env
            if raw is not None:
                values[setting.name] = _parse(source, raw, setting.parse)
        if overrides:
            raise ConfigError(f"unknown collector settings: {', '.join(sorted(overrides))}")
        return cls(**values)


def local_only(bind: str) -> bool:
    """Whether only processes on this machine can reach ``bind`` (ipc, inproc, loopback TCP)."""
    if bind.startswith(("ipc://", "inproc://")):
        return True
    host = bind.removeprefix("tcp://").rsplit(":", 1)[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


def read_setting(setting: Setting, given: str | None, environ: Mapping[str, str] | None = None) -> Any:
    """One setting outside :class:`CollectorConfig` (``LOG_SETTINGS``): ``given`` > variable > default.

    The variable's text goes through ``setting.flag_type`` first, as a flag's would.

    Raises:
        ConfigError: the value is not one ``setting.parse`` accepts; the message names the flag
            (``given``) or the variable.

    """
    env = os.environ if environ is None else environ
    raw = given or env.get(setting.env, "").strip()
    if not raw:
        return setting.default
    return _parse(setting.flag if given else setting.env, setting.flag_type(raw), setting.parse)


def docs_table(settings: tuple[Setting, ...] = SETTINGS + LOG_SETTINGS) -> str:
    """The Markdown table of ``docs/configuration.md`` for ``settings`` (a test keeps them equal)."""
    rows = ["| variable | flag | default | what |", "|---|---|---|---|"]
    for setting in settings:
        shown = setting.shown if setting.default is None or setting.unit else f"`{setting.shown}`"
        what = f"{setting.help}. {setting.doc}" if setting.doc else setting.help
        rows.append(f"| `{setting.env}` | `{setting.flag}` | {shown} | {what} |")
    return "\n".join(rows) + "\n"
