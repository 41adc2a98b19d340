"""One run's stream window: a pure state machine, no sockets, no threads, no clock of its own.

The sender keeps in memory only a bounded window of a run's events: read from the outbox and
not yet acknowledged. :class:`StreamWindow` decides what is sent next and what an ``Ack``, a
``Nack``, silence or a refusal does to it; the sender does the reading, encoding and sending,
and passes the time in. The window holds events in seq order: ``events[:sent]`` are in flight,
the rest wait their turn; an event whose file is not yet on the collector blocks those after it.
"""

from __future__ import annotations

import collections
import enum
from typing import Final, NamedTuple

from producer.wire import protocol

#: Events read and not yet acked, per run: the memory bound while the collector is away.
WINDOW_EVENTS: Final = 5000
WINDOW_BYTES: Final = 32 * 1024 * 1024
#: One Submit holds at most this many events or this many bytes of events.
BATCH_EVENTS: Final = 500
BATCH_BYTES: Final = 1024 * 1024
#: No ack progress for this long with events in flight: send them again.
RESEND_AFTER: Final = 2.0
#: A Nack for the same ``expect`` within this time is an echo of out-of-order events in flight.
NACK_QUIET: Final = 1.0


class Entry(NamedTuple):
    """One event of the window: ``seq`` .. ``last`` (a Gap covers several seqs)."""

    seq: int
    last: int
    body: bytes
    file: protocol.FileRef | None


class Batch(NamedTuple):
    """Send these bodies in one Submit, then call :meth:`StreamWindow.sent_through` with ``end``."""

    bodies: list[bytes]
    end: int


class NackOutcome(enum.Enum):
    """What a ``Nack`` did to the window."""

    ECHO = "echo"  # the same expect again within NACK_QUIET: nothing to do
    LOST_ACKED = "lost-acked"  # the collector asks for events already acked: send it a gap
    REWOUND = "rewound"  # sending goes back to the first event it asks for
    IGNORED = "ignored"  # it asks for nothing in flight


class StreamWindow:
    """Which of one run's events are read, in flight and acknowledged.

    Args:
        acked: the run's acknowledged position when the window starts (reading starts after it).
        max_events, max_bytes: the window's bounds: reading stops once either is reached.
        batch_events, batch_bytes: the bounds of one Submit (and of one read).
        resend_after: silence (no ack progress) after which what is in flight is sent again.
        nack_quiet: a repeated Nack within this time is an echo.

    """

    def __init__(
        self,
        acked: int,
        *,
        max_events: int = WINDOW_EVENTS,
        max_bytes: int = WINDOW_BYTES,
        batch_events: int = BATCH_EVENTS,
        batch_bytes: int = BATCH_BYTES,
        resend_after: float = RESEND_AFTER,
        nack_quiet: float = NACK_QUIET,
    ) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.batch_events = batch_events
        self.batch_bytes = batch_bytes
        self.resend_after = resend_after
        self.nack_quiet = nack_quiet
        self.events: collections.deque[Entry] = collections.deque()
        self.bytes = 0
        #: Entries sent and in flight: ``events[:sent]``.
        self.sent = 0
        #: Highest seq the collector acknowledged (cumulative).
        self.acked = acked
        #: The seq the next record read from the outbox should have.
        self.read_next = acked + 1
        #: Files (sha256) the collector holds: their events may be sent.
        self.files_done: set[str] = set()
        self.last_progress = 0.0
        self._last_nack: tuple[int, float] = (0, 0.0)
        #: Refused by the collector: nothing is sent before this time.
        self.paused_until = 0.0

    # --------------------------------------------------------------------------- reading

    def room(self) -> int:
        """How many records one read may add (0: the window is full)."""
        if len(self.events) >= self.max_events or self.bytes >= self.max_bytes:
            return 0
        return min(self.batch_events, self.max_events - len(self.events))

    def missing_before(self, seq: int) -> tuple[int, int] | None:
        """The seqs a record read at ``seq`` skips (damaged records), for a gap; None if none."""
        return (self.read_next, seq - 1) if seq > self.read_next else None

    def push(self, entry: Entry) -> None:
        """Add the next entry read (a record, or a gap for the records before it)."""
        self.events.append(entry)
        self.bytes += len(entry.body)
        self.read_next = entry.last + 1

    def find(self, seq: int) -> Entry | None:
        return next((e for e in self.events if e.seq == seq), None)

    def replace(self, entry: Entry, gap: Entry) -> None:
        """Send ``gap`` in place of ``entry`` (whose file cannot be sent)."""
        index = self.events.index(entry)
        self.events[index] = gap
        self.bytes += len(gap.body) - len(entry.body)

    # --------------------------------------------------------------------------- sending

    def paused(self, now: float) -> bool:
        return now < self.paused_until

    def blocked(self, entry: Entry) -> bool:
        """Whether ``entry`` waits for its file to be on the collector."""
        return entry.file is not None and entry.file.sha256 not in self.files_done

    def next_step(self) -> Batch | Entry | None:
        """What to send next: a batch, an entry whose file goes first, or None (all is in flight)."""
        if self.sent >= len(self.events):
            return None
        if self.blocked(self.events[self.sent]):
            return self.events[self.sent]
        bodies: list[bytes] = []
        size = 0
        end = self.sent
        while end < len(self.events) and len(bodies) < self.batch_events:
            item = self.events[end]
            if self.blocked(item):
                break
            if bodies and size + len(item.body) > self.batch_bytes:
                break
            bodies.append(item.body)
            size += len(item.body)
            end += 1
        return Batch(bodies, end)

    def sent_through(self, end: int, now: float) -> int:
        """A batch up to ``end`` went out; returns how many entries it held."""
        if self.sent == 0:
            self.last_progress = now  # nothing was in flight: the silence clock starts now
        count = end - self.sent
        self.sent = end
        return count

    def file_done(self, sha256: str) -> None:
        self.files_done.add(sha256)

    # ------------------------------------------------------------------------- answers

    def ack(self, position: int, now: float) -> bool | None:
        """A cumulative ack through ``position``: release what it covers.

        Returns:
            None when it acknowledges nothing new (a late or repeated ack); otherwise whether
            the outbox must be read again from after ``position`` (it went past what was read).

        """
        if position <= self.acked:
            return None
        self.acked = position
        popped = 0
        while self.events and self.events[0].last <= position:
            self.bytes -= len(self.events.popleft().body)
            popped += 1
        self.sent = max(0, self.sent - popped)
        self.last_progress = now
        if position >= self.read_next:
            self.read_next = position + 1
            return True
        return False

    def nack(self, expect: int, now: float) -> NackOutcome:
        """The collector expects ``expect`` next: rewind to it (an echo changes nothing)."""
        last_expect, when = self._last_nack
        if expect == last_expect and now - when < self.nack_quiet:
            return NackOutcome.ECHO  # every out-of-order event in flight answers with the same Nack
        self._last_nack = (expect, now)
        if expect <= self.acked:
            return NackOutcome.LOST_ACKED
        for index in range(self.sent):
            if self.events[index].last >= expect:
                self.sent = index
                self.last_progress = now
                return NackOutcome.REWOUND
        return NackOutcome.IGNORED

    def check_silence(self, now: float) -> bool:
        """True (and everything in flight is due again) after ``resend_after`` without progress.

        What was in flight may be lost (collector restarted, reconnect): it is sent again from
        ``acked + 1``; the collector dedups.
        """
        if self.sent and now - self.last_progress > self.resend_after:
            self.sent = 0
            self.last_progress = now
            return True
        return False

    def pause(self, until: float) -> None:
        """Refused: send nothing before ``until``, then again from the acknowledged position."""
        self.paused_until = until
        self.sent = 0
