"""The process's one hooks thread: it opens every training's run, feeds it, and has it closed.

A training's first hook hands its :class:`~producer.integrations.reporter.Reporter` over through
a queue (one wake-up, about 20 us); its end wakes the thread once more, so that the files handed
over are copied at once.
Between the two, the thread looks at each reporter every :data:`TICK`, and the hooks wake
nothing. A reporter that has ended is finished (late files, then the run's close) on a thread of
its own, so that one run's close never delays another training's reporting.

The thread is started off the training thread (by ``attach()``, by taking the module's
``callbacks``, or in a DDP child as the hooks are unpickled): ``Thread.start`` waits for the new
thread to run. It is not a daemon, so a script that ends right after ``model.train()`` still
delivers its run; it ends once the main thread has ended and no reporter is left. A forked child
(a different ``os.getpid()``) gets a thread of its own on first use.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from typing import Final

from producer.integrations.reporter import Reporter

log = logging.getLogger(__name__)

#: Seconds between two looks at each reporter: new files and console lines are sent within it.
TICK: Final = 0.5


class Worker:
    """One thread that serves the reporters handed to it."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self._queue: queue.SimpleQueue[Reporter | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="clearml-relay-hooks")
        self._thread.start()

    def usable(self) -> bool:
        """Whether the thread runs in this process (not a forked child's copy, not ended)."""
        return self.pid == os.getpid() and self._thread.is_alive()

    def add(self, reporter: Reporter) -> None:
        """(Training thread.) Serve a training's reporter from now on."""
        self._queue.put(reporter)

    def wake(self) -> None:
        """(Training thread.) Look at the reporters now: one of them has ended."""
        self._queue.put(None)

    def _serve(self) -> None:
        reporters: list[Reporter] = []
        while reporters or threading.main_thread().is_alive() or not self._queue.empty():
            try:
                item = self._queue.get(timeout=TICK)
            except queue.Empty:
                item = None
            if item is not None and item.open():
                reporters.append(item)
            for reporter in list(reporters):
                if not reporter.ending and not reporter.gone() and _stepped(reporter):
                    continue
                reporters.remove(reporter)
                _finish(reporter)


def _stepped(reporter: Reporter) -> bool:
    try:
        reporter.step()
    except Exception as exc:  # noqa: BLE001 - the run must still be closed, the worker go on
        log.warning(
            "clearml-relay: background work of run %s failed: %r", reporter.run and reporter.run.id, exc
        )
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
    with _LOCK:
        if _WORKER is None or not _WORKER.usable():
            _WORKER = Worker()
        return _WORKER
