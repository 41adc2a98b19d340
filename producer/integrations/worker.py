"""The process's one hooks thread: it opens every training's run, feeds it, and has it closed.

A training's first hook appends its :class:`~producer.integrations.reporter.Training` to the
worker's deque and wakes nothing: the thread looks every :data:`TICK` at new trainings and at
each run it serves (so a run opens, and the hooks' requests are carried out, within a tick). A
training's end wakes it, so that the files handed over are copied at once; that run is finished
(late files, then its close) on a thread of its own, so that one run's close never delays
another training's reporting.

The thread is started off the training thread (by ``attach()``, by taking the module's
``callbacks``, or in a DDP child as the hooks are unpickled): ``Thread.start`` waits for the new
thread to run. It is not a daemon, so a script that ends right after ``model.train()`` still
delivers its run; it ends once the main thread has ended and no run is left. A forked child
(another ``os.getpid()``) gets a thread of its own on first use.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import queue
import threading
from typing import Final

from producer.integrations.reporter import Reporter, Training

log = logging.getLogger(__name__)

#: Seconds between two looks: new runs open and files and console lines are sent within it.
TICK: Final = 0.5


class Worker:
    """One thread that serves the trainings handed to it."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.done = False  # the thread has ended: the next training needs a new worker
        self._new: collections.deque[Training] = collections.deque()
        self._wakes: queue.SimpleQueue[None] = queue.SimpleQueue()  # put() is one C call
        self._thread = threading.Thread(target=self._serve, name="clearml-relay-hooks")
        self._thread.start()

    def usable(self) -> bool:
        """Whether the thread serves this process (not a forked child's copy, not ended)."""
        return self.pid == os.getpid() and not self.done

    def add(self, training: Training) -> None:
        """(Training thread.) Serve a training from the next tick on; wakes nothing."""
        self._new.append(training)

    def wake(self) -> None:
        """(Any thread.) Look now: a training has ended."""
        self._wakes.put(None)

    def _serve(self) -> None:
        reporters: list[Reporter] = []
        try:
            while reporters or self._new or threading.main_thread().is_alive():
                with contextlib.suppress(queue.Empty):
                    self._wakes.get(timeout=TICK)
                    while not self._wakes.empty():  # one look serves every wake-up so far
                        self._wakes.get_nowait()
                while self._new:
                    reporter = _opened(self._new.popleft())
                    if reporter is not None:
                        reporters.append(reporter)
                for reporter in list(reporters):
                    if not reporter.ending and not reporter.gone() and _stepped(reporter):
                        continue
                    reporters.remove(reporter)
                    _finish(reporter)
        finally:
            self.done = True


def _opened(training: Training) -> Reporter | None:
    try:
        reporter = training.reporter()
        training.refill()
    except Exception as exc:  # noqa: BLE001 - the training goes on without reporting
        log.warning("clearml-relay: cannot set up the run of a training, nothing is reported: %r", exc)
        training.console.stop()
        training.closed()
        return None
    reporter.open()  # one that cannot open is served too: its training's end says so
    return reporter


def _stepped(reporter: Reporter) -> bool:
    try:
        reporter.step()
    except Exception as exc:  # noqa: BLE001 - the run must still be closed, the worker go on
        run = reporter.run.id if reporter.run is not None else None
        log.warning("clearml-relay: background work of run %s failed: %r", run, exc)
        return False
    return True


def _finish(reporter: Reporter) -> None:
    try:
        threading.Thread(target=reporter.finish, name="clearml-relay-close").start()
    except RuntimeError:  # no new threads at interpreter shutdown: finish here
        reporter.finish()


_WORKER: Worker | None = None
_LOCK = threading.Lock()  # two trainings starting at once in a fresh process start one worker


def _new_lock() -> None:
    """(In a forked child.) A lock a parent's thread held at the fork would never be released."""
    global _LOCK  # noqa: PLW0603 - the process's
    _LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):  # POSIX; which worker is this process's is still os.getpid()'s call
    os.register_at_fork(after_in_child=_new_lock)


def worker() -> Worker:
    """The worker of this process, started on first use (again in a forked child)."""
    global _WORKER  # noqa: PLW0603 - one per process
    current = _WORKER
    if current is not None and current.usable():
        return current
    with _LOCK:
        if _WORKER is None or not _WORKER.usable():
            _WORKER = Worker()
        return _WORKER
