"""What the producer's threads know about one run, and what the caller hands to the writer.

Threads and the state each owns (only the owner writes; the others may read):

* caller (the training thread, ``Run`` methods): the hand-off deque's tail and
  :attr:`RunState.closing`;
* writer (:mod:`producer.transport.writer`): the hand-off deque's head; of owned runs
  :attr:`~RunState.outbox` and :attr:`~RunState.start_acked`; :attr:`~RunState.next_seq`,
  :attr:`~RunState.held` and its deadline, :attr:`~RunState.failed`, :attr:`~RunState.closed`;
  the outboxes' log appends and spooled files (a large file's sha256 is computed by a helper
  thread of the copy, ``clearml-relay-hash``, which shares nothing else and ends with the copy:
  :mod:`producer.transport.hashcopy`);
* sender (:mod:`producer.transport.sender`): the socket; every stream (its window, file
  transfer, log reader and open blob); :attr:`~RunState.refused`, :attr:`~RunState.removed`;
  the outboxes' ack cursors and their deletion; the RunStates of adopted outboxes, made for it
  by ``Client.adopt``.

:attr:`RunState.problem` says why a run failed (writer) or was refused (sender): a run whose
outbox never opened has nothing to send, so the two never meet. :attr:`RunState.lost` is the
one field two threads add to: the caller counts overflow drops there without a lock (it may
undercount; it never reads 0 after a drop).

What one thread must see of another's progress goes through few, explicit channels: the
client's condition (``Client._cond``: the run registry, flush marks, :attr:`RunState.closed`;
flushes wait on it, writer and sender notify it), the counters
(:class:`~producer.transport.tally.Tally`, their own lock), the hand-off deque (atomic appends
and pops), and the wake-ups (an ``Event`` for the writer, an inproc socket for the sender).
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass, field
from typing import Final, NamedTuple

from producer.transport.outbox import Outbox
from producer.transport.payload import Payload
from producer.wire import protocol


@dataclass(eq=False)
class RunState:
    """What the client knows about one run's outbox; shared by the caller, writer and sender.

    Attributes:
        run_id: the run.
        owned: created by a ``Run`` in this process (False: a leftover outbox adopted).
        outbox: opened by the writer on the first event (owned) or at adoption.
        next_seq: the next sequence number (writer thread only).
        closing: a RunClose was handed off; the run takes no more events.
        closed: the RunClose is in the outbox.
        failed: the outbox could not be opened; the run's events are dropped (nothing is on
            disk); ``problem`` says why.
        refused: the collector will not take this run's events from this outbox (another
            writer uses the run id); they stay in the outbox; ``problem`` says why.
        problem: why the run failed or was refused.
        lost: events of this run the producer could not record (its disk, its bounds); each is
            counted under its reason in the client's stats and logged.
        held: file events (and the RunClose after them) waiting for room in the spool (writer
            thread only); ``held_deadline``: when the writer gives up on them (monotonic).
        removed: delivered completely and its directory deleted.
        start_acked: acked position when this client took the run over (progress reports).

    """

    run_id: str
    owned: bool
    outbox: Outbox | None = None
    next_seq: int = 1
    closing: bool = False
    closed: bool = False
    failed: bool = False
    refused: bool = False
    problem: str = ""
    lost: int = 0
    held: collections.deque[Handoff] = field(default_factory=collections.deque)
    held_deadline: float = math.inf
    removed: bool = False
    start_acked: int = 0

    def finished(self) -> bool:
        """Nothing more will happen to this run's events: delivered, or undeliverable."""
        if self.failed or self.refused or self.removed:
            return True
        return not self.held and (self.outbox is None or self.outbox.fully_acked())

    def delivered(self) -> bool:
        """Finished, and every event the run was given reached the collector."""
        return self.finished() and not (self.failed or self.refused or self.lost)

    def unacked(self) -> int:
        """Events of this run in its outbox that the collector has not acknowledged."""
        if self.outbox is None or self.removed:
            return 0
        return max(0, self.outbox.last_seq - self.outbox.acked)


class Handoff(NamedTuple):
    """One event handed from the caller to the writer (``source``: the file it refers to)."""

    run: RunState
    event: protocol.Event
    source: str | Payload | None


class FlushMark:
    """Queued by a flush: once the writer reaches it, everything handed off before is written.

    The deque is first in, first out, so no per-run counting is needed on the caller's path.
    ``done`` is set by the writer under the client's condition.
    """

    def __init__(self, runs: list[RunState]) -> None:
        self.runs = runs
        self.done = False


#: Queued by ``Client.stop``: the writer writes what came before it, then ends.
STOP: Final = "stop"
#: What the caller hands to the writer.
Item = Handoff | FlushMark | str
