"""Journal records into the batches an applier hands its backend: events of one kind, in order.

An applier reads a run's journal from its applied position + 1 and turns the records into events:

- a record at or below the position (a reader restarted behind it) is skipped;
- a jump in seq (journal damage the checksum caught) becomes a synthesized ``Gap`` before the
  next record, counted as ``journal_gaps``, so the run goes on and the loss shows in its task;
- a record that does not decode, or holds another run's or seq's event, becomes a ``Gap`` of its
  own seq, counted as ``journal_undecodable``.

The events are then cut into batches of consecutive events of one kind (at most
:data:`BATCH_EVENTS` each): a backend reports a batch of scalars in one go, and the time it took
is shared by the batch's events in the ``apply.<kind>`` histogram.
"""

from __future__ import annotations

import collections
import itertools
import logging
from collections.abc import Iterator, Sequence
from typing import Final

from collector.counters import Counters
from collector.storage.journal import Entry, kind, through
from producer.wire import protocol
from producer.wire.recordlog import Record

log = logging.getLogger("collector.pipeline.appliers")  # split out of appliers: log lines keep its name

#: The most events in one batch (what one journal read returns at most).
BATCH_EVENTS: Final = 1024
#: The most events, and bytes of their journal records, a run keeps from its latest commits
#: (see :class:`Recent`).
RECENT_EVENTS: Final = 2 * BATCH_EVENTS
RECENT_BYTES: Final = 1024 * 1024


class Recent:
    """The events a run's latest journal commits hold, decoded, while they wait to be applied.

    The ingest thread decoded every event it journaled; an applier that is keeping up takes them
    from here instead of reading its journal back and decoding it again (on the benchmark's load
    that read, its checksums and the second decode were a fifth of the collector's CPU). Only a
    contiguous stretch of seqs is kept, at most :data:`RECENT_EVENTS` events and
    :data:`RECENT_BYTES` of their journal records: a commit that does not follow it, or does not
    fit, is not kept, and the applier reads those events from the journal (as after a restart or
    a rewind), up to the stretch. Guarded by the appliers' lock.
    """

    def __init__(self) -> None:
        self._events: collections.deque[protocol.Event] = collections.deque()
        self._sizes: collections.deque[int] = collections.deque()
        self._bytes = 0

    def add(self, entries: Sequence[Entry], applied: int) -> None:
        """Keep a commit's events if they follow what is kept; first drop what is applied."""
        self._drop_below(applied + 1)
        kept = self._events
        size = sum(len(entry.body) for entry in entries)
        if not entries or len(kept) + len(entries) > RECENT_EVENTS or self._bytes + size > RECENT_BYTES:
            return
        if kept and entries[0].seq != through(kept[-1]) + 1:
            return
        # Perhaps after a stretch only the journal holds: the applier reads up to it first.
        kept.extend(entry.event for entry in entries)
        self._sizes.extend(len(entry.body) for entry in entries)
        self._bytes += size

    def take(self, start: int, limit: int) -> list[protocol.Event]:
        """Up to ``limit`` kept events from seq ``start`` on; [] if ``start`` is not kept."""
        self._drop_below(start)
        kept = self._events
        if not kept or kept[0].seq != start:
            return []
        return list(itertools.islice(kept, limit))

    def _drop_below(self, seq: int) -> None:
        kept = self._events
        while kept and through(kept[0]) < seq:
            kept.popleft()
            self._bytes -= self._sizes.popleft()

    def first(self) -> int | None:
        """The first seq kept (None if nothing is): the journal is read up to it, not beyond."""
        return self._events[0].seq if self._events else None


def events_from(
    run: str, records: Sequence[Record], applied: int, counters: Counters
) -> list[protocol.Event]:
    """The events ``records`` hold after position ``applied``, gaps synthesized (see the module doc)."""
    events: list[protocol.Event] = []
    expected = applied + 1
    for record in records:
        if record.seq < expected:
            continue  # already applied (a reader restarted behind the position)
        if record.seq > expected:
            counters.incr("journal_gaps")
            log.warning(
                "run %s: journal lost seq %d..%d, applying a gap",
                run,
                expected,
                record.seq - 1,
                extra={"run": run, "kind": "gap"},
            )
            events.append(
                protocol.Gap(
                    run=run, seq=expected, last=record.seq - 1, reason="journal damage on the collector"
                )
            )
        event = _decoded(run, record, counters)
        events.append(event)
        expected = through(event) + 1
    return events


def _decoded(run: str, record: Record, counters: Counters) -> protocol.Event:
    event: protocol.Event | None
    try:
        event, reason = protocol.decode_event(record.body), ""
    except protocol.ProtocolError as exc:
        event, reason = None, exc.reason
    if event is not None and (event.run != run or event.seq != record.seq):
        reason = f"record {record.seq} holds event {event.run}/{event.seq}"
        event = None
    if event is not None:
        return event
    counters.incr("journal_undecodable")
    log.error("run %s: journal record %d cannot be applied: %s", run, record.seq, reason, extra={"run": run})
    return protocol.Gap(run=run, seq=record.seq, last=record.seq, reason=reason[:1000])


def batches(events: Sequence[protocol.Event]) -> Iterator[tuple[str, list[protocol.Event]]]:
    """``(kind, events)`` for each stretch of consecutive events of one kind, in order."""
    batch: list[protocol.Event] = []
    batch_kind = ""
    for event in events:
        name = kind(event)
        if batch and (name != batch_kind or len(batch) >= BATCH_EVENTS):
            yield batch_kind, batch
            batch = []
        batch_kind = name
        batch.append(event)
    if batch:
        yield batch_kind, batch


class Pending:
    """The events of a batch still to apply (after a partial failure: from the one that failed).

    ``str`` says which, for a log line.
    """

    def __init__(self, name: str, events: list[protocol.Event]) -> None:
        self.name = name
        self.events = events

    def __str__(self) -> str:
        first, last = self.events[0].seq, through(self.events[-1])
        seqs = f"seq {first}" if first == last else f"seqs {first}..{last}"
        return f"applying {seqs} ({self.name})"
