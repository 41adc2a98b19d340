"""Console capture: a logger's lines, each to the console of the training that logged it.

One :class:`Router` per logger and process (a ``logging.Handler``, installed once, off the
training thread): a training starts a :class:`Console` for its thread with one dict store, which
is all its first hook pays. ``emit`` runs on whatever thread logs: it formats the record and
appends it to a bounded deque, nothing else; the worker drains the console and sends the lines as
batched ``Run.text`` events. Nothing here logs or calls a ``Run`` method, so it cannot recurse
into logging, even when the run's own warnings reach the same logger.

Whose line is it (``record.thread``, which every record carries):

- a line of a thread whose training is on goes to that training's console; a line of a thread
  whose training ended goes nowhere (a ``model.val()`` after ``train()`` is no other run's);
- a line of any other thread (Ultralytics' plotting threads) goes to the one training that is on.
  With two trainings on, nothing tells which one started that thread (Python keeps no thread's
  parent), so the line is left out of both and counted, never mixed. It is held for ``HOLD``
  seconds first: a thread that starts a training logs a few lines (its arguments) before the
  training's first hook, which then shows they were no helper's; they are dropped.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import threading
import time
from typing import Final

from producer.wire import protocol

Level = protocol.TextLevel

#: Lines kept between two drains; beyond it lines are dropped and counted.
MAX_LINES: Final = 10_000
#: Seconds a line of a thread that runs no training waits before it is sent as the training's.
HOLD: Final = 2.0


def level_name(levelno: int) -> Level:
    """The ``Run.text`` level of a ``logging`` level number."""
    if levelno >= logging.ERROR:
        return "error"
    if levelno >= logging.WARNING:
        return "warning"
    return "info" if levelno >= logging.INFO else "debug"


class Console:
    """One training's console lines: filled on the threads that log, drained by the worker.

    Made ahead (off the training thread); :meth:`start` switches it on for the training's thread.

    Args:
        router: the router of the logger it captures.
        max_lines: lines kept until the next :meth:`drain`; more are dropped and counted.

    """

    __slots__ = ("_dropped", "_held", "_lines", "_max_lines", "_router", "_unattributed", "on", "thread")

    def __init__(self, router: Router, max_lines: int = MAX_LINES) -> None:
        self.thread: threading.Thread | None = None
        self.on = False
        self._router = router
        self._max_lines = max_lines
        self._lines: collections.deque[tuple[Level, str]] = collections.deque()
        #: Lines of threads that run no training: (monotonic time, thread, level, text).
        self._held: collections.deque[tuple[float, threading.Thread, Level, str]] = collections.deque()
        self._dropped = 0
        self._unattributed = 0  # lines of threads that run no training, while others were on

    def start(self, thread: threading.Thread) -> None:
        """(The training's thread.) Take ``thread``'s lines from now on: two stores."""
        self.thread, self.on = thread, True
        self._router._consoles[thread.ident] = self

    def stop(self) -> None:
        """Capture no more lines (its thread's later lines are no other training's either)."""
        self.on = False

    def add(self, level: Level, text: str | None, helper: threading.Thread | None = None) -> None:
        """(The logging thread.) Keep a line (None: it could not be formatted, counted as dropped).

        ``helper``: the thread that logged it, if it runs no training (the line is held).
        """
        if text is None or len(self._lines) + len(self._held) >= self._max_lines:
            self._dropped += 1
        elif helper is None:
            self._lines.append((level, text))
        else:
            self._held.append((time.monotonic(), helper, level, text))

    def left_out(self) -> None:
        """(The logging thread.) Count a helper thread's line that no one training can claim."""
        self._unattributed += 1

    def drain(self) -> list[tuple[Level, str]]:
        """The lines logged since the last drain, consecutive lines of one level joined.

        Lines of threads that run no training come once held ``HOLD`` seconds (all of them once
        the console is stopped), unless their thread started a training meanwhile.

        Returns:
            ``(level, text)`` pairs in logging order (held lines in the order they are released);
            warnings count dropped lines and lines left out as no training's, if any.

        """
        released = math.inf if not self.on else time.monotonic() - HOLD
        while self._held and self._held[0][0] <= released:  # only the draining thread pops
            _, thread, line_level, line = self._held.popleft()
            if self._router.console_of(thread) is None:
                self._lines.append((line_level, line))
        batches: list[tuple[Level, str]] = []
        lines: list[str] = []
        level: Level | None = None
        while self._lines:
            line_level, line = self._lines.popleft()
            if line_level != level and lines and level is not None:
                batches.append((level, "\n".join(lines)))
                lines = []
            level = line_level
            lines.append(line)
        if lines and level is not None:
            batches.append((level, "\n".join(lines)))
        dropped, self._dropped = self._dropped, 0
        if dropped:
            batches.append(("warning", f"clearml-relay: {dropped} console lines were dropped"))
        unattributed, self._unattributed = self._unattributed, 0
        if unattributed:
            left_out = f"clearml-relay: {unattributed} console lines of threads that run no training"
            batches.append(("warning", f"{left_out} were left out (several trainings ran in this process)"))
        return batches


class Router(logging.Handler):
    """A logger's one clearml-relay handler: it hands each line to the console it belongs to."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.setFormatter(logging.Formatter("%(message)s"))
        #: For each thread that started a training, the console of its last one (on or stopped).
        #: An ident is another thread's once its thread ended, so each use compares the thread.
        #: Each change is one atomic store; an entry is only ever replaced.
        self._consoles: dict[int | None, Console] = {}

    def console_of(self, thread: threading.Thread) -> Console | None:
        """The console of ``thread``'s current or last training; None if it ran none."""
        console = self._consoles.get(thread.ident)
        return console if console is not None and console.thread is thread else None

    def emit(self, record: logging.LogRecord) -> None:
        thread = threading.current_thread()  # emit runs on the thread that logs
        own = self.console_of(thread)
        if own is not None and not own.on:
            return  # the thread's training ended: the line is no other run's
        targets = [own] if own is not None else [c for c in list(self._consoles.values()) if c.on]
        if len(targets) > 1:  # a helper thread's line, and which training started it is unknown
            for console in targets:
                console.left_out()
            return
        try:
            text = self.format(record)
        except Exception:  # noqa: BLE001 - logging.Handler.handleError would print to stderr per line
            text = None
        for console in targets:
            console.add(level_name(record.levelno), text, helper=None if own is not None else thread)


_ROUTERS: dict[str, Router] = {}
_ROUTERS_LOCK = threading.Lock()  # one router per logger, or every line would be captured twice


def _new_lock() -> None:
    """(In a forked child.) A lock a parent's thread held at the fork would never be released."""
    global _ROUTERS_LOCK  # noqa: PLW0603 - the process's
    _ROUTERS_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_new_lock)


def router(logger: str) -> Router:
    """The router on ``logger``, installed on first use (``addHandler`` takes the logging lock)."""
    found = _ROUTERS.get(logger)
    if found is None:
        with _ROUTERS_LOCK:
            found = _ROUTERS.get(logger)
            if found is None:
                found = _ROUTERS[logger] = Router()
                logging.getLogger(logger).addHandler(found)
    return found
