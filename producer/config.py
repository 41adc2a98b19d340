"""The producer's configuration: one table of every environment variable it reads.

:data:`SETTINGS` is the only place a producer setting is declared: each :class:`Setting` names
its variable (one prefix, ``CLEARML_RELAY_``), the :class:`ProducerConfig` field and argument it
sets, how a value is checked, its default and what it does. :meth:`ProducerConfig.from_env` reads
it, and so does the configuration table of ``docs/configuration.md`` (:func:`docs_table`, kept
equal by a test). Precedence is explicit argument > environment variable > default. The
environment alone must be enough (DDP children inherit the environment, not Python objects), so
every setting has a variable.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from producer.wire.curve import (
    ENV_KEY_FILE,
    ENV_PUBLIC_KEY,
    ENV_SECRET_KEY,
    ENV_SERVER_KEY,
    CurveKeys,
    KeySettingError,
    curve_from_env,
)
from producer.wire.endpoint import EndpointError, check_endpoints, home_of, problem
from producer.wire.sizes import EXPECTED as SIZE_EXPECTED
from producer.wire.sizes import SizeError, parse_size

ENV_PREFIX: Final = "CLEARML_RELAY_"
ENV_ENDPOINT: Final = ENV_PREFIX + "ENDPOINT"
ENV_SPOOL_DIR: Final = ENV_PREFIX + "SPOOL_DIR"
ENV_FLUSH_TIMEOUT: Final = ENV_PREFIX + "FLUSH_TIMEOUT"
ENV_MAX_PENDING: Final = ENV_PREFIX + "MAX_PENDING"
ENV_FSYNC: Final = ENV_PREFIX + "FSYNC"
ENV_MAX_OUTBOX_BYTES: Final = ENV_PREFIX + "MAX_OUTBOX_BYTES"
ENV_MAX_PENDING_BYTES: Final = ENV_PREFIX + "MAX_PENDING_BYTES"
ENV_FIGURES: Final = ENV_PREFIX + "FIGURES"
ENV_PLOTS: Final = ENV_PREFIX + "PLOTS"
# Read by the Ultralytics hooks (producer.integrations.ultralytics): they name the ClearML task of a training.
ENV_PROJECT: Final = ENV_PREFIX + "PROJECT"
ENV_TASK_NAME: Final = ENV_PREFIX + "TASK_NAME"

DEFAULT_ENDPOINT: Final = "tcp://127.0.0.1:5555"
DEFAULT_FLUSH_TIMEOUT: Final = 5.0
DEFAULT_MAX_PENDING: Final = 100_000
DEFAULT_MAX_OUTBOX_BYTES: Final = 20 * 1024**3
DEFAULT_MAX_PENDING_BYTES: Final = 1024**3

FsyncPolicy = Literal["close", "always", "never"]
FSYNC_POLICIES: Final[tuple[FsyncPolicy, ...]] = ("close", "always", "never")
#: How a matplotlib figure travels: drawn to PNG on the producer, or pickled for the collector.
FigureMode = Literal["render", "pickle"]
FIGURE_MODES: Final[tuple[FigureMode, ...]] = ("render", "pickle")
PlotsMode = Literal["trainer", "collector"]
PLOTS_MODES: Final[tuple[PlotsMode, ...]] = ("trainer", "collector")


class ConfigError(ValueError):
    """A setting with a bad value; the message names the variable (or argument) and the value."""


def _endpoint(name: str, raw: object) -> str:
    """One endpoint, or a comma-separated list of them (several collectors), normalized."""
    try:
        return ",".join(check_endpoints(raw))
    except EndpointError as exc:
        raise ConfigError(problem(name, raw, exc)) from None


def _path(name: str, raw: object) -> Path:
    try:
        return Path(os.fspath(raw)).expanduser()  # type: ignore[call-overload]
    except TypeError:
        raise ConfigError(problem(name, raw, "expected a directory path")) from None


def _seconds(name: str, raw: object) -> float:
    try:
        value = float(raw) if not isinstance(raw, bool) else math.nan  # type: ignore[arg-type]
    except (TypeError, ValueError):
        value = math.nan
    if not value >= 0 or math.isinf(value):  # also rejects NaN
        raise ConfigError(problem(name, raw, "expected a number of seconds >= 0"))
    return value


def _positive_int(name: str, raw: object) -> int:
    text = raw.strip().replace("_", "") if isinstance(raw, str) else ""
    value = raw if type(raw) is int else int(text) if text.isdigit() else 0  # bool is no count
    if value < 1:
        raise ConfigError(problem(name, raw, "expected a whole number >= 1"))
    return value


def _bytes(name: str, raw: object) -> int:
    try:
        value = parse_size(raw)
    except SizeError as exc:
        raise ConfigError(problem(name, raw, exc)) from None
    if value < 1:
        raise ConfigError(problem(name, raw, SIZE_EXPECTED))
    return value


def _fsync(name: str, raw: object) -> FsyncPolicy:
    value = raw.strip().lower() if isinstance(raw, str) else raw
    if value not in FSYNC_POLICIES:
        raise ConfigError(problem(name, raw, f"expected one of {', '.join(FSYNC_POLICIES)}"))
    return value


def _figures(name: str, raw: object) -> FigureMode:
    value = raw.strip().lower() if isinstance(raw, str) else raw
    if value not in FIGURE_MODES:
        raise ConfigError(problem(name, raw, f"expected one of {', '.join(FIGURE_MODES)}"))
    return value


def _plots(name: str, raw: object) -> PlotsMode:
    value = raw.strip().lower() if isinstance(raw, str) else raw
    if value not in PLOTS_MODES:
        raise ConfigError(problem(name, raw, f"expected one of {', '.join(PLOTS_MODES)}"))
    return value


@dataclass(frozen=True)
class Setting:
    """One environment variable of the producer, and what reads it.

    Attributes:
        env: The variable.
        help: What it does, in a few words (the docs' description).
        name: The :class:`ProducerConfig` field it sets; empty when another module reads it
            (``reader``).
        argument: The :meth:`ProducerConfig.from_env` argument that overrides it (``Run`` takes the
            same for ``endpoint``, ``spool_dir`` and ``flush_timeout``); empty: none.
        parse: Checks and converts a value; called with the variable's (or argument's) name and
            the value, raises :class:`ConfigError` naming both.
        default: The value when neither an argument nor the variable gives one.
        shown: The default as the docs write it, when it is not the value itself.
        reader: Who reads it: ``producer`` (this module), ``hooks`` (the Ultralytics hooks) or
            ``keys`` (:func:`producer.wire.curve.curve_from_env`, all four together).

    """

    env: str
    help: str
    name: str = ""
    argument: str = ""
    parse: Callable[[str, object], Any] | None = None
    default: Any = None
    shown: str = ""
    reader: str = "producer"

    def raw(self, environ: Mapping[str, str] | None = None) -> str:
        """The variable's text, stripped; empty when it is not set."""
        env = os.environ if environ is None else environ
        return env.get(self.env, "").strip()

    def value(self, given: object, environ: Mapping[str, str]) -> Any:
        """Explicit argument > environment variable > default, parsed and checked."""
        assert self.parse is not None, f"{self.env} is read by {self.reader}"
        if given is not None:
            # Name the argument, not the variable: that is where the bad value came from.
            return self.parse(self.argument or self.name, given)
        raw = self.raw(environ)
        return self.parse(self.env, raw) if raw else self.default


ENDPOINT: Final = Setting(
    ENV_ENDPOINT,
    "where the collector listens; a comma-separated list for several collectors (each run goes to one, "
    "by rendezvous hashing of its id)",
    name="endpoint",
    argument="endpoint",
    parse=_endpoint,
    default=DEFAULT_ENDPOINT,
)
SETTINGS: Final[tuple[Setting, ...]] = (
    ENDPOINT,
    Setting(ENV_SPOOL_DIR, "the durable outboxes, one per run", name="spool_dir", argument="spool_dir",
            parse=_path, shown="`$XDG_CACHE_HOME/clearml-relay/spool` (else `~/.cache/...`)"),
    Setting(ENV_FLUSH_TIMEOUT, "longest wait for the collector's acks at close / exit", name="flush_timeout",
            argument="flush_timeout", parse=_seconds, default=DEFAULT_FLUSH_TIMEOUT, shown="5 s"),
    Setting(ENV_MAX_PENDING, "hand-off queue bound (overflow is dropped, counted, logged)",
            name="max_pending", argument="max_pending", parse=_positive_int, default=DEFAULT_MAX_PENDING),
    Setting(ENV_FSYNC, "outbox fsync policy: at `close`/`flush`, `always` (every batch) or `never`",
            name="fsync", argument="fsync", parse=_fsync, default="close"),
    Setting(ENV_MAX_OUTBOX_BYTES, "disk one run's outbox may hold unacknowledged; beyond, its new events are "
            "dropped (counted, logged once)", name="max_outbox_bytes", parse=_bytes,
            default=DEFAULT_MAX_OUTBOX_BYTES, shown="20 GiB"),
    Setting(ENV_MAX_PENDING_BYTES, "memory the snapshots of Logger calls (arrays, figures, tables) may hold "
            "while they wait for the writer thread; beyond, calls are dropped (counted, logged once)",
            name="max_pending_bytes", parse=_bytes, default=DEFAULT_MAX_PENDING_BYTES, shown="1 GiB"),
    Setting(ENV_FIGURES, "how `report_matplotlib_figure` travels: `render` (drawn to PNG by the producer's "
            "writer thread) or `pickle` (drawn by the collector, interactive; it must allow pickled figures)",
            name="figures", parse=_figures, default="render"),
    Setting(ENV_PLOTS, "who draws an Ultralytics training's plots (with `plots=True`): `trainer` "
            "(Ultralytics, as without the relay) or `collector` (from raw data; the trainer draws only the "
            "image mosaics)",
            argument="plots", parse=_plots, default="trainer", reader="hooks"),
    Setting(ENV_PROJECT, "ClearML project of a training", reader="hooks",
            shown="the trainer's `project`, else `Ultralytics`"),
    Setting(ENV_TASK_NAME, "ClearML task name of a training", reader="hooks", shown="the trainer's `name`"),
    Setting(ENV_SERVER_KEY, "the collector's public key, Z85 text or its `.key` file (set: encrypted "
            "connections)", reader="keys", shown="none (plain)"),
    Setting(ENV_KEY_FILE, "this producer's `.key_secret` file (its key pair)", reader="keys", shown="none"),
    Setting(ENV_PUBLIC_KEY, "this producer's public key as Z85 text (instead of the key file)", reader="keys",
            shown="none"),
    Setting(ENV_SECRET_KEY, "this producer's secret key as Z85 text (instead of the key file)", reader="keys",
            shown="none"),
)  # fmt: skip
"""Every variable the producer reads: :class:`ProducerConfig`'s, the hooks' and the CurveZMQ keys."""


def setting(env: str) -> Setting:
    """The table's entry for the variable ``env``."""
    return next(s for s in SETTINGS if s.env == env)


def default_spool_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CACHE_HOME/clearml-relay/spool``, or ``~/.cache/clearml-relay/spool``."""
    env = os.environ if environ is None else environ
    cache = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "clearml-relay" / "spool"


@dataclass(frozen=True)
class ProducerConfig:
    """Settings of one producer client.

    Attributes:
        endpoint: ZeroMQ endpoint of the collector's ROUTER socket; a comma-separated list names
            several collectors, and each run goes to one of them (:meth:`for_run`).
        spool_dir: directory holding one durable outbox per run.
        flush_timeout: seconds ``close``/exit wait for the collector's acks before giving up
            (the unacked events stay in the outbox).
        max_pending: bound of the hand-off queue between callers and the writer thread; events
            beyond it are dropped and counted, callers never block.
        fsync: ``close`` (fsync the outbox on flush/close), ``always`` (after every written
            batch) or ``never``.
        max_outbox_bytes: disk one run's outbox may hold (events and copied files not yet
            acknowledged); beyond it new events of the run are dropped, counted and logged once.
        max_pending_bytes: memory the snapshots handed to the writer thread (Logger arrays,
            figures, tables) may hold; beyond it such calls are dropped, counted and logged once.
        figures: ``render`` (a figure is drawn to PNG by the writer thread) or ``pickle`` (its
            pickle goes to the collector, which must allow it: see docs/logger.md).
        curve: CurveZMQ keys (``CLEARML_RELAY_SERVER_KEY`` and this producer's key pair, see
            :mod:`producer.wire.curve`); None: a plain connection.
        pinned: ``endpoint`` is one run's home among several collectors (:meth:`for_run`): its
            outboxes record it, and only a client of that collector delivers them. With a single
            collector nothing is recorded, and any client delivers a leftover outbox (also after
            the collector's address changed).

    """

    endpoint: str = DEFAULT_ENDPOINT
    spool_dir: Path = field(default_factory=default_spool_dir)
    flush_timeout: float = DEFAULT_FLUSH_TIMEOUT
    max_pending: int = DEFAULT_MAX_PENDING
    fsync: FsyncPolicy = "close"
    max_outbox_bytes: int = DEFAULT_MAX_OUTBOX_BYTES
    max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES
    figures: FigureMode = "render"
    curve: CurveKeys | None = None
    pinned: bool = False

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
        given: dict[str, object] = {
            "endpoint": endpoint,
            "spool_dir": spool_dir,
            "flush_timeout": flush_timeout,
            "max_pending": max_pending,
            "fsync": fsync,
        }
        values = {s.name: s.value(given.get(s.argument), env) for s in SETTINGS if s.reader == "producer"}
        # The spool's default depends on the environment it is read from (XDG_CACHE_HOME).
        values["spool_dir"] = values["spool_dir"] or default_spool_dir(env)
        return cls(**values, curve=curve)

    @property
    def endpoints(self) -> tuple[str, ...]:
        """The collectors ``endpoint`` names (a comma-separated list names several)."""
        return tuple(self.endpoint.split(","))

    def for_run(self, run_id: str) -> ProducerConfig:
        """The config of one run: ``endpoint`` is the one collector ``run_id`` goes to (its home)."""
        endpoints = self.endpoints
        if len(endpoints) == 1:
            return self
        return dataclasses.replace(self, endpoint=home_of(run_id, endpoints), pinned=True)


def docs_table(settings: tuple[Setting, ...] = SETTINGS) -> str:
    """The Markdown table of ``docs/configuration.md`` for ``settings`` (a test keeps them equal)."""
    rows = ["| variable | argument | default | what |", "|---|---|---|---|"]
    for setting in settings:
        shown = setting.shown or f"`{setting.default}`"
        argument = f"`{setting.argument}`" if setting.argument else "-"
        what = {"hooks": "Ultralytics hooks: ", "keys": "CurveZMQ: "}.get(setting.reader, "") + setting.help
        rows.append(f"| `{setting.env}` | {argument} | {shown} | {what} |")
    return "\n".join(rows) + "\n"
