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

import logging
from collections.abc import Iterator, Sequence
from typing import Final

from collector.counters import Counters
from collector.storage.journal import kind, through
from producer.wire import protocol
from producer.wire.recordlog import Record

log = logging.getLogger("collector.pipeline.appliers")  # split out of appliers: log lines keep its name

#: The most events in one batch (what one journal read returns at most).
BATCH_EVENTS: Final = 1024


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
