"""Console capture: a ``logging.Handler`` that keeps a logger's lines for a run's console.

``emit`` runs on whatever thread logs (the training thread, mostly): it formats the record and
appends it to a bounded deque, nothing else. A background thread drains the deque and sends the
lines as batched ``Run.text`` events. The handler never logs and never calls a ``Run`` method
itself, so it cannot recurse into logging, even when the run's own warnings reach the same
logger.
"""

from __future__ import annotations

import collections
import logging
from typing import Final, Literal

Level = Literal["debug", "info", "warning", "error"]

#: Lines kept between two drains; beyond it lines are dropped and counted.
MAX_LINES: Final = 10_000
#: The level of a capture that is not capturing: above every level, so loggers skip it.
_OFF: Final = logging.CRITICAL + 100


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

    """

    def __init__(self, max_lines: int = MAX_LINES, *, started: bool = True) -> None:
        super().__init__(logging.NOTSET if started else _OFF)
        self.setFormatter(logging.Formatter("%(message)s"))
        self._lines: collections.deque[tuple[Level, str]] = collections.deque()
        self._max_lines = max_lines
        self._dropped = 0

    def start(self) -> None:
        """Capture every line from now on."""
        self.level = logging.NOTSET

    def stop(self) -> None:
        """Capture no more lines."""
        self.level = _OFF

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if len(self._lines) >= self._max_lines:
                self._dropped += 1
                return
            self._lines.append((level_name(record.levelno), self.format(record)))
        except Exception:  # noqa: BLE001 - logging.Handler.handleError would print to stderr per line
            self._dropped += 1

    def drain(self) -> list[tuple[Level, str]]:
        """The lines logged since the last drain, consecutive lines of one level joined.

        Returns:
            ``(level, text)`` pairs in logging order; a warning counts dropped lines, if any.

        """
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
        return batches
