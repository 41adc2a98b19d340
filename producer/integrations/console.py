"""Console capture: a ``logging.Handler`` that keeps a logger's lines for a run's console.

``emit`` runs on whatever thread logs (the training thread, mostly): it formats the record and
appends it to a bounded deque, nothing else. A background thread drains the deque and sends the
lines as batched ``Run.text`` events. The handler never logs and never calls a ``Run`` method
itself, so it cannot recurse into logging, even when the run's own warnings reach the same
logger.

Several trainings in threads of one process log into the one ``ultralytics`` logger, where each
has its capture. A capture started for a training's thread takes (by ``record.thread``, which
every record carries) the lines of that thread, never those of another training's thread nor of
a thread whose training ended (a ``model.val()`` after ``train()`` is no other run's). A line of
any other thread (Ultralytics' plotting threads) is the training's only while its capture is the
one on: with two trainings running nothing tells which one started that thread (Python keeps no
thread's parent), so the line is left out of both and counted, never mixed. And it is held for
``HOLD`` seconds first: a thread that starts a training logs a few lines (its arguments) before
the training's first hook, which then shows they were no helper's; they are dropped.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from typing import Final, Literal

Level = Literal["debug", "info", "warning", "error"]

#: Lines kept between two drains; beyond it lines are dropped and counted.
MAX_LINES: Final = 10_000
#: Seconds a line of a thread that runs no training waits before it is sent as the training's.
HOLD: Final = 2.0
#: The level of a capture that is not capturing: above every level, so loggers skip it.
_OFF: Final = logging.CRITICAL + 100

#: The registered captures that are on, and for each thread that started a training the capture
#: of its last one (on or stopped: a thread whose training ended is no helper of another). An
#: ident is another thread's once its thread ended, so each use compares the thread. Each change
#: is one atomic operation, made off the training thread (see ``ConsoleCapture.register``); an
#: entry is only ever replaced, by the next training of a thread with that ident.
_ON: set[ConsoleCapture] = set()
_TRAINING_THREADS: dict[int, ConsoleCapture] = {}


def _trained(thread: threading.Thread) -> bool:
    """Whether ``thread`` runs a training or ran one (its lines are no other training's)."""
    capture = _TRAINING_THREADS.get(thread.ident) if thread.ident is not None else None
    return capture is not None and capture._thread is thread


def level_name(levelno: int) -> Level:
    """The ``Run.text`` level of a ``logging`` level number."""
    if levelno >= logging.ERROR:
        return "error"
    if levelno >= logging.WARNING:
        return "warning"
    return "info" if levelno >= logging.INFO else "debug"


class ConsoleCapture(logging.Handler):
    """Collects formatted log lines for a background sender.

    It is switched on and off by its level (a logger compares each record's level with it before
    calling it): cheaper than adding and removing the handler, which takes the logging lock.

    Args:
        max_lines: lines kept until the next :meth:`drain`; more are dropped and counted.
        started: capture at once (else from :meth:`start` on).
        thread: with ``started``, the training's thread (see :meth:`start`).

    """

    def __init__(
        self, max_lines: int = MAX_LINES, *, started: bool = True, thread: threading.Thread | None = None
    ) -> None:
        super().__init__(_OFF)
        self.setFormatter(logging.Formatter("%(message)s"))
        self._lines: collections.deque[tuple[Level, str]] = collections.deque()
        self._max_lines = max_lines
        self._dropped = 0
        self._thread: threading.Thread | None = None
        self._unattributed = 0  # lines of threads that run no training, while others were on
        #: Lines of threads that run no training: (monotonic time, thread, level, text).
        self._held: collections.deque[tuple[float, threading.Thread, Level, str]] = collections.deque()
        if started:
            self.start(thread)

    def start(self, thread: threading.Thread | None = None) -> None:
        """Capture from now on every line, or a training's lines.

        Two attribute stores, as the training thread starts the training; :meth:`register`
        follows off that thread.

        Args:
            thread: the (running) thread of the training: the lines of that thread, and, once
                registered, those of threads that never ran a training while no other registered
                capture is on (None: every line).

        """
        self._thread = thread
        self.level = logging.NOTSET

    def register(self) -> None:
        """(Off the training thread.) Make the training's thread known to the other captures.

        They leave its lines out from now on (until then they hold them as no training's, then
        drop them, see :meth:`drain`), and this capture counts as on.
        """
        thread = self._thread
        if thread is not None and thread.ident is not None:
            _TRAINING_THREADS[thread.ident] = self  # a new training of the thread takes its lines over
            if self.level != _OFF:  # not stopped already; stop() after this line discards it again
                _ON.add(self)

    def stop(self) -> None:
        """Capture no more lines (its thread's later lines are no other training's either)."""
        self.level = _OFF
        _ON.discard(self)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            other: threading.Thread | None = None  # the thread, if it runs no training of ours
            if self._thread is not None:
                # logging.logThreads = False leaves record.thread None: emit runs on the logging thread.
                ident = record.thread if record.thread is not None else threading.get_ident()
                if ident != self._thread.ident:
                    other = threading.current_thread()
                    if _trained(other) or self not in _ON:
                        return  # another training's thread (running or ended), or not registered yet
                    if len(_ON) > 1:  # a helper thread's, and which training started it is unknown
                        self._unattributed += 1
                        return
            if len(self._lines) + len(self._held) >= self._max_lines:
                self._dropped += 1
                return
            level, line = level_name(record.levelno), self.format(record)
            if other is None:
                self._lines.append((level, line))
            else:
                self._held.append((time.monotonic(), other, level, line))
        except Exception:  # noqa: BLE001 - logging.Handler.handleError would print to stderr per line
            self._dropped += 1

    def drain(self) -> list[tuple[Level, str]]:
        """The lines logged since the last drain, consecutive lines of one level joined.

        Lines of threads that run no training come once held ``HOLD`` seconds (all of them once
        the capture is stopped), unless their thread started a training meanwhile.

        Returns:
            ``(level, text)`` pairs in logging order (held lines in the order they are released);
            warnings count dropped lines and lines left out as no training's, if any.

        """
        released = math.inf if self.level == _OFF else time.monotonic() - HOLD
        while self._held and self._held[0][0] <= released:  # only the draining thread pops
            _, thread, line_level, line = self._held.popleft()
            if not _trained(thread):
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
