"""The ``Run`` API that a training loop calls: one ClearML task's worth of events.

Every method is a hook on the training thread: it checks and converts its arguments, builds one
event and hands it to the process's :class:`~producer.transport.client.Client`, and returns in
microseconds. It never raises into the caller: a bad argument, a closed run or a forked child
is logged once per (method, reason), counted, and the call does nothing. Files are neither read
nor stat'ed here; the writer thread copies them into the outbox.
"""

from __future__ import annotations

import functools
import logging
import operator
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Concatenate, Final, ParamSpec

from producer import preemption
from producer.config import ProducerConfig
from producer.context import cheap_context
from producer.once import Once
from producer.transport.client import Client, get_client
from producer.transport.outbox import valid_run_dir
from producer.transport.runstate import RunState
from producer.wire import protocol

log = logging.getLogger(__name__)

_P = ParamSpec("_P")
_LEVELS: Final[tuple[protocol.TextLevel, ...]] = ("debug", "info", "warning", "error")
_STATUSES: Final[tuple[protocol.RunStatus, ...]] = ("completed", "failed", "aborted")
_MAX_NAME: Final = 255
_MAX_TEXT_BYTES: Final = 1024 * 1024
_MIN_ITERATION: Final = -(2**31)
_MAX_ITERATION: Final = 2**62
#: Stands in for the FileRef the writer thread fills in after copying the file.
_PENDING_FILE: Final = protocol.FileRef(sha256="0" * 64, size=0, name="pending")


class _CallError(Exception):
    """A call that cannot become an event; ``key`` groups repeats of the same mistake."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def _hook(method: Callable[Concatenate[Run, _P], None]) -> Callable[Concatenate[Run, _P], None]:
    """Make a Run method safe to call from a training loop: it never raises."""

    @functools.wraps(method)
    def safe(self: Run, /, *args: _P.args, **kwargs: _P.kwargs) -> None:
        try:
            method(self, *args, **kwargs)
        except _CallError as exc:
            self._reject(method.__name__, exc.key, str(exc))
        except Exception as exc:  # noqa: BLE001 - a logging hook must never stop training
            self._reject(method.__name__, type(exc).__name__, f"unexpected error: {exc!r}")

    return safe


class Run:
    """One training run, reported into its own ClearML task by the collector.

    Args:
        project: ClearML project name.
        name: ClearML task name.
        tags: task tags.
        task_type: ClearML task type.
        hyperparams: ``{section: {name: value}}``; top-level values that are not mappings go to
            the ``General`` section.
        endpoint: collector endpoint (default: ``CLEARML_RELAY_ENDPOINT``).
        spool_dir: outbox directory (default: ``CLEARML_RELAY_SPOOL_DIR``).
        flush_timeout: seconds ``close`` waits for acks (default: ``CLEARML_RELAY_FLUSH_TIMEOUT``).
        run_id: the run's id (default: a new uuid4 hex); unique per run. The same id from
            another outbox (another spool or machine) is refused by the collector: the events
            stay in this outbox and ``close()`` returns False (see ``producer.wire.protocol``).
        task_id: report into this existing ClearML task.
        resume_run: continue the ClearML task of this earlier run id.

    A configuration error does not raise either: it is logged and the run does nothing.

    """

    def __init__(
        self,
        project: str,
        name: str,
        *,
        tags: Iterable[str] = (),
        task_type: str = "training",
        hyperparams: Mapping[str, Any] | None = None,
        endpoint: str | None = None,
        spool_dir: str | os.PathLike[str] | None = None,
        flush_timeout: float | None = None,
        run_id: str | None = None,
        task_id: str | None = None,
        resume_run: str | None = None,
    ) -> None:
        self._id = run_id if isinstance(run_id, str) and run_id else uuid.uuid4().hex
        self._client: Client | None = None
        self._state: RunState | None = None
        self._closed = False
        self._once = Once()  # per run: each run reports each kind of mistake once
        self._flush_timeout: float | None = None
        try:
            config = ProducerConfig.from_env(
                endpoint=endpoint, spool_dir=spool_dir, flush_timeout=flush_timeout
            )
            self._flush_timeout = config.flush_timeout
            opening = protocol.RunOpen(
                run=_run_id(self._id),
                seq=1,
                ts=time.time(),
                project=_name("project", project),
                name=_name("name", name),
                tags=[_name("tags", t) for t in ([tags] if isinstance(tags, str) else tags)],
                task_type=_name("task_type", task_type),
                hyperparams=_sections(hyperparams or {}),
                context=cheap_context(),
                task_id=task_id,
                resume_run=resume_run,
            )
            protocol.decode_event(protocol.encode(opening))  # what the collector would refuse
            client = get_client(config)
            state = client.open_run(self._id)
            problem = "" if state else f"run id {self._id!r} is already in use in this process"
        except Exception as exc:  # noqa: BLE001 - the constructor is a hook too
            problem = exc.reason if isinstance(exc, protocol.ProtocolError) else str(exc)
        if problem or state is None:
            log.error("clearml-relay: run %s is disabled, its events are not recorded: %s", self._id, problem)
            return
        self._client, self._state = client, state
        client.submit(state, opening)
        with _open_lock:
            _open_runs[self] = None
        preemption.install(abort_open_runs)

    @property
    def id(self) -> str:
        """The run id: names the outbox and the collector's run."""
        return self._id

    @property
    def client(self) -> Client | None:
        """The client delivering this run (None when the run is disabled); see ``Client.stats``."""
        return self._client

    # ----------------------------------------------------------------------------- internals

    def _reject(self, method: str, key: str, message: str) -> None:
        if self._client is not None and os.getpid() == self._client.pid:
            self._client.count("api_rejected")
        # A state (closed, forked, disabled) is reported once; a bad argument once per method.
        once_key = key if key in ("closed", "forked", "disabled") else (method, key)
        self._once.log(log, logging.WARNING, once_key, "clearml-relay: Run.%s ignored: %s", method, message)

    def _emit(self, event: protocol.Event, source: str | None = None) -> None:
        client, state = self._ready()
        client.submit(state, event, source)

    def _ready(self) -> tuple[Client, RunState]:
        """The client and run state to hand events to, or a _CallError saying why not."""
        client, state = self._client, self._state
        if client is None or state is None:
            raise _CallError("disabled", "the run is disabled (see the error logged when it was created)")
        if os.getpid() != client.pid:
            # The parent's locks and sockets are not ours: touch nothing.
            raise _CallError("forked", "called in a forked child process; only the parent reports")
        if self._closed:
            raise _CallError("closed", "the run is closed")
        return client, state

    # ------------------------------------------------------------------------------- events

    @_hook
    def scalar(self, title: str, series: str, value: float, iteration: int) -> None:
        """Report one point of a scalar curve."""
        self._emit(
            protocol.Scalar(
                run=self._id,
                seq=1,
                ts=time.time(),
                title=_name("title", title),
                series=_name("series", series),
                value=_number("value", value),
                iteration=_iteration(iteration),
            )
        )

    @_hook
    def scalars(self, title: str, values: Mapping[str, float], iteration: int) -> None:
        """Report one point of several series of one plot, in a single hand-off.

        Cheaper than one :meth:`scalar` call per series (hooks report losses and learning rates
        this way). A bad title, series or value rejects the whole call (logged once).
        """
        ts, title, iteration = time.time(), _name("title", title), _iteration(iteration)
        events: list[protocol.Event] = [
            protocol.Scalar(
                run=self._id,
                seq=1,
                ts=ts,
                title=title,
                series=_name("series", series),
                value=_number("value", value),
                iteration=iteration,
            )
            for series, value in values.items()
        ]
        client, state = self._ready()
        client.submit_all(state, events)

    @_hook
    def single_value(self, name: str, value: float) -> None:
        """Report a summary value (ClearML's single values table)."""
        event = protocol.SingleValue(
            run=self._id, seq=1, ts=time.time(), name=_name("name", name), value=_number("value", value)
        )
        self._emit(event)

    @_hook
    def hyperparams(self, section: str, values: Mapping[str, Any]) -> None:
        """Report (more) hyperparameters of one section."""
        event = protocol.Hyperparams(
            run=self._id, seq=1, ts=time.time(), section=_name("section", section), values=_params(values)
        )
        self._emit(event)

    @_hook
    def image(self, title: str, series: str, iteration: int, path: str | os.PathLike[str]) -> None:
        """Report a debug image file; it is copied shortly after the call, not during it."""
        self._emit_file(protocol.DebugImage, title, series, iteration, path)

    @_hook
    def plot(self, title: str, series: str, iteration: int, path: str | os.PathLike[str]) -> None:
        """Report a rendered plot (an image file) for the task's plots section."""
        self._emit_file(protocol.Plot, title, series, iteration, path)

    def _emit_file(
        self,
        kind: type[protocol.DebugImage | protocol.Plot],
        title: str,
        series: str,
        iteration: int,
        path: str | os.PathLike[str],
    ) -> None:
        source = _path(path)
        event = kind(
            run=self._id,
            seq=1,
            ts=time.time(),
            title=_name("title", title),
            series=_name("series", series),
            iteration=_iteration(iteration),
            file=_PENDING_FILE,
        )
        self._emit(event, source)

    @_hook
    def model(
        self, path: str | os.PathLike[str], name: str | None = None, framework: str = "PyTorch"
    ) -> None:
        """Report a model file (weights) as the task's output model."""
        source = _path(path)
        event = protocol.Model(
            run=self._id,
            seq=1,
            ts=time.time(),
            name=_name("name", name if name is not None else os.path.basename(source) or "model"),
            file=_PENDING_FILE,
            framework=_name("framework", framework),
        )
        self._emit(event, source)

    @_hook
    def text(self, text: str, level: str = "info") -> None:
        """Report console text."""
        if level not in _LEVELS:
            raise _CallError("level", f"level must be one of {', '.join(_LEVELS)}, got {level!r:.80}")
        body = text if isinstance(text, str) else str(text)
        if len(body) > _MAX_TEXT_BYTES // 4:  # only long texts can exceed the byte limit
            body = body.encode("utf-8", "replace")[:_MAX_TEXT_BYTES].decode("utf-8", "ignore")
        self._emit(protocol.ConsoleText(run=self._id, seq=1, ts=time.time(), text=body, level=level))

    @_hook
    def stats(self, values: Mapping[str, float], iteration: int | None = None) -> None:
        """Report machine statistics (GPU/CPU utilisation, memory...)."""
        if not isinstance(values, Mapping):
            raise _CallError("values-type", f"values must be a mapping of name to number, got {values!r:.80}")
        converted = {_name("values key", k): _number(f"values[{k!r}]", v) for k, v in values.items()}
        event = protocol.MachineStats(
            run=self._id,
            seq=1,
            ts=time.time(),
            values=converted,
            iteration=None if iteration is None else _iteration(iteration),
        )
        self._emit(event)

    # ---------------------------------------------------------------------------- lifecycle

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until the collector holds every event of this run so far.

        Args:
            timeout: seconds to wait at most (default: the flush timeout).

        Returns:
            True when everything was acknowledged in time.

        """
        try:
            client, state = self._client, self._state
            if client is None or state is None or os.getpid() != client.pid:
                return False
            return client.flush(self._flush_timeout if timeout is None else float(timeout), runs=[state])
        except Exception as exc:  # noqa: BLE001 - flush is called from hooks too
            self._reject("flush", type(exc).__name__, f"unexpected error: {exc!r}")
            return False

    def close(self, status: str = "completed", error: str = "") -> bool:
        """End the run and wait (at most the flush timeout) for the collector to hold it all.

        Idempotent: later calls only wait again.

        Args:
            status: ``completed``, ``failed`` or ``aborted``.
            error: what went wrong, for a failed run.

        Returns:
            True when every event of the run was acknowledged; False otherwise: not yet
            (the events stay in the outbox and are delivered later), refused by the collector
            (kept in the outbox), or lost on this side (its disk, its bounds; each is logged).

        """
        try:
            client, state = self._client, self._state
            if client is None or state is None:
                return False
            if os.getpid() != client.pid:
                self._reject("close", "forked", "called in a forked child process; only the parent reports")
                return False
            self._end(client, state, self._status(status), str(error))
            return self.flush()
        except Exception as exc:  # noqa: BLE001 - close runs in teardown hooks and at exit
            self._reject("close", type(exc).__name__, f"unexpected error: {exc!r}")
            return False

    def _end(self, client: Client, state: RunState, status: protocol.RunStatus, error: str) -> None:
        """Hand the RunClose to the client, once."""
        if not self._closed:
            client.submit(
                state, protocol.RunClose(run=self._id, seq=1, ts=time.time(), status=status, error=error)
            )
            self._closed = state.closing = True
        with _open_lock:
            _open_runs.pop(self, None)

    def _status(self, status: str) -> protocol.RunStatus:
        for known in _STATUSES:
            if status == known:
                return known
        self._reject("close", "status", f"status must be one of {', '.join(_STATUSES)}, got {status!r:.80}")
        return "failed"

    def __enter__(self) -> Run:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # Returning None lets the caller's exception propagate untouched.
        if exc is None:
            self.close()
        elif isinstance(exc, KeyboardInterrupt):
            self.close("aborted", "KeyboardInterrupt")
        else:
            self.close("failed", f"{type(exc).__name__}: {exc}")

    def __repr__(self) -> str:
        return f"Run(id={self._id!r}, closed={self._closed})"


# ------------------------------------------------------------------------------ preemption

# Runs of this process not closed yet, in creation order (what SIGTERM ends). Reentrant: the
# SIGTERM handler runs on the main thread, maybe while that thread is inside this lock.
_open_lock = threading.RLock()
_open_runs: dict[Run, None] = {}


def abort_open_runs(reason: str) -> None:
    """(SIGTERM handler.) End every open run of this process as aborted; flush them, bounded."""
    with _open_lock:
        runs = list(_open_runs)
    pending: dict[Client, list[RunState]] = {}
    timeout = 0.0
    for run in runs:
        client, state = run._client, run._state
        if client is None or state is None or os.getpid() != client.pid:
            continue
        run._end(client, state, "aborted", reason)
        pending.setdefault(client, []).append(state)
        timeout = max(timeout, run._flush_timeout or 0.0)
    if not pending:
        return
    log.warning("clearml-relay: %s: ending %d run(s) as aborted", reason, len(runs))
    deadline = time.monotonic() + timeout
    for client, states in pending.items():
        if not client.flush(max(0.0, deadline - time.monotonic()), runs=states):
            for line in client.undelivered_report():
                log.warning("%s", line)


# ------------------------------------------------------------------------------ conversions


def _run_id(value: str) -> str:
    # The run id names a directory in the spool: "..", "." or ".x" must not pass.
    if not valid_run_dir(value):
        raise _CallError(
            "run_id", f"run_id must be 1-64 of [A-Za-z0-9_.-], not starting with '.', got {value!r:.80}"
        )
    return value


def _name(arg: str, value: object) -> str:
    if not isinstance(value, str):
        raise _CallError(f"{arg}-type", f"{arg} must be a string, got {type(value).__name__} {value!r:.80}")
    if not value:
        raise _CallError(f"{arg}-empty", f"{arg} must not be empty")
    return value[:_MAX_NAME]


def _number(arg: str, value: object) -> float:
    if type(value) is float:
        return value
    if isinstance(value, (str, bytes)):
        raise _CallError(f"{arg}-type", f"{arg} must be a real number, got the string {value!r:.80}")
    try:
        return float(value)  # type: ignore[arg-type]  # numpy/torch scalars convert too
    except Exception:  # noqa: BLE001 - torch raises RuntimeError for multi-element tensors
        raise _CallError(
            f"{arg}-type", f"{arg} must be a real number, got {type(value).__name__} {value!r:.80}"
        ) from None


def _iteration(value: object) -> int:
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        if isinstance(value, float) and value.is_integer():
            number = int(value)
        else:
            raise _CallError(
                "iteration-type", f"iteration must be an integer, got {type(value).__name__} {value!r:.80}"
            ) from None
    if not _MIN_ITERATION <= number <= _MAX_ITERATION:
        raise _CallError("iteration-range", f"iteration must be in [-2**31, 2**62], got {number}")
    return number


def _path(value: object) -> str:
    try:
        return os.fspath(value)  # type: ignore[call-overload,no-any-return]
    except TypeError:
        raise _CallError(
            "path-type", f"path must be a str or os.PathLike, got {type(value).__name__}"
        ) from None


def _param(value: object) -> protocol.ParamValue:
    if value is None or isinstance(value, (str, bool, float)):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**64 else str(value)  # msgpack's integer range
    return str(value)


def _params(values: object) -> dict[str, protocol.ParamValue]:
    if not isinstance(values, Mapping):
        raise _CallError("values-type", f"values must be a mapping, got {type(values).__name__}")
    return {str(k)[:_MAX_NAME] or "_": _param(v) for k, v in values.items()}


def _sections(hyperparams: Mapping[str, Any]) -> dict[str, dict[str, protocol.ParamValue]]:
    sections: dict[str, dict[str, protocol.ParamValue]] = {}
    for key, value in hyperparams.items():
        if isinstance(value, Mapping):
            sections.setdefault(str(key)[:_MAX_NAME] or "_", {}).update(_params(value))
        else:
            sections.setdefault("General", {})[str(key)[:_MAX_NAME] or "_"] = _param(value)
    return sections
