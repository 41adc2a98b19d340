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
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Concatenate, Final, ParamSpec

from producer import arguments as check
from producer import preemption
from producer.arguments import CallError
from producer.config import ProducerConfig
from producer.context import cheap_context
from producer.logger import base as logger_base
from producer.logger.logger import Logger
from producer.logger.task import TaskCalls
from producer.once import Once
from producer.transport.client import Client, get_client
from producer.transport.payload import Source
from producer.transport.runstate import RunState
from producer.wire import protocol

log = logging.getLogger(__name__)

_P = ParamSpec("_P")
_LEVELS: Final[tuple[protocol.TextLevel, ...]] = ("debug", "info", "warning", "error")
_STATUSES: Final[tuple[protocol.RunStatus, ...]] = ("completed", "failed", "aborted")
_MAX_TEXT_BYTES: Final = 1024 * 1024
#: Stands in for the FileRef the writer thread fills in after copying the file.
_PENDING_FILE: Final = protocol.FileRef(sha256="0" * 64, size=0, name="pending")


def _hook(method: Callable[Concatenate[Run, _P], None]) -> Callable[Concatenate[Run, _P], None]:
    """Make a Run method safe to call from a training loop: it never raises."""

    @functools.wraps(method)
    def safe(self: Run, /, *args: _P.args, **kwargs: _P.kwargs) -> None:
        try:
            method(self, *args, **kwargs)
        except CallError as exc:
            self._reject(method.__name__, exc.key, str(exc))
        except Exception as exc:  # noqa: BLE001 - a logging hook must never stop training
            self._reject(method.__name__, type(exc).__name__, f"unexpected error: {exc!r}")

    return safe


class Run(TaskCalls):
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

    Raises:
        ValueError: a setting or argument is invalid (the message names the variable or
            argument), or ``run_id`` is in use in this process; nothing has been sent then. When
            the outbox cannot be made (an unwritable spool), the error is logged instead and the
            run does nothing: ``client`` is None and ``close()`` returns False.

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
        self._figures = "render"
        self._logger: Logger | None = None
        try:
            config = ProducerConfig.from_env(
                endpoint=endpoint, spool_dir=spool_dir, flush_timeout=flush_timeout
            )
            self._flush_timeout, self._figures = config.flush_timeout, config.figures
            opening = protocol.RunOpen(
                run=check.run_id(self._id),
                seq=1,
                ts=time.time(),
                project=check.name("project", project),
                name=check.name("name", name),
                tags=[check.name("tags", t) for t in ([tags] if isinstance(tags, str) else tags)],
                task_type=check.name("task_type", task_type),
                hyperparams=check.sections(hyperparams or {}),
                context=cheap_context(),
                task_id=task_id,
                resume_run=resume_run,
            )
            protocol.decode_event(protocol.encode(opening))  # what the collector would refuse
        except (CallError, protocol.ProtocolError) as exc:  # a mistake of the caller's: before any training
            raise ValueError(exc.reason if isinstance(exc, protocol.ProtocolError) else str(exc)) from None
        try:
            client = get_client(config.for_run(self._id))
            state = client.open_run(self._id)
        except Exception as exc:  # noqa: BLE001 - the spool cannot be written: the run does nothing
            message = "clearml-relay: run %s is disabled, its events are not recorded: %s"
            log.error(message, self._id, exc)  # noqa: TRY400 - the reason, not a traceback
            return
        if state is None:
            raise ValueError(f"run_id {self._id!r} is already in use in this process")
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
    def logger(self) -> Logger:
        """The run's ``clearml.Logger``-compatible API (see :class:`producer.logger.Logger`)."""
        if self._logger is None:
            self._logger = Logger(self)
        return self._logger

    def get_logger(self) -> Logger:
        """``Task.get_logger()``: the same as :attr:`logger`."""
        return self.logger

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
        where = method if "." in method else f"Run.{method}"
        self._once.log(log, logging.WARNING, once_key, "clearml-relay: %s ignored: %s", where, message)

    def _emit(self, event: protocol.Event, source: Source = None) -> None:
        client, state = self._ready()
        client.submit(state, event, source)

    def _ready(self) -> tuple[Client, RunState]:
        """The client and run state to hand events to, or a CallError saying why not."""
        client, state = self._client, self._state
        if client is None or state is None:
            raise CallError("disabled", "the run is disabled (see the error logged when it was created)")
        if os.getpid() != client.pid:
            # The parent's locks and sockets are not ours: touch nothing.
            raise CallError("forked", "called in a forked child process; only the parent reports")
        if self._closed:
            raise CallError("closed", "the run is closed")
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
                title=check.name("title", title),
                series=check.name("series", series),
                value=check.number("value", value),
                iteration=check.iteration(iteration),
            )
        )

    @_hook
    def scalars(self, title: str, values: Mapping[str, float], iteration: int) -> None:
        """Report one point of several series of one plot, in a single hand-off.

        Cheaper than one :meth:`scalar` call per series (hooks report losses and learning rates
        this way). A bad title, series or value rejects the whole call (logged once).
        """
        ts, title, iteration = time.time(), check.name("title", title), check.iteration(iteration)
        events: list[protocol.Event] = [
            protocol.Scalar(
                run=self._id,
                seq=1,
                ts=ts,
                title=title,
                series=check.name("series", series),
                value=check.number("value", value),
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
            run=self._id,
            seq=1,
            ts=time.time(),
            name=check.name("name", name),
            value=check.number("value", value),
        )
        self._emit(event)

    @_hook
    def hyperparams(self, section: str, values: Mapping[str, Any]) -> None:
        """Report (more) hyperparameters of one section."""
        event = protocol.Hyperparams(
            run=self._id,
            seq=1,
            ts=time.time(),
            section=check.name("section", section),
            values=check.params(values),
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
        source = check.path(path)
        event = kind(
            run=self._id,
            seq=1,
            ts=time.time(),
            title=check.name("title", title),
            series=check.name("series", series),
            iteration=check.iteration(iteration),
            file=_PENDING_FILE,
        )
        self._emit(event, source)

    @_hook
    def model(
        self, path: str | os.PathLike[str], name: str | None = None, framework: str = "PyTorch"
    ) -> None:
        """Report a model file (weights) as the task's output model."""
        source = check.path(path)
        event = protocol.Model(
            run=self._id,
            seq=1,
            ts=time.time(),
            name=check.name("name", name if name is not None else os.path.basename(source) or "model"),
            file=_PENDING_FILE,
            framework=check.name("framework", framework),
        )
        self._emit(event, source)

    @_hook
    def text(self, text: str, level: str = "info") -> None:
        """Report console text."""
        if level not in _LEVELS:
            raise CallError("level", f"level must be one of {', '.join(_LEVELS)}, got {level!r:.80}")
        body = text if isinstance(text, str) else str(text)
        if len(body) > _MAX_TEXT_BYTES // 4:  # only long texts can exceed the byte limit
            body = body.encode("utf-8", "replace")[:_MAX_TEXT_BYTES].decode("utf-8", "ignore")
        self._emit(protocol.ConsoleText(run=self._id, seq=1, ts=time.time(), text=body, level=level))

    @_hook
    def stats(self, values: Mapping[str, float], iteration: int | None = None) -> None:
        """Report machine statistics (GPU/CPU utilisation, memory...)."""
        if not isinstance(values, Mapping):
            raise CallError("values-type", f"values must be a mapping of name to number, got {values!r:.80}")
        converted = {
            check.name("values key", k): check.number(f"values[{k!r}]", v) for k, v in values.items()
        }
        event = protocol.MachineStats(
            run=self._id,
            seq=1,
            ts=time.time(),
            values=converted,
            iteration=None if iteration is None else check.iteration(iteration),
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

    def close(self, status: str = "completed", error: str = "", *, wait: bool = True) -> bool:
        """End the run and wait (at most the flush timeout) for the collector to hold it all.

        Idempotent: later calls only wait again.

        Args:
            status: ``completed``, ``failed`` or ``aborted``.
            error: what went wrong, for a failed run.
            wait: False hands the end over and returns at once (a trainer's end hook): the
                process's exit still waits, at most the flush timeout, for what is not acked.

        Returns:
            True when every event of the run was acknowledged; False otherwise: not yet
            (the events stay in the outbox and are delivered later; always so with
            ``wait=False``), refused by the collector (kept in the outbox), or lost on this
            side (its disk, its bounds; each is logged).

        """
        try:
            client, state = self._client, self._state
            if client is None or state is None:
                return False
            if os.getpid() != client.pid:
                self._reject("close", "forked", "called in a forked child process; only the parent reports")
                return False
            self._end(client, state, self._status(status), str(error))
            return self.flush() if wait else False
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


def _newest_run() -> Run | None:
    """The newest open run of this process (``Logger.current_logger()``'s)."""
    with _open_lock:
        return next(reversed(_open_runs), None)


logger_base.newest_run = _newest_run


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
