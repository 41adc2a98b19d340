"""A training's run as an integration reports it: recorded on the training thread, reported off it.

:class:`Training` is what the training thread keeps: made ahead and filled at the training's
start (attribute stores, a console started), it takes requests into ``inbox`` (a deque: appends
are atomic) and its end, which wakes the worker (:mod:`producer.integrations.worker`). The
worker makes the training's :class:`Reporter`, which opens the run, carries out the requests
every tick (with files that became ready, console lines, machine statistics) and, once the
training has ended, finishes (late files for at most ``late_files_timeout`` seconds, then the
run's close).
"""

from __future__ import annotations

import _thread
import collections
import contextlib
import json
import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

from producer.integrations.console import Console
from producer.integrations.filewatch import FileWatcher, Ready, Version
from producer.integrations.machine import MachineSampler
from producer.once import Once
from producer.run import Run

log = logging.getLogger(__name__)

#: Each reason a training is not recorded is told at ERROR once in the process at its start
#: (attach, or the run's opening), and at the end of every training it costs.
_NOT_RECORDED = Once()


def not_recorded(problem: str) -> None:
    """Tell the user, at ERROR, that trainings are not recorded and why (once per reason)."""
    _NOT_RECORDED.log(
        log, logging.ERROR, problem, "clearml-relay: nothing will be recorded for this training: %s", problem
    )


#: Written in the training's directory: its run id (a resumed training continues its task) and
#: the file versions already sent.
STATE_FILE: Final = "clearml-relay.json"


class Training:
    """One training as its thread records it, until the worker's :class:`Reporter` takes over.

    Made ahead, off the training thread (at ``attach()``, and by the worker for the next training
    as it takes one over): at a training's cold start each Python function the training thread
    runs costs microseconds, and :meth:`start` is only attribute stores.

    Args:
        options: ``stats_interval`` and ``late_files_timeout`` (seconds), and the integration's own.
        console: the training's console, started with the training.
        refill: called by the worker once it has taken this training over (to make the next one).

    """

    __slots__ = (
        "_closed", "_wake", "console", "ending", "error", "inbox", "options", "outer_exc", "refill", "run",
        "status", "thread", "trainer",
    )  # fmt: skip

    def __init__(self, options: Mapping[str, Any], console: Console, refill: Callable[[], None]) -> None:
        self.options, self.console, self.refill = options, console, refill
        self.trainer: object = None
        self.thread = threading.main_thread()  # the training's, from start()
        self.outer_exc: BaseException | None = None
        self.inbox: collections.deque[Request] = collections.deque()
        self.ending = False
        self.status, self.error = "completed", ""
        self.run: Run | None = None  # set by the worker once the run is open
        self._wake: Callable[[], None] = _nothing
        # Released once the run is closed: a latch.
        self._closed = _thread.allocate_lock()
        self._closed.acquire()

    def start(self, trainer: object, wake: Callable[[], None]) -> None:
        """(Training thread.) The training begins; its thread's lines are its console's from now on.

        ``trainer``: the run ends as failed once it is garbage-collected (or the thread ends)
        without :meth:`end`; ``wake``: wakes the worker that serves this training.
        """
        self.trainer, self._wake, self.thread = trainer, wake, threading.current_thread()
        # An exception being handled around the training call is not this training's failure.
        self.outer_exc = sys.exc_info()[1]
        self.console.start(self.thread)

    def reporter(self) -> Reporter:
        """(Worker.) The integration's reporter of this training."""
        raise NotImplementedError

    def end(self, status: str, error: str) -> None:
        """(Any thread.) Stop capturing; the worker sends what is left and closes the run now."""
        if self.ending:
            return
        self.status, self.error, self.ending = status, error, True
        self.console.stop()  # later lines are not the run's
        self._wake()  # files handed over are copied at once, before a script could move them

    def wait(self, timeout: float | None = None) -> bool:
        """Whether the run is closed, waiting at most ``timeout`` seconds (None: until it is)."""
        if not self._closed.acquire(timeout=-1 if timeout is None else max(0.0, timeout)):
            return False
        self._closed.release()
        return True

    def closed(self) -> None:
        """(Worker.) The run is closed (or was never opened)."""
        self._closed.release()


def _nothing() -> None:
    """A training not started yet has no worker to wake."""


#: A request of the training thread: a reporter method and its arguments, called on the worker.
Request = tuple[Callable[..., None], tuple[Any, ...]]


class Reporter:
    """A training's run as the worker reports it. Integrations add :meth:`open_run` and their requests."""

    #: Threads whose names end with this are joined (bounded) before the late files are looked for.
    late_threads: str | None = None

    def __init__(self, training: Training, save_dir: Any) -> None:
        self.training, self.options, self.save_dir = training, training.options, save_dir
        self.console = training.console
        self.run: Run | None = None
        self.problem = ""  # why the run could not be opened: the training goes on unrecorded
        trainer = training.trainer
        self._trainer: Callable[[], object] = lambda: trainer
        with contextlib.suppress(TypeError):  # not weak-referenceable: only its thread's end counts
            self._trainer = weakref.ref(trainer)
        training.trainer = None  # the worker holds it weakly from here on
        self._once = Once()
        self.watcher = FileWatcher()
        self._sampler: MachineSampler | None = None
        self._next_stats = 0.0
        self._state_written: dict[str, Any] | None = None

    @property
    def ending(self) -> bool:
        return self.training.ending

    # -------------------------------------------------------------------------- worker

    def open_run(self, resume_run: str | None) -> Run:
        """The training's run (``resume_run``: the run a resumed training continues)."""
        raise NotImplementedError

    def resuming(self) -> bool:
        """Whether the training continues an earlier one (its resume state is then read)."""
        return False

    def open(self) -> bool:
        """Open the run; False if it cannot be.

        ``problem`` then says why, at ERROR now and again at the training's end; the training
        goes on unrecorded.
        """
        try:
            resume_run: str | None = None
            if self.resuming():
                resume_run, sent = load_state(Path(self.save_dir) / STATE_FILE)
                self.watcher = FileWatcher(sent)
            self.run = self.training.run = self.open_run(resume_run)
        except Exception as exc:  # noqa: BLE001 - the training goes on without reporting
            self.problem = str(exc) if isinstance(exc, ValueError) else repr(exc)
        else:
            if self.run.client is None:  # the error logged by the run says why
                self.problem = f"the outbox of run {self.run.id} could not be made in the spool directory"
        if self.problem:
            not_recorded(self.problem)
            self.console.stop()
            return False
        interval = float(self.options["stats_interval"])
        if interval > 0:
            self._sampler, self._next_stats = MachineSampler(), time.monotonic() + interval
        return True

    def gone(self) -> bool:
        """Whether the training ended without :meth:`end` (its thread or trainer is gone)."""
        if self.training.thread.is_alive() and self._trainer() is not None:
            return False
        self.training.status = "failed"
        self.training.error = "the training ended without its teardown (process exit or trainer lost)"
        return True

    def step(self) -> int:
        """Carry out the handed-over requests; send ready files, console lines and statistics.

        Returns:
            How many files are still being written.

        """
        inbox = self.training.inbox
        if self.problem:  # nothing to report to
            inbox.clear()
            return 0
        while inbox:
            method, args = inbox.popleft()
            try:
                method(self, *args)
            except Exception as exc:  # noqa: BLE001 - one bad request must not end the run's reporting
                message = "clearml-relay: run %s: a hook's deferred work failed, its data is missing: %r"
                self._once.log(log, logging.WARNING, type(exc).__name__, message, self.opened.id, exc)
        ready, waiting = self.watcher.poll()
        for item in ready:
            self._send(item)
        self._send_console()
        if ready:
            self._save_state()
        if self._sampler is not None and time.monotonic() >= self._next_stats:
            self._next_stats = time.monotonic() + float(self.options["stats_interval"])
            self._send_stats()
        return waiting

    def finish(self) -> None:
        """Wait (bounded) for helper threads and files still being written, send them, close the run."""
        if self.problem:
            log.error("clearml-relay: nothing was recorded for this training because %s", self.problem)
            self.training.closed()
            return
        timeout = float(self.options["late_files_timeout"])
        try:
            deadline = time.monotonic() + timeout
            for thread in threading.enumerate():
                if self.late_threads is not None and thread.name.endswith(self.late_threads):
                    thread.join(max(0.0, deadline - time.monotonic()))
            pause = threading.Event()
            while (waiting := self.step()) and time.monotonic() < deadline:
                pause.wait(0.05)
            if waiting:
                message = "clearml-relay: run %s: %d image files were still being written after %.0f s; %s"
                log.warning(message, self.opened.id, waiting, timeout, "not sent")
            self._save_state()
            self._send_stats()
        except Exception as exc:  # noqa: BLE001 - the run must still be closed
            log.warning("clearml-relay: background work of run %s failed: %r", self.opened.id, exc)
        finally:
            self.console.stop()  # a run that ended without its teardown no longer captures
            self._send_console()
            self.opened.close(self.training.status, self.training.error)
            self.training.closed()

    @property
    def opened(self) -> Run:
        """(Worker.) The run, which the worker opened before anything else."""
        if self.run is None:
            raise RuntimeError("the run is not open")
        return self.run

    def _send(self, item: Ready) -> None:
        send = self.opened.plot if item.kind == "plot" else self.opened.image
        send(item.title, item.series, item.iteration, item.path)

    def _send_stats(self) -> None:
        values = self._sampler.sample() if self._sampler is not None else None
        if values:  # nothing measurable off Linux without a GPU
            self.opened.stats(values)

    def _send_console(self) -> None:
        for level, text in self.console.drain():
            self.opened.text(text, level)

    def _save_state(self) -> None:
        save_dir = Path(self.save_dir)
        sent = {_relative(path, save_dir): list(v) for path, v in self.watcher.sent.items()}
        state = {"run_id": self.opened.id, "sent": sent}
        if state == self._state_written or not save_dir.is_dir():
            return
        path = save_dir / STATE_FILE
        try:
            temporary = path.with_suffix(".tmp")
            temporary.write_text(json.dumps(state))
            os.replace(temporary, path)
            self._state_written = state
        except OSError as exc:
            log.warning("clearml-relay: cannot write %s (a resume would start a new task): %s", path, exc)


def load_state(path: Path) -> tuple[str | None, dict[Path, Version]]:
    """The run id and sent file versions a previous training left in ``path``."""
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


def _relative(path: Path, base: Path) -> str:
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)
