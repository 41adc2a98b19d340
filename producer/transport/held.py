"""Files waiting for room in the spool, and when the writer tries them again (writer thread only).

A file event whose file finds no room in the spool (``ENOSPC``, ``EDQUOT``) is held, with the
file events and the RunClose of its run that come after it, and tried again on a schedule that
doubles from :data:`HOLD_RETRY_MIN` to :data:`HOLD_RETRY_MAX`. Once the run's RunClose is held,
its files wait half the flush timeout more (tried often now); after that, a file that still
finds no room is recorded as a gap, so that the run still ends.
"""

from __future__ import annotations

import errno
import logging
import math
import time
from typing import Final

from producer.config import ProducerConfig
from producer.transport.outbox import free_bytes
from producer.transport.payload import source_name, source_size
from producer.transport.runstate import Handoff, RunState
from producer.transport.tally import Tally
from producer.wire import protocol

# The name the client's messages have always been logged under.
log = logging.getLogger("producer.transport.client")

#: Errors that mean the spool has no room (they may pass: held files are tried again).
NO_ROOM: Final = frozenset({errno.ENOSPC, errno.EDQUOT})
#: Retry interval of files held for room in the spool: doubles from MIN to MAX.
HOLD_RETRY_MIN: Final = 0.2
HOLD_RETRY_MAX: Final = 5.0


class HeldFiles:
    """Which runs hold hand-offs back for room in the spool, and when to try them again.

    The hand-offs themselves wait in each run's :attr:`RunState.held`, in order.
    """

    def __init__(self, config: ProducerConfig, tally: Tally) -> None:
        self._config = config
        self._tally = tally
        self._holding: set[RunState] = set()
        self._retry_at = math.inf
        self._retry_delay = HOLD_RETRY_MIN

    def __bool__(self) -> bool:
        return bool(self._holding)

    def due(self, now: float) -> bool:
        """Whether held hand-offs should be tried again now."""
        return bool(self._holding) and now >= self._retry_at

    def hold(self, item: Handoff, now: float) -> None:
        """Keep a hand-off until the spool has room for its file (or the run's end gives up)."""
        state = item.run
        state.held.append(item)
        if isinstance(item.event, protocol.RunClose):
            # The run ends: its files wait half its flush timeout more (tried often now), and
            # the other half delivers what follows.
            state.held_deadline = min(state.held_deadline, now + self._config.flush_timeout / 2)
            self._retry_delay = HOLD_RETRY_MIN
            self._retry_at = min(self._retry_at, now + HOLD_RETRY_MIN)
        if state not in self._holding:
            self._holding.add(state)
            self._retry_at = min(self._retry_at, now + self._retry_delay)

    def take(self) -> list[Handoff]:
        """Every held hand-off, in order per run, to be written again (they are no longer held)."""
        items: list[Handoff] = []
        for state in self._holding:
            items.extend(state.held)
            state.held.clear()
        self._holding.clear()
        self._retry_at = math.inf
        return items

    def retried(self, now: float) -> None:
        """After writing what :meth:`take` gave: back off while something is held again."""
        if self._holding:
            self._retry_delay = min(2 * self._retry_delay, HOLD_RETRY_MAX)
            self._retry_at = now + self._retry_delay
        else:
            self._retry_delay = HOLD_RETRY_MIN

    def give_up(self) -> None:
        """At stop: the next try is the last one; what still finds no room becomes a gap."""
        for state in self._holding:
            state.held_deadline = -math.inf

    def no_room(self, item: Handoff, seq: int, exc: OSError) -> protocol.Gap | None:
        """A file that finds no room in the spool: held (None), or after the deadline, the gap to record."""
        state, event = item.run, item.event
        assert item.source is not None
        spool_dir = self._config.spool_dir
        needed = source_size(item.source)
        free = free_bytes(spool_dir)
        where = f"the spool {spool_dir} ({describe_bytes(free)} free, the file is {describe_bytes(needed)})"
        name = source_name(item.source)
        now = time.monotonic()
        if now < state.held_deadline:
            self._tally.log_once(
                log,
                logging.WARNING,
                ("no-room", state.run_id),
                "clearml-relay: no room in %s for %s of run %s (%s); it is copied once room is freed, "
                "until the run's close has waited half its flush timeout",
                where,
                name,
                state.run_id,
                exc.strerror or exc,
            )
            self.hold(item, now)
            return None
        self._tally.count("files_dropped_no_room")
        state.lost += 1
        kind = type(event).__name__
        reason = f"{kind} {name} was not recorded: no room in {where}"
        log.error(
            "clearml-relay: run %s ends without its %s %s: no room in %s; the collector records a gap in "
            "its place",
            state.run_id,
            kind.lower(),
            name,
            where,
        )
        return protocol.Gap(run=state.run_id, seq=seq, last=seq, ts=time.time(), reason=reason)


def describe_bytes(n: int | None) -> str:
    """``n`` bytes for a message: "512 bytes", "1.5 MB", "unknown"."""
    if n is None:
        return "unknown"
    if n < 10_000:
        return f"{n} bytes"
    value = n / 1000
    for unit in ("kB", "MB"):
        if value < 1000:
            return f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"
