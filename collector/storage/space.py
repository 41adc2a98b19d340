"""Running out of room: a full disk or the journal's size cap, as episodes that are logged and counted.

When the collector cannot store what producers send, it refuses with ``backoff`` and the
producers keep spooling; nothing is lost. Every refused message would otherwise log a line (or a
traceback) many times a second for as long as the disk stays full, so each storage area tracks an
*episode*: one warning when it starts, one line when it ends (with how long it lasted), and a
count of episodes (``<name>_full``) and of refused writes for the status reply and metrics.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from typing import Final

from collector.counters import Counters

log = logging.getLogger(__name__)

#: ``errno`` values that mean "no room": a full filesystem, or the user's quota.
_FULL: Final = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` is a write failing for want of space (not a broken disk or a bad path)."""
    return isinstance(exc, OSError) and exc.errno in _FULL


class Episodes:
    """Whether one storage area is full now, with an episode logged once at each edge.

    Args:
        name: The area in counter names (``journal_disk``, ``files_disk``, ``journal_cap``).
        what: The area in log lines.
        counters: Where ``<name>_full`` (episodes) is counted.

    """

    def __init__(self, name: str, what: str, counters: Counters) -> None:
        self.name = name
        self.what = what
        self.counters = counters
        self._lock = threading.Lock()
        self._since: float | None = None

    @property
    def full(self) -> bool:
        return self._since is not None

    def failed(self, detail: str) -> None:
        """A write did not fit: starts an episode (logged once) unless one is going on."""
        with self._lock:
            if self._since is not None:
                return
            self._since = time.monotonic()
        self.counters.incr(f"{self.name}_full")
        log.warning(
            "%s: no room (%s): producers are told to back off and keep spooling until there is room",
            self.what,
            detail,
        )

    def fits(self) -> None:
        """A write fitted again: ends the episode going on, if any."""
        with self._lock:
            since, self._since = self._since, None
        if since is not None:
            log.warning(
                "%s has room again after %.1f s: accepting again", self.what, time.monotonic() - since
            )
