"""Rate limiting of log messages: a hook called every iteration must not flood the trainer's log."""

from __future__ import annotations

import logging
import threading
from collections.abc import Hashable


class Once:
    """Remembers which keys were logged, so that each condition is reported one time."""

    def __init__(self) -> None:
        self._seen: set[Hashable] = set()
        self._lock = threading.Lock()

    def first(self, key: Hashable) -> bool:
        """True the first time ``key`` is seen, False after that."""
        with self._lock:
            if key in self._seen:
                return False
            self._seen.add(key)
            return True

    def log(self, logger: logging.Logger, level: int, key: Hashable, msg: str, *args: object) -> None:
        """Log ``msg % args`` at ``level`` unless ``key`` was logged before."""
        if self.first(key):
            logger.log(level, msg, *args)
