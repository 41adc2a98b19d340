"""Ultralytics trainer hooks: each YOLO training becomes one clearml-relay run.

They replace Ultralytics' own ClearML callback (switched off for the trainings they handle).

This is the only producer module that knows Ultralytics, and it imports nothing from it at
module level (``import producer`` stays light); ``model_info_for_loggers`` is imported inside the
hook that needs it, from a trainer that has loaded it already.

Use either::

    hooks = producer.attach(model)          # a handle: hooks.run, hooks.wait(), hooks.detach()
    for event, fn in producer.callbacks.items():
        model.add_callback(event, fn)       # Ultralytics' convention, a module-level dict
                                            # (taking it starts the hooks' starter thread)

What a run holds is what ``ultralytics/utils/callbacks/clearml.py`` logs, with the same titles,
series and iterations (project ``args.project or "Ultralytics"``, task ``args.name``, tags
``["Ultralytics"]``, ``vars(args)`` in ``General``; per-epoch losses, learning rates, epoch time
and metrics; model info and final metrics as single values; ``Mosaic`` and ``Validation`` debug
images; every plot; ``best.pt`` as the output model), and beyond it: training mosaics of every
run (the built-in sends them only at epoch 1), images Ultralytics' plotting threads write late,
the ``ultralytics`` logger's lines as console text, machine statistics, status ``failed`` or
``aborted`` with the error, and ``resume=True`` continuing the same ClearML task.

Where the work happens. Hooks run on the training thread: they read trainer attributes and call
``Run`` methods (microseconds each), never raise into the trainer (every hook is wrapped; a
failure is logged once per hook and exception type) and never wait. Everything slow runs on one
background thread per training: finding image files and checking they are completely written
(:mod:`producer.integrations.filewatch`), sending console lines, sampling machine statistics, and at the end
picking up late files for at most ``late_files_timeout`` seconds, then closing the run. That
thread is not a daemon, so a script that ends right after ``model.train()`` still delivers its
last images; it stops by itself when the training thread ends (the process exits) or the trainer
is garbage-collected without its ``teardown`` (the run is then closed as ``failed``). That thread
also opens the run (client threads, socket, outbox, a resumed training's state file) and counts
the epoch-0 FLOPs on a copy of the model: the training thread reads no file and waits for no
thread. Nor does it wake one, in the normal course of a training (waking a parked thread costs
15-35 us here, the bulk of a hook): the process's starter thread polls for the training's start
after ``attach()`` (see :class:`_Starter`), and the run's thread polls for the training's end
once the last epoch ended (see :meth:`_Session._work`).

Ultralytics' own ClearML callback is switched off for the trainings these hooks handle, without
touching the user's settings file: our ``on_pretrain_routine_start`` runs before the integration
callbacks that the trainer appends to its callback lists (they are added in the trainer's
``__init__``, after the model's callbacks, ours included, were copied in), and removes the
built-in module's callbacks (its ``callbacks`` dict) from the trainer's lists.

Only rank 0 reports (``RANK``, or ``LOCAL_RANK`` when ``RANK`` is unset, in {-1, 0}); the hooks of
other ranks return at once. DDP children receive the hooks pickled with the trainer's callbacks: a
:class:`RelayHooks` pickles as its options only, and the endpoint and spool directory come from
the options or the environment (``CLEARML_RELAY_*``).
"""

from __future__ import annotations

import _thread
import collections
import copy
import functools
import importlib
import itertools
import json
import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Final, NamedTuple

from producer import preemption
from producer.config import ENV_PROJECT, ENV_TASK_NAME
from producer.integrations.console import ConsoleCapture
from producer.integrations.filewatch import FileWatcher, Ready, Version
from producer.integrations.machine import MachineSampler
from producer.once import Once
from producer.run import Run, abort_open_runs

log = logging.getLogger(__name__)

#: Written in the trainer's ``save_dir``: the run id (a resumed training continues its task) and
#: the image versions already sent.
STATE_FILE: Final = "clearml-relay.json"
#: Ultralytics' own ClearML integration, switched off for the trainings we handle.
BUILTIN_MODULE: Final = "ultralytics.utils.callbacks.clearml"
#: The logger whose lines become the run's console output.
ULTRALYTICS_LOGGER: Final = "ultralytics"
DEFAULT_STATS_INTERVAL: Final = 5.0
DEFAULT_LATE_FILES_TIMEOUT: Final = 10.0
#: The background thread's period: new files are found and console lines sent within it.
TICK: Final = 0.5
EVENTS: Final = (
    "on_pretrain_routine_start",
    "on_train_epoch_end",
    "on_val_end",
    "on_fit_epoch_end",
    "on_train_end",
    "teardown",
)
_TIMINGS_KEPT: Final = 10_000
_SESSION_WAIT: Final = 1.0  # seconds a hook waits at most for the starter thread's session
#: After ``attach()`` (or a run's end) the starter thread looks for a training's start every
#: ``_POLL`` seconds for ``_ARMED`` seconds, so that the training thread need not wake it.
_POLL: Final = 0.05
_ARMED: Final = 30.0
_PLOT_SERIES: Final = "plot image"  # what ClearML names a matplotlib figure reported with series=""
_PLOT_THREAD_SUFFIX: Final = "(plot_images)"  # Ultralytics' @threaded mosaic writer

# Ultralytics' trainer and validator: typed loosely on purpose, ultralytics is optional here.
Trainer = Any


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
        }
        self._session: _Session | None = None
        self._detached = False
        #: Whether this process reports (rank 0): read from the environment once, as Ultralytics
        #: reads ``RANK`` once at import (a DDP child makes its own hooks, see :func:`_restore`).
        self._main = _main_rank()
        self._registries: list[dict[str, list[Any]]] = []
        self._once = Once()
        self._timings = {event: collections.deque[float](maxlen=_TIMINGS_KEPT) for event in EVENTS}
        self._callbacks = {event: _Hook(self, event) for event in EVENTS}
        self._starter: _Starter | None = None
        #: Set once the starter thread has made the session of the training that started last.
        self._pending: threading.Event | None = None
        #: The next training's ``_pending``, made ahead (an Event costs the training thread
        #: 4-10 us cache-cold).
        self._spare: threading.Event | None = None

    def _prestart(self) -> None:
        """Have the process's starter thread (see :class:`_Starter`) look for this training's start."""
        self._starter = _starter()
        preemption.install(abort_open_runs)  # from the main thread (attach): its runs end on SIGTERM
        if self._spare is None:
            self._spare = threading.Event()
        self._starter.arm()

    @property
    def callbacks(self) -> dict[str, Callable[[Trainer], None]]:
        """``{event: callback}`` to register with ``model.add_callback``."""
        return dict(self._callbacks)

    @property
    def run(self) -> Run | None:
        """The run of the current (or last) training; None before a training starts."""
        session = self._current_session()
        return session.run if session is not None else None  # None too while the run is opening

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the last training's run is closed (late files sent, acks awaited).

        Args:
            timeout: seconds to wait at most (None: until it is).

        Returns:
            True when the run is closed; False on timeout or when no training started.

        """
        session = self._current_session()
        return session is not None and session.closed.wait(timeout)

    def timings(self) -> dict[str, list[float]]:
        """Seconds each hook took on the training thread, per event (the last 10,000 calls)."""
        return {event: list(kept) for event, kept in self._timings.items()}

    def detach(self) -> None:
        """Remove the callbacks from the models they were attached to.

        A training that is running reports nothing more; its run is closed as ``aborted``.
        """
        self._detached = True
        for registry in self._registries:
            for event, hook in self._callbacks.items():
                while hook in registry.get(event, []):
                    registry[event].remove(hook)
        self._registries.clear()
        session = self._current_session()
        if session is not None and not session.ending:
            session.end("aborted", "clearml-relay hooks were detached during training")

    def _register(self, model: Any) -> None:
        for event, hook in self._callbacks.items():
            model.add_callback(event, hook)
        self._registries.append(model.callbacks)

    def __reduce__(self) -> tuple[Callable[..., RelayHooks], tuple[Any, ...]]:
        # DDP children get the trainer's callbacks pickled: only the options travel, each process
        # makes its own sessions, threads and run.
        if self is _DEFAULT:
            return _restore_default, ()
        return _restore, (self._options,)

    def __repr__(self) -> str:
        return f"RelayHooks(run={self.run!r}, detached={self._detached})"

    # ----------------------------------------------------------------------------- dispatch

    def _dispatch(self, event: str, target: Trainer, caller: object) -> None:
        """Run one hook: timed, rank 0 only, and whatever happens, nothing raised."""
        start = time.perf_counter()
        try:
            if self._main and not self._detached:
                if event == "on_pretrain_routine_start":
                    self._start(target, caller)
                else:
                    session = self._current_session()
                    if session is not None and not session.ending:
                        getattr(session, event)(target)
        except Exception as exc:  # noqa: BLE001 - a hook must never stop the training
            self._once.log(
                log,
                logging.WARNING,
                (event, type(exc).__name__),
                "clearml-relay: hook %s failed, its data is missing from the run: %r",
                event,
                exc,
            )
        finally:
            self._timings[event].append(time.perf_counter() - start)

    def _start(self, trainer: Trainer, caller: object) -> None:
        removed = remove_builtin_callbacks(trainer, caller)  # first: even if the run cannot open
        previous = self._current_session()
        if previous is not None and not previous.ending:
            previous.end("failed", "the training ended without its teardown (another training started)")
        # What only the training thread knows, and the arguments as the training starts.
        outer, here, hyperparams = sys.exc_info()[1], threading.current_thread(), dict(vars(trainer.args))
        starter = self._starter
        if starter is not None and starter.usable():
            pending, self._spare = self._spare or threading.Event(), None
            self._session, self._pending = None, pending
            context = _Context(outer, here, hyperparams, removed, starter.capture(here))
            starter.make((self, trainer, context, pending))
        else:
            self._pending = None
            capture = _install_capture(started=True, thread=here)
            context = _Context(outer, here, hyperparams, removed, capture)
            self._session = _new_session(trainer, self._options, context)

    def _current_session(self) -> _Session | None:
        """The session of the current (or last) training, made by the starter thread if pending."""
        pending = self._pending
        # Made within ``_POLL`` of the training's start; a hook comes seconds later (only a
        # training that fails at once, or back-to-back calls as in tests, wait here, and hurry
        # the starter). A starter that never answers costs one wait, not one per hook.
        if pending is not None and not pending.is_set():
            starter = self._starter
            if starter is not None:
                starter.hurry()
            if not pending.wait(_SESSION_WAIT):
                self._pending = None
                log.warning("clearml-relay: this training's run was not set up in time; nothing is reported")
        return self._session


class _Context(NamedTuple):
    """What a session needs from the training thread at the training's start."""

    outer_exc: BaseException | None
    training_thread: threading.Thread
    hyperparams: dict[str, Any]
    #: How many of Ultralytics' ClearML callbacks were removed (logged off the training thread).
    builtin_removed: int
    #: The console capture the hook switched on (the run's console from the training's start).
    console: ConsoleCapture


_Job = tuple["RelayHooks", Trainer, _Context, threading.Event]


def _install_capture(*, started: bool, thread: threading.Thread | None = None) -> ConsoleCapture:
    """A console capture on Ultralytics' logger (``addHandler`` takes the logging lock).

    Started, it takes the lines of the training on ``thread`` (see ``ConsoleCapture.start``).
    """
    console = ConsoleCapture(started=started, thread=thread)
    logging.getLogger(ULTRALYTICS_LOGGER).addHandler(console)
    return console


def _remove_capture(console: ConsoleCapture) -> None:
    """Take a capture off Ultralytics' logger (the logging lock: never on the training thread).

    Stopped too: a run that ends without its teardown no longer counts as a training whose
    console is being captured.
    """
    console.stop()
    logging.getLogger(ULTRALYTICS_LOGGER).removeHandler(console)


def _new_session(
    trainer: Trainer, options: Mapping[str, Any], context: _Context, *, on_starter: bool = False
) -> _Session:
    """A training's session; if it cannot be made, its capture is taken off the logger."""
    try:
        return _Session(trainer, options, context, on_starter=on_starter)
    except BaseException:
        _remove_capture(context.console)
        raise


class _Starter:
    """The process's daemon thread that makes each training's session and starts its thread.

    Setting up a session (events, weak references, the background thread) would cost the
    training thread a few hundred microseconds cache-cold: ``Thread.start`` alone waits for the
    new thread to run. Handing the trainer to a thread that is parked costs the wake-up of that
    thread (a futex and, on a VM, an interrupt to another CPU: 15-35 us here, most of the hook).
    So after ``attach()``, taking the module-level ``callbacks``, a DDP child's unpickling and the
    end of each run (none of them on the training thread), the thread *polls* a deque every
    ``_POLL`` seconds for ``_ARMED`` seconds: the training's first hook appends to it, wakes
    nothing, and the session is made within ``_POLL``. Past ``_ARMED``, or once a training
    started, the thread parks and a hook wakes it (about 20 us more, once per training).

    The training's console lines are not missed while the session is being made: the thread
    keeps a console capture installed ahead on Ultralytics' logger, switched off by its level,
    and the hook switches it on (``logger.addHandler`` would cost it 8-14 us: a lock).

    Without a starter (a process that forked after it started, or hooks made directly) the hook
    makes the session and starts a raw thread itself, about 100 us more. The thread is a daemon:
    the threads it starts are not, so a started run is still delivered at exit.
    """

    def __init__(self) -> None:
        self.forked = False  # set in a forked child, where the thread does not run
        self._jobs: collections.deque[_Job] = collections.deque()
        self._captures: collections.deque[ConsoleCapture] = collections.deque()  # one, installed
        self._wake = threading.Event()
        self._parked = False  # blocked on _wake: a job must set it
        self._armed_until = 0.0
        threading.Thread(target=self._serve, name="clearml-relay-starter", daemon=True).start()

    def usable(self) -> bool:
        """Whether the thread runs in this process (an attribute: ``os.getpid`` is a syscall)."""
        return not self.forked

    def arm(self) -> None:
        """Poll for trainings' starts for the next ``_ARMED`` seconds (never on the training thread)."""
        self._armed_until = time.monotonic() + _ARMED
        self._wake.set()

    def capture(self, thread: threading.Thread) -> ConsoleCapture:
        """(Training thread.) The capture installed ahead, switched on for the training on ``thread``.

        Made here if none is.
        """
        try:
            console = self._captures.pop()  # atomic: two trainings starting at once get one each
        except IndexError:
            return _install_capture(started=True, thread=thread)
        console.start(thread)
        return console

    def make(self, job: _Job) -> None:
        """(Training thread.) Have a training's session made: within ``_POLL`` when armed."""
        self._jobs.append(job)
        if self._parked:  # read after the append: see _serve
            self._wake.set()

    def hurry(self) -> None:
        """(Training thread.) A hook needs the session now: stop polling's wait."""
        self._wake.set()

    def _serve(self) -> None:
        while True:
            while self._jobs:
                self._armed_until = 0.0  # a training started: park until the next arm()
                self._build(*self._jobs.popleft())
            if not self._captures:  # for the next training
                self._captures.append(_install_capture(started=False))
            self._wake.clear()
            if self._jobs:  # appended before the clear
                continue
            left = self._armed_until - time.monotonic()
            if left > 0:
                self._wake.wait(min(_POLL, left))
                continue
            # make() appends, then reads _parked; here _parked is set, then the deque read: a job
            # appended after that read finds _parked set and wakes the thread.
            self._parked = True
            if not self._jobs:
                self._wake.wait()
            self._parked = False

    @staticmethod
    def _build(hooks: RelayHooks, trainer: Trainer, context: _Context, ready: threading.Event) -> None:
        try:
            hooks._session = _new_session(trainer, hooks._options, context, on_starter=True)
        except Exception as exc:  # noqa: BLE001 - the training goes on without reporting
            log.warning("clearml-relay: cannot set up the run of a training, nothing is reported: %r", exc)
        finally:
            hooks._spare = threading.Event()  # for the next training of these hooks
            ready.set()


_STARTER: _Starter | None = None
_STARTER_LOCK = threading.Lock()


def _forked_child() -> None:
    """(In a forked child.) The starter thread stayed in the parent; the lock may be held there."""
    global _STARTER, _STARTER_LOCK  # noqa: PLW0603 - the process's
    if _STARTER is not None:
        _STARTER.forked = True
        _STARTER = None
    _STARTER_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_forked_child)


def _starter() -> _Starter:
    """The process's starter thread, started on first use (and again in a forked child)."""
    global _STARTER  # noqa: PLW0603 - one per process
    with _STARTER_LOCK:
        if _STARTER is None:
            _STARTER = _Starter()
        return _STARTER


def _arm_starter() -> None:
    """(Off the training thread.) Have the process's starter, if any, poll for the next training."""
    starter = _STARTER
    if starter is not None:
        starter.arm()


class _Hook:
    """One event's callback of a :class:`RelayHooks` (picklable, unlike a closure)."""

    __slots__ = ("event", "hooks")

    def __init__(self, hooks: RelayHooks, event: str) -> None:
        self.hooks = hooks
        self.event = event

    def __call__(self, target: Trainer) -> None:
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
    hooks._prestart()  # in a DDP child, before its training
    return hooks


def attach(
    model: Any,
    *,
    project: str | None = None,
    name: str | None = None,
    tags: Iterable[str] | None = None,
    endpoint: str | None = None,
    spool_dir: str | os.PathLike[str] | None = None,
    flush_timeout: float | None = None,
    stats_interval: float = DEFAULT_STATS_INTERVAL,
    late_files_timeout: float = DEFAULT_LATE_FILES_TIMEOUT,
) -> RelayHooks:
    """Register clearml-relay's hooks on an Ultralytics model (``YOLO(...)``).

    Every later ``model.train()`` becomes one run. The arguments are those of
    :class:`RelayHooks`.

    Returns:
        The hooks: ``.run`` once a training started, ``.wait()``, ``.detach()``.

    """
    hooks = RelayHooks(
        project=project,
        name=name,
        tags=tags,
        endpoint=endpoint,
        spool_dir=spool_dir,
        flush_timeout=flush_timeout,
        stats_interval=stats_interval,
        late_files_timeout=late_files_timeout,
    )
    hooks._register(model)
    hooks._prestart()
    return hooks


def remove_builtin_callbacks(trainer: Trainer, caller: object = None) -> int:
    """Remove Ultralytics' ClearML callbacks from a trainer's callback lists, in place.

    The callbacks are those of the built-in module's ``callbacks`` dict, which the trainer
    appended (nothing to remove when the trainer did not load that module). Called from inside
    ``on_pretrain_routine_start`` (``caller`` is the running callback): in a list that holds
    ``caller`` only the entries after it are removed, so the trainer's loop over that list
    neither skips nor repeats a callback. A handful of list operations: no logging here (it
    runs on the training thread), the caller logs the count.

    Returns:
        How many callbacks were removed.

    """
    builtin: Mapping[str, Any] = getattr(sys.modules.get(BUILTIN_MODULE), "callbacks", None) or {}
    lists = trainer.callbacks
    removed = 0
    for event, fn in builtin.items():
        entries = lists.get(event)
        if not entries or fn not in entries:
            continue
        first = entries.index(caller) + 1 if caller is not None and caller in entries else 0
        while fn in entries[first:]:
            del entries[entries.index(fn, first)]  # in place: the trainer iterates over this list
            removed += 1
    return removed


# ------------------------------------------------------------------------------- a training


class _Session:
    """One training's run: the hooks' state on the training thread and its background thread.

    The training thread calls the ``on_*`` methods and :meth:`end`; it hands work to the
    background thread through ``_inbox`` (a deque: appends are atomic) and ``_kick``.
    """

    def __init__(
        self, trainer: Trainer, options: Mapping[str, Any], context: _Context, *, on_starter: bool = False
    ) -> None:
        # The training thread only reads the trainer here; the background thread opens the run
        # (client threads, socket, outbox file, the resume state file): about 2 ms that the
        # training does not wait for. It is started from a short-lived raw thread because
        # ``Thread.start`` waits until the new thread runs (0.1-0.5 ms on a busy machine).
        self.ending = False
        self.closed = threading.Event()
        self.trained = False
        self.run: Run | None = None  # set by the background thread once the run is open
        self._status, self._error = "completed", ""
        # An exception being handled around model.train() (a retry in an except block) is not
        # this training's failure: teardown compares against it.
        self._outer_exc = context.outer_exc
        # Either gone without the teardown hook (an exception in the trainer's __init__, the
        # process exiting) ends the run as failed.
        self._training_thread = context.training_thread
        self._builtin_removed = context.builtin_removed
        try:
            self._trainer: Callable[[], object] = weakref.ref(trainer)
        except TypeError:  # not weak-referenceable: only the training thread's end counts
            self._trainer = lambda: trainer
        save_dir = trainer.save_dir
        self._stats_interval = float(options["stats_interval"])
        self._late_files_timeout = float(options["late_files_timeout"])
        self._inbox: collections.deque[Callable[[FileWatcher], None]] = collections.deque()
        self._kick = threading.Event()  # the background thread looks at the inbox now, not at its tick
        #: The trainer's ``stop`` was set at an epoch's end: the training is in its final phase.
        self._final = False
        #: Set by the background thread once it polls (``_POLL``) for the training's end, so
        #: that ``on_train_end`` and ``teardown`` need not wake it (see :meth:`_work`).
        self._polling = False
        self._once = Once()
        self._validation_dirs: set[object] = set()  # as given (str or Path) and as Path
        self._model_info_sent = False
        self._watcher: FileWatcher  # made when the run opens (with a resumed training's state)
        self._state_written: dict[str, Any] | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()  # the background thread was started (or could not be)
        self._open_args = (options, context.hyperparams)
        self._validation_dirs.add(save_dir)  # the on_val_end of a training validates into it
        self._console = context.console
        if on_starter:
            self._start_thread(save_dir)
        else:
            _thread.start_new_thread(self._start_thread, (save_dir,))

    def _start_thread(self, save_dir: str | os.PathLike[str]) -> None:
        """(A raw thread.) Capture the console, start the background thread.

        That thread is not a daemon: the interpreter waits for it. All this happens within a
        millisecond of the training's start.
        """
        self._console.register()
        if self._builtin_removed:
            log.info("clearml-relay: switched off Ultralytics' ClearML callback for this training")
        try:
            self._save_dir = Path(save_dir)
            self._state_path = self._save_dir / STATE_FILE
            mosaics = self._save_dir
            self._inbox.appendleft(lambda watcher: watcher.watch(mosaics, "train_batch*.jpg", "Mosaic"))
            self._watch_validation(self._save_dir)
            thread = threading.Thread(target=self._work, name="clearml-relay-hooks", daemon=False)
            thread.start()
            self._thread = thread
        except Exception as exc:  # noqa: BLE001 - e.g. at interpreter shutdown: nothing can report any more
            log.warning("clearml-relay: cannot start the hooks' thread, nothing is reported: %r", exc)
            self._stop_capture()
            self.closed.set()
        finally:
            self._started.set()

    def _open(self) -> Run:
        """(Background thread.) Open the run, continuing a resumed training's task."""
        options, hyperparams = self._open_args
        project = (
            options["project"]
            or os.environ.get(ENV_PROJECT, "").strip()
            or str(hyperparams.get("project") or "Ultralytics").lstrip("/")
            or "Ultralytics"
        )
        name = options["name"] or os.environ.get(ENV_TASK_NAME, "").strip() or str(hyperparams.get("name"))
        resume = bool(hyperparams.get("resume", False))
        resume_run, sent = _load_state(self._state_path) if resume else (None, {})
        self._watcher = FileWatcher(sent)
        return Run(
            project,
            name,
            tags=options["tags"] if options["tags"] is not None else ["Ultralytics"],
            task_type="training",
            hyperparams={"General": hyperparams},
            endpoint=options["endpoint"],
            spool_dir=options["spool_dir"],
            flush_timeout=options["flush_timeout"],
            task_id=_current_clearml_task(),
            resume_run=resume_run,
        )

    # ------------------------------------------------------------ hooks (training thread)

    def on_train_epoch_end(self, trainer: Trainer) -> None:
        # Only references change hands here: turning the losses (tensors) into floats runs cold
        # through torch's dispatcher after an epoch of tensor work (about 40 us for three), so
        # the background thread does it. The trainer rebinds tloss and lr (new objects) rather
        # than changing them in place; the copies guard against a trainer that would.
        tloss, lr, epoch = trainer.tloss, dict(trainer.lr), trainer.epoch
        if isinstance(tloss, dict):
            tloss = dict(tloss)
        self._inbox.append(functools.partial(self._report_train_epoch, trainer, tloss, lr, epoch))

    def _report_train_epoch(
        self, trainer: Trainer, tloss: Any, lr: Mapping[str, float], epoch: int, _: FileWatcher
    ) -> None:
        """(Background thread.) The epoch's training losses and learning rates."""
        self._opened.scalars("lr", lr, epoch)  # first: a trainer's failing label_loss_items costs only losses
        if tloss is not None:
            self._opened.scalars("train", trainer.label_loss_items(tloss, prefix="train"), epoch)

    def on_val_end(self, validator: Trainer) -> None:
        save_dir = getattr(validator, "save_dir", None)
        if save_dir is not None and save_dir not in self._validation_dirs:  # cheap when seen before
            self._validation_dirs.add(save_dir)
            directory = Path(save_dir)
            if directory not in self._validation_dirs:
                self._watch_validation(directory)

    def on_fit_epoch_end(self, trainer: Trainer) -> None:
        epoch = trainer.epoch
        self._inbox.append(
            functools.partial(self._report_fit_epoch, trainer.epoch_time, dict(trainer.metrics), epoch)
        )
        if getattr(trainer, "stop", False):  # the last epoch (or early stopping): final validation next
            self._final = True
        if epoch == 0 and not self._model_info_sent:
            self._model_info_sent = True
            # The built-in callback counts the FLOPs here, on the training thread (a profiled
            # forward pass: milliseconds); the background thread counts them on a copy.
            ema = getattr(trainer, "ema", None)
            model = getattr(ema, "ema", None) or trainer.model
            speed = trainer.validator.speed["inference"]
            self._inbox.append(functools.partial(self._report_model_info, trainer, model, speed))

    def _report_model_info(self, trainer: Trainer, model: Any, speed: float, _: FileWatcher) -> None:
        """(Background thread.) The single values of ``model_info_for_loggers``, counted on a copy.

        Ultralytics counts FLOPs with ``thop.profile``, which switches every module of the model
        it is given to eval mode and back and hooks into its forward pass: on the live model,
        while the training thread trains it, that would change the training. So the count runs
        on a private CPU copy of the EMA model (same layers; its weights are zeros: FLOPs
        depend on shapes only), which costs the training thread nothing and no GPU memory.
        """
        torch_utils: Any = importlib.import_module("ultralytics.utils.torch_utils")  # loaded already
        if trainer.args.profile:  # ONNX and TensorRT timings: exports from the saved last.pt
            info: dict[str, float] = dict(torch_utils.model_info_for_loggers(trainer))
        else:
            info = {
                "model/parameters": torch_utils.get_num_params(model),
                "model/GFLOPs": round(torch_utils.get_flops(_shape_copy(model), trainer.args.imgsz), 3),
            }
        info["model/speed_PyTorch(ms)"] = round(speed, 3)
        for key, value in info.items():
            self._opened.single_value(key, value)

    def _report_fit_epoch(
        self, epoch_time: float | None, metrics: Mapping[str, float], epoch: int, _: FileWatcher
    ) -> None:
        """(Background thread.) Epoch time and validation metrics, one plot per metric group."""
        run = self._opened
        if epoch_time is not None:
            run.scalar("Epoch Time", "Epoch Time", epoch_time, epoch)
        by_title: dict[str, dict[str, float]] = {}
        for key, value in metrics.items():
            by_title.setdefault(key.split("/")[0], {})[key] = value
        for title, values in by_title.items():
            run.scalars(title, values, epoch)

    def on_train_end(self, trainer: Trainer) -> None:
        # The background thread is woken to hand the model over at once: its file is copied
        # within milliseconds, before a script that goes on after train() could move it.
        # results_dict is computed (numpy) on access: the background thread asks for it; the
        # validation is over, so the metrics object no longer changes.
        request = functools.partial(
            self._report_train_end,
            trainer.best,
            str(trainer.args.name),
            [*trainer.plots, *trainer.validator.plots],
            trainer.validator.metrics,
        )
        self._inbox.append(request)
        if not self._polling:
            self._kick.set()
        self.trained = True

    def _report_train_end(
        self, best: Any, name: str, plots: list[Path], metrics: Any, watcher: FileWatcher
    ) -> None:
        """(Background thread.) The best model, every training and validation plot, final metrics."""
        self._opened.model(best, name=name)
        for path in map(Path, plots):
            if "batch" not in path.name:
                watcher.add(path, "plot", path.stem, _PLOT_SERIES, 0)
        for key, value in metrics.results_dict.items():
            self._opened.single_value(key, value)

    def teardown(self, trainer: Trainer) -> None:
        exc = sys.exc_info()[1]
        if exc is self._outer_exc:
            exc = None
        if isinstance(exc, KeyboardInterrupt):
            self.end("aborted", "KeyboardInterrupt")
        elif exc is not None:
            self.end("failed", f"{type(exc).__name__}: {exc}")
        elif self.trained:
            self.end("completed", "")
        else:
            self.end("failed", "the training stopped before on_train_end")

    def end(self, status: str, error: str) -> None:
        """Stop capturing; the background thread sends what is left, then closes the run."""
        if self.ending:
            return
        self._status, self._error = status, error
        self.ending = True
        self._console.stop()  # later lines are not the run's; the background thread removes it
        if not self._polling:
            self._kick.set()
        if not self._started.is_set():
            # A training that ends within a millisecond of its start: the background thread
            # must be registered before the interpreter's exit stops waiting for threads.
            self._started.wait(1.0)

    def _stop_capture(self) -> None:
        """Remove the console capture (not on the training thread: it takes the logging lock)."""
        _remove_capture(self._console)

    def _watch_validation(self, directory: Path) -> None:
        self._validation_dirs.add(directory)
        self._inbox.append(lambda watcher: watcher.watch(directory, "val*.jpg", "Validation"))

    # ------------------------------------------------------------------- background thread

    @property
    def _opened(self) -> Run:
        """(Background thread.) The run, which that thread opened before anything else."""
        run = self.run
        if run is None:
            raise RuntimeError("the run is not open")  # unreachable: _work opens it first
        return run

    def _work(self) -> None:
        try:
            self.run = self._open()  # never raises for bad input: the run is then disabled
        except Exception as exc:  # noqa: BLE001 - the training goes on without reporting
            log.warning("clearml-relay: the run could not be opened, nothing is reported: %r", exc)
            self._stop_capture()
            self.closed.set()
            return
        sampler = MachineSampler() if self._stats_interval > 0 else None
        next_stats = time.monotonic() + self._stats_interval
        next_step = 0.0
        try:
            while True:
                # Woken by on_train_end and teardown, or every TICK. Once the training is in its
                # final phase (validation of best.pt, plots) the thread looks every _POLL seconds
                # instead and they wake nothing: a wake-up is most of their cost.
                self._kick.wait(_POLL if self._polling else TICK)
                self._kick.clear()
                if self.ending:
                    break
                if not self._training_thread.is_alive() or self._trainer() is None:
                    self._status = "failed"
                    self._error = "the training ended without its teardown (process exit or trainer lost)"
                    break
                self._polling = self._final
                now = time.monotonic()
                if self._inbox or now >= next_step:  # files and console: every TICK, not every poll
                    next_step = now + TICK
                    self._step()
                if sampler is not None and now >= next_stats:
                    next_stats = now + self._stats_interval
                    self._send_stats(sampler)
            _arm_starter()  # the training is over: the next one may start soon (a sweep)
            self._final_pickup()
            if sampler is not None:
                self._send_stats(sampler)
        except Exception as exc:  # noqa: BLE001 - the run must still be closed
            log.warning("clearml-relay: background work of run %s failed: %r", self._opened.id, exc)
        finally:
            self._stop_capture()
            self._send_console()
            self._opened.close(self._status, self._error)
            self.closed.set()

    def _step(self) -> int:
        """Take the training thread's requests, send ready files and console lines.

        Returns:
            How many files are still being written.

        """
        while self._inbox:
            request = self._inbox.popleft()
            try:
                request(self._watcher)
            except Exception as exc:  # noqa: BLE001 - one bad request must not end the run's reporting
                self._once.log(
                    log,
                    logging.WARNING,
                    ("request", type(exc).__name__),
                    "clearml-relay: run %s: a hook's deferred work failed, its data is missing: %r",
                    self._opened.id,
                    exc,
                )
        ready, waiting = self._watcher.poll()
        for item in ready:
            self._send(item)
        self._send_console()
        if ready:
            self._save_state()
        return waiting

    def _final_pickup(self) -> None:
        """Wait (bounded) for Ultralytics' plotting threads and files being written, send them."""
        deadline = time.monotonic() + self._late_files_timeout
        for thread in threading.enumerate():
            if thread.name.endswith(_PLOT_THREAD_SUFFIX):
                thread.join(max(0.0, deadline - time.monotonic()))
        pause = threading.Event()
        while (waiting := self._step()) and time.monotonic() < deadline:
            pause.wait(0.05)
        if waiting:
            log.warning(
                "clearml-relay: run %s: %d image files were still being written after %.0f s; not sent",
                self._opened.id,
                waiting,
                self._late_files_timeout,
            )
        self._save_state()

    def _send(self, item: Ready) -> None:
        if item.kind == "plot":
            self._opened.plot(item.title, item.series, item.iteration, item.path)
        else:
            self._opened.image(item.title, item.series, item.iteration, item.path)

    def _send_stats(self, sampler: MachineSampler) -> None:
        values = sampler.sample()
        if values:  # nothing measurable off Linux without a GPU
            self._opened.stats(values)

    def _send_console(self) -> None:
        for level, text in self._console.drain():
            self._opened.text(text, level)

    def _save_state(self) -> None:
        sent = {_relative(path, self._save_dir): list(v) for path, v in self._watcher.sent.items()}
        state = {"run_id": self._opened.id, "sent": sent}
        if state == self._state_written or not self._save_dir.is_dir():
            return
        try:
            temporary = self._state_path.with_suffix(".tmp")
            temporary.write_text(json.dumps(state))
            os.replace(temporary, self._state_path)
            self._state_written = state
        except OSError as exc:
            log.warning(
                "clearml-relay: cannot write %s (a resume would start a new task): %s", self._state_path, exc
            )


def _shape_copy(model: Any) -> Any:
    """A deep copy of a torch module whose parameters and buffers are new zero CPU tensors.

    What FLOPs counting needs (the layers and the shapes) without reading the live weights
    (they may be on a GPU and change under the copy) or allocating GPU memory.
    """
    torch: Any = sys.modules["torch"]  # the trainer loaded it; the producer never imports it
    memo: dict[int, Any] = {}
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        zeros = torch.zeros(tensor.shape, dtype=tensor.dtype)
        is_parameter = isinstance(tensor, torch.nn.Parameter)
        memo[id(tensor)] = torch.nn.Parameter(zeros, requires_grad=False) if is_parameter else zeros
    return copy.deepcopy(model, memo)


def _relative(path: Path, base: Path) -> str:
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)


def _load_state(path: Path) -> tuple[str | None, dict[Path, Version]]:
    """The run id and sent image versions a previous training left in ``path``."""
    try:
        state = json.loads(path.read_text())
        run_id = state.get("run_id")
        sent = {path.parent / name: (int(v[0]), int(v[1])) for name, v in state.get("sent", {}).items()}
    except FileNotFoundError:
        return None, {}
    except (OSError, ValueError, TypeError, AttributeError, IndexError) as exc:
        log.warning("clearml-relay: ignoring %s (the resumed training starts a new task): %r", path, exc)
        return None, {}
    return (run_id if isinstance(run_id, str) and run_id else None), sent


def _main_rank() -> bool:
    """Whether this process is rank 0 (or not distributed): Ultralytics' ``RANK in {-1, 0}``."""
    for variable in ("RANK", "LOCAL_RANK"):
        raw = os.environ.get(variable, "").strip()
        if raw:
            try:
                return int(raw) in (-1, 0)
            except ValueError:
                return False
    return True


def _current_clearml_task() -> str | None:
    """The ClearML task this process already reports to, as the built-in callback would use it.

    ``Task.init`` called by the user, or a clearml-agent run (``CLEARML_TASK_ID``). clearml is
    only consulted if the process imported it: never imported here. Like the built-in, ClearML's
    automatic PyTorch and matplotlib logging into that task is switched off, since the run
    reports the models and plots.
    """
    clearml: Any = sys.modules.get("clearml")
    if clearml is not None:
        try:
            task = clearml.Task.current_task()
        except Exception as exc:  # noqa: BLE001 - an odd clearml must not stop the run
            log.debug("clearml-relay: Task.current_task() failed: %r", exc)
            task = None
        if task is not None:
            for module, name in (
                ("clearml.binding.frameworks.pytorch_bind", "PatchPyTorchModelIO"),
                ("clearml.binding.matplotlib_bind", "PatchedMatplotlib"),
            ):
                binding: Any = getattr(sys.modules.get(module), name, None)
                if binding is not None:
                    binding.update_current_task(None)
            return str(task.id)
    return os.environ.get("CLEARML_TASK_ID", "").strip() or None


# ------------------------------------------------------------------------- module callbacks

_DEFAULT: Final = RelayHooks()


def _restore_default() -> RelayHooks:
    """The module-level hooks in a process that unpickled them (a DDP child): started ahead."""
    _DEFAULT._prestart()
    return _DEFAULT


def default_hooks() -> RelayHooks:
    """The hooks behind the module-level ``callbacks`` (for ``.run``, ``.wait()``...)."""
    _DEFAULT._prestart()
    return _DEFAULT


def __getattr__(name: str) -> dict[str, Callable[[Trainer], None]]:
    """``callbacks``, in Ultralytics' convention: ``model.add_callback(event, fn)`` for each item.

    A module attribute made on access (PEP 562) so that taking the callbacks starts the starter
    thread of the hooks behind them, ahead of the training (as ``attach()`` does), while importing
    this module starts no thread. One :class:`RelayHooks` (``default_hooks()``), one training at a
    time; its callbacks pickle as themselves (a DDP child's unpickled ones start its starter).
    """
    if name == "callbacks":
        return default_hooks().callbacks
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
