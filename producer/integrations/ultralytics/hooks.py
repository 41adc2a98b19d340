"""``RelayHooks``: the Ultralytics callbacks, and what each does on the training thread.

Every hook is timed, runs for rank 0 only (``RANK``, or ``LOCAL_RANK`` when ``RANK`` is unset,
in {-1, 0}), never raises into the trainer (a failure is logged once per hook and exception type)
and never waits. ``on_pretrain_routine_start`` runs before the integration callbacks that the
trainer appends to its lists in its ``__init__``, and removes Ultralytics' own ClearML callbacks
from them. DDP children receive the hooks pickled with the trainer's callbacks: a
:class:`RelayHooks` pickles as its options only.
"""

from __future__ import annotations

import collections
import logging
import os
import time
from collections.abc import Callable, Iterable
from typing import Any, Final

from producer import preemption
from producer.config import ENV_PLOTS, ConfigError, ProducerConfig, setting
from producer.integrations.console import Console, Router, router
from producer.integrations.process import main_rank
from producer.integrations.reporter import not_recorded
from producer.integrations.ultralytics import trainer as ul
from producer.integrations.ultralytics.session import ULTRALYTICS_LOGGER, Session
from producer.integrations.worker import Worker, worker
from producer.once import Once
from producer.run import Run, abort_open_runs

log = logging.getLogger(__name__)

DEFAULT_STATS_INTERVAL: Final = 5.0
DEFAULT_LATE_FILES_TIMEOUT: Final = 10.0
EVENTS: Final = (
    "on_pretrain_routine_start", "on_train_epoch_end", "on_val_end", "on_fit_epoch_end",
    "on_train_end", "teardown",
)  # fmt: skip
_TIMINGS_KEPT: Final = 10_000


class RelayHooks:
    """Ultralytics callbacks that report each training of a model as one clearml-relay run.

    Args:
        project: ClearML project (default: ``CLEARML_RELAY_PROJECT``, else the trainer's
            ``args.project`` or ``"Ultralytics"``, as the built-in callback does).
        name: task name (default: ``CLEARML_RELAY_TASK_NAME``, else ``args.name``).
        tags: task tags (default ``["Ultralytics"]``).
        endpoint: collector endpoint (default: ``CLEARML_RELAY_ENDPOINT``).
        spool_dir: outbox directory (default: ``CLEARML_RELAY_SPOOL_DIR``).
        flush_timeout: seconds the end of a run waits for the collector's acks.
        stats_interval: seconds between two machine statistics samples (0: none).
        late_files_timeout: seconds the end of a run waits for images still being written.
        plots: who draws a training's plots when its ``plots`` argument is true: ``"trainer"``
            (Ultralytics, as without the relay) or ``"collector"`` (the collector draws them from
            raw data; the trainer draws only the image mosaics). Default: ``CLEARML_RELAY_PLOTS``,
            else ``"trainer"``.

    Raises:
        ValueError: a bad ``plots`` value.

    """

    def __init__(
        self,
        *,
        project: str | None = None,
        name: str | None = None,
        tags: Iterable[str] | None = None,
        endpoint: str | None = None,
        spool_dir: str | os.PathLike[str] | None = None,
        flush_timeout: float | None = None,
        stats_interval: float = DEFAULT_STATS_INTERVAL,
        late_files_timeout: float = DEFAULT_LATE_FILES_TIMEOUT,
        plots: str | None = None,
    ) -> None:
        self._options: dict[str, Any] = {
            "project": project,
            "name": name,
            "tags": None if tags is None else [str(t) for t in tags],
            "endpoint": endpoint,
            "spool_dir": None if spool_dir is None else os.fspath(spool_dir),
            "flush_timeout": flush_timeout,
            "stats_interval": float(stats_interval),
            "late_files_timeout": float(late_files_timeout),
            "plots": None if plots is None else setting(ENV_PLOTS).value(plots, {}),
        }
        self._session: Session | None = None
        self._router: Router | None = None
        self._worker: Worker | None = None
        self._spare: Session | None = None  # the next training's record, made ahead
        self._detached = False
        self._main = main_rank()  # read once, as Ultralytics reads RANK once at import
        self._registries: list[dict[str, list[Any]]] = []
        self._once = Once()
        self._timings = {event: collections.deque[float](maxlen=_TIMINGS_KEPT) for event in EVENTS}
        self._callbacks = {event: _Hook(self, event) for event in EVENTS}

    def prepare(self) -> None:
        """Start the process's worker and the SIGTERM handler now, off the training thread."""
        self._worker = worker()
        self._router = router(ULTRALYTICS_LOGGER)  # the console capture's handler (addHandler locks)
        self._refill()
        preemption.install(abort_open_runs)  # main thread only: its runs end as aborted on SIGTERM
        options = self._options
        try:  # a bad setting is told now, before the training starts (its end tells it again)
            ProducerConfig.from_env(
                endpoint=options["endpoint"],
                spool_dir=options["spool_dir"],
                flush_timeout=options["flush_timeout"],
            )
        except ConfigError as exc:
            not_recorded(str(exc))
        if options["plots"] is None:
            try:
                options["plots"] = setting(ENV_PLOTS).value(None, os.environ)
            except ConfigError as exc:
                log.error("clearml-relay: %s; Ultralytics draws the plots", exc)  # noqa: TRY400
                options["plots"] = "trainer"

    @property
    def callbacks(self) -> dict[str, Callable[[ul.Trainer], None]]:
        """``{event: callback}`` to register with ``model.add_callback``."""
        return dict(self._callbacks)

    @property
    def run(self) -> Run | None:
        """The run of the current (or last) training; None before it is open."""
        return self._session.run if self._session is not None else None

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the last training's run is closed (late files sent, acks awaited).

        Returns:
            True when it is; False on timeout or when no training started.

        """
        return self._session is not None and self._session.wait(timeout)

    def timings(self) -> dict[str, list[float]]:
        """Seconds each hook took on the training thread, per event (the last 10,000 calls)."""
        return {event: list(kept) for event, kept in self._timings.items()}

    def detach(self) -> None:
        """Remove the callbacks from their models; a running training's run closes as ``aborted``."""
        self._detached = True
        for registry in self._registries:
            for event, hook in self._callbacks.items():
                while hook in registry.get(event, []):
                    registry[event].remove(hook)
        self._registries.clear()
        if self._session is not None:
            self._session.end("aborted", "clearml-relay hooks were detached during training")

    def register(self, model: Any) -> None:
        """Add the callbacks to an Ultralytics model."""
        for event, hook in self._callbacks.items():
            model.add_callback(event, hook)
        self._registries.append(model.callbacks)

    def __reduce__(self) -> tuple[Callable[..., RelayHooks], tuple[Any, ...]]:
        if self is _DEFAULT:
            return default_hooks, ()
        return _restore, (self._options,)

    def __repr__(self) -> str:
        return f"RelayHooks(run={self.run!r}, detached={self._detached})"

    def _dispatch(self, event: str, target: ul.Trainer, caller: object) -> None:
        """Run one hook: timed, rank 0 only, and whatever happens, nothing raised."""
        start = time.perf_counter()
        try:
            if self._main and not self._detached:
                if event == "on_pretrain_routine_start":
                    self._start(target, caller)
                elif self._session is not None and not self._session.ending:
                    getattr(self._session, event)(target)
        except Exception as exc:  # noqa: BLE001 - a hook must never stop the training
            message = "clearml-relay: hook %s failed, its data is missing from the run: %r"
            self._once.log(log, logging.WARNING, (event, type(exc).__name__), message, event, exc)
        finally:
            self._timings[event].append(time.perf_counter() - start)

    def _start(self, trainer: ul.Trainer, caller: object) -> None:
        removed = ul.remove_builtin_callbacks(trainer, caller)  # first: even if the run cannot open
        previous = self._session
        if previous is not None:
            previous.end("failed", "the training ended without its teardown (another training started)")
        current = self._worker  # checked here, not in a call: the start is the cold, costly hook
        if current is None or current.pid != os.getpid() or current.done:
            current = self._worker = worker()
        session, self._spare = self._spare or self._blank(), None
        try:
            session.start(trainer, current.wake)
        except BaseException:
            session.console.stop()  # the thread's lines are no one's
            raise
        session.removed = removed
        self._session = session
        current.add(session)

    def _blank(self) -> Session:
        """A training record made ahead (see :class:`~producer.integrations.reporter.Training`)."""
        return Session(self._options, Console(self._router or router(ULTRALYTICS_LOGGER)), self._refill)

    def _refill(self) -> None:
        """(Worker.) The next training's record, made as the worker takes the last one over."""
        if self._spare is None:
            self._spare = self._blank()


class _Hook:
    """One event's callback of a :class:`RelayHooks` (picklable, unlike a closure)."""

    __slots__ = ("event", "hooks")

    def __init__(self, hooks: RelayHooks, event: str) -> None:
        self.hooks = hooks
        self.event = event

    def __call__(self, target: ul.Trainer) -> None:
        self.hooks._dispatch(self.event, target, self)

    def __reduce__(self) -> tuple[Callable[[RelayHooks, str], _Hook], tuple[RelayHooks, str]]:
        return _hook_of, (self.hooks, self.event)

    def __repr__(self) -> str:
        return f"<clearml-relay {self.event} hook>"


def _hook_of(hooks: RelayHooks, event: str) -> _Hook:
    """An unpickled hook: the one its (unpickled) hooks hold, so callbacks compare equal."""
    return hooks._callbacks[event]


def _restore(options: dict[str, Any]) -> RelayHooks:
    hooks = RelayHooks(**options)
    hooks.prepare()  # in a DDP child, before its training
    return hooks


def attach(model: Any, **options: Any) -> RelayHooks:
    """Register the hooks on a ``YOLO`` model: each ``train()`` becomes a run.

    Returns:
        The hooks (options: :class:`RelayHooks`'s): ``.run``, ``.wait()``, ``.detach()``.

    """
    hooks = RelayHooks(**options)
    hooks.register(model)
    hooks.prepare()
    return hooks


_DEFAULT: Final = RelayHooks()


def default_hooks() -> RelayHooks:
    """The hooks behind the module-level ``callbacks`` (for ``.run``, ``.wait()``...), prepared."""
    _DEFAULT.prepare()
    return _DEFAULT
