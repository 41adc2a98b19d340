"""The writer thread: numbers, spools, encodes and appends the events the caller hands off.

The writer polls the hand-off deque (every millisecond while events flow, backing off to
:data:`MAX_POLL` when idle; a flush or a stop wakes it at once), assigns sequence numbers,
copies referenced files into the outbox, appends the encoded events in batches (one append per
run per batch) and wakes the sender thread. It owns the runs' writer-side state
(:mod:`producer.transport.runstate` says which) and the files held for room in the spool
(:class:`~producer.transport.held.HeldFiles`); it reaches the other threads only through the
client's condition (flush marks, :attr:`RunState.closed`), the tally and the sender's wake socket.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from typing import Final

import zmq

from producer.config import ProducerConfig
from producer.context import complete_context
from producer.transport.held import NO_ROOM, HeldFiles, describe_bytes
from producer.transport.outbox import Outbox, SpoolWriteError, free_bytes
from producer.transport.payload import Payload, PayloadError, PendingBytes
from producer.transport.runstate import FlushMark, Handoff, Item, RunState
from producer.transport.tally import Tally
from producer.wire import protocol, reports

# The name the client's messages have always been logged under.
log = logging.getLogger("producer.transport.client")

#: Most hand-offs the writer takes from the queue for one batch (one write per run per batch).
WRITE_BATCH: Final = 5000
#: An encoded event must leave room in a Submit body for its batch overhead.
MAX_EVENT_BYTES: Final = protocol.MAX_BODY_BYTES - 64 * 1024
#: A Logger call larger than this travels in a file (chunks, sha256) instead of its event.
INLINE_CALL_BYTES: Final = 256 * 1024
#: Writer poll interval while events flow, and the longest one when idle.
MIN_POLL: Final = 0.001
MAX_POLL: Final = 0.02


class Writer:
    """The loop of the writer thread.

    Args:
        config: spool directory, bounds, fsync policy, flush timeout.
        tally: the client's counters and once-only messages.
        cond: the client's condition: flush marks and closed runs are published under it.
        queue: the hand-off deque (the caller appends, only this thread pops).
        wake: set to wake the writer at once (flush, stop).
        sender_wake: the inproc socket that wakes the sender; this thread's alone, closed at the end.
        pending_bytes: the memory Logger payloads hold; given back as each one is written.

    """

    def __init__(
        self,
        config: ProducerConfig,
        tally: Tally,
        *,
        cond: threading.Condition,
        queue: collections.deque[Item],
        wake: threading.Event,
        sender_wake: zmq.Socket[bytes],
        pending_bytes: PendingBytes | None = None,
    ) -> None:
        self._config = config
        self._tally = tally
        self._cond = cond
        self._queue = queue
        self._wake = wake
        self._sender_wake = sender_wake
        self._held = HeldFiles(config, tally)
        self._pending_bytes = pending_bytes or PendingBytes(config.max_pending_bytes)

    def run(self) -> None:
        dirty: set[RunState] = set()
        poll = MIN_POLL
        try:
            while True:
                if self._held.due(time.monotonic()):
                    self._retry_held(dirty)
                if not self._queue:
                    self._wake.wait(poll)
                    self._wake.clear()
                    poll = MIN_POLL if self._queue else min(2 * poll, MAX_POLL)
                    continue
                batch: list[Item] = []
                while self._queue and len(batch) < WRITE_BATCH:
                    batch.append(self._queue.popleft())
                if not self._write_batch(batch, dirty):
                    self._held.give_up()  # one last try for every held file, then a gap in its place
                    if self._held:
                        self._retry_held(dirty)
                    return
        finally:
            self._sender_wake.close()

    def _write_batch(self, batch: Sequence[Item], dirty: set[RunState]) -> bool:
        """Write one batch: one append per run. False when asked to stop."""
        keep_going = True
        handled = 0
        records: dict[RunState, list[tuple[int, bytes]]] = {}
        syncs: set[RunState] = set()
        closes: dict[RunState, Handoff] = {}
        marks: list[FlushMark] = []
        for item in batch:
            if isinstance(item, str):
                keep_going = False
            elif isinstance(item, FlushMark):
                marks.append(item)
                syncs.update(item.runs)
            else:
                handled += self._prepare_safely(item, records, closes)
        for state, recs in records.items():
            if not self._append(state, recs, dirty, syncs if state in closes else None, closes.get(state)):
                closes.pop(state, None)
        if self._config.fsync != "never":
            for state in syncs & dirty:
                self._sync(state)
            dirty -= syncs
        self._tally.count("events_handled", handled)
        with self._cond:
            for mark in marks:
                mark.done = True
            for state in closes:
                state.closed = True
            self._cond.notify_all()
        with contextlib.suppress(zmq.Again):  # a wake-up is already queued
            self._sender_wake.send(b"", zmq.DONTWAIT)
        return keep_going

    def _retry_held(self, dirty: set[RunState]) -> None:
        """Hand every held event to the writer again; what still finds no room is held again."""
        self._write_batch(self._held.take(), dirty)
        self._held.retried(time.monotonic())

    def _prepare_safely(
        self,
        item: Handoff,
        records: dict[RunState, list[tuple[int, bytes]]],
        closes: dict[RunState, Handoff],
    ) -> int:
        """Prepare one hand-off into ``records``; 0 if it was held back for room in the spool."""
        state = item.run
        if state.held and (item.source is not None or isinstance(item.event, protocol.RunClose)):
            # Behind the run's file that waits for room: files and close keep order.
            self._held.hold(item, time.monotonic())
            return 0
        try:
            record = self._prepare(item)
        except Exception:  # the writer must outlive any one bad event
            self._tally.count("writer_errors")
            self._tally.log_once(log, logging.ERROR, ("writer", state.run_id), "clearml-relay: writer failed")
            log.debug("writer failure", exc_info=True)
            record = None
        if state.held and state.held[-1] is item:
            return 0
        if isinstance(item.source, Payload):
            self._pending_bytes.give(item.source.size)
            item.source.release()
        if record is not None:
            records.setdefault(state, []).append(record)
            if isinstance(item.event, protocol.RunClose):
                closes[state] = item
        return 1

    # ------------------------------------------------------------------------- appending

    def _append(
        self,
        state: RunState,
        recs: list[tuple[int, bytes]],
        dirty: set[RunState],
        syncs: set[RunState] | None,
        close: Handoff | None = None,
    ) -> bool:
        """Append one run's records; False (counted, logged) when the outbox cannot take them.

        ``close``: the run's RunClose is the last of ``recs``. If the append fails, it is held
        and tried again like a file waiting for room, so that a run whose disk recovers still
        ends; the other records are dropped.
        """
        assert state.outbox is not None
        try:
            state.outbox.append(recs)
        except OSError as exc:
            # The log is as it was before the append: its seqs are reused, the run gets no hole.
            state.next_seq = state.outbox.last_seq + 1
            dropped = len(recs) - (close is not None)
            self._tally.count("dropped_io", dropped)
            state.lost += dropped
            if close is not None:
                self._held.hold(close, time.monotonic())
            free = free_bytes(self._config.spool_dir)
            self._tally.log_once(
                log,
                logging.ERROR,
                ("append", state.run_id),
                "clearml-relay: cannot write the outbox of run %s in %s (%s; %s free); %d events are "
                "dropped, and later ones until it can be written again (counted as dropped_io)",
                state.run_id,
                state.outbox.directory,
                exc.strerror or exc,
                describe_bytes(free),
                dropped,
            )
            return False
        self._tally.count("events_written", len(recs))
        dirty.add(state)
        if self._config.fsync == "always":
            self._sync(state)
        elif syncs is not None:
            syncs.add(state)  # fsync=close: a closed run's outbox is made durable now
        return True

    def _sync(self, state: RunState) -> None:
        if state.outbox is None or state.removed:
            return
        try:
            state.outbox.sync()
        except OSError as exc:
            self._tally.log_once(
                log, logging.WARNING, ("sync", state.run_id), "clearml-relay: fsync failed: %s", exc
            )

    def _open_outbox(self, state: RunState) -> Outbox | None:
        if state.outbox is not None or state.failed:
            return state.outbox
        reason = "it is locked by another process"
        try:
            state.outbox = Outbox.open(
                self._config.spool_dir,
                state.run_id,
                on_damage=self._tally.on_damage(state.run_id),
                home=self._config.endpoint if self._config.pinned else None,
            )
        except (OSError, ValueError) as exc:
            reason = str(exc)
        if state.outbox is None:
            state.failed, state.problem = True, f"its outbox could not be opened: {reason}"
            log.error(
                "clearml-relay: cannot open the outbox of run %s in %s (%s); its events are dropped",
                state.run_id,
                self._config.spool_dir,
                reason,
            )
            return None
        if state.outbox.last_seq:
            log.warning(
                "clearml-relay: run id %s already has an outbox with %d events; continuing it",
                state.run_id,
                state.outbox.last_seq,
            )
        state.next_seq = state.outbox.last_seq + 1
        state.start_acked = state.outbox.acked
        return state.outbox

    # -------------------------------------------------------------------------- one event

    def _prepare(self, item: Handoff) -> tuple[int, bytes] | None:
        """Number, spool and encode one event; None when it is dropped (and counted) or held."""
        state, event = item.run, item.event
        assert event is not None
        outbox = self._open_outbox(state)
        if outbox is None:
            self._tally.count("dropped_no_outbox")
            state.lost += 1
            return None
        if outbox.bytes_held >= self._config.max_outbox_bytes and not isinstance(event, protocol.RunClose):
            self._tally.count("dropped_outbox_full")
            state.lost += 1
            self._tally.log_once(
                log,
                logging.WARNING,
                ("outbox-full", state.run_id),
                "clearml-relay: the outbox of run %s holds %d bytes not yet acknowledged "
                "(CLEARML_RELAY_MAX_OUTBOX_BYTES=%d); its new events are dropped until the collector "
                "catches up (counted as dropped_outbox_full)",
                state.run_id,
                outbox.bytes_held,
                self._config.max_outbox_bytes,
            )
            return None
        seq = state.next_seq
        event.seq = seq
        if isinstance(event, protocol.RunOpen):
            event.writer = outbox.writer
        if isinstance(event, protocol.RunOpen) and event.context is not None:
            try:
                complete_context(event.context)
            except Exception as exc:  # noqa: BLE001 - optional details are never worth losing the run
                log.debug("execution context incomplete: %s", exc)
        has_file = item.source is not None and isinstance(event, protocol.FILE_EVENTS)
        if has_file or isinstance(event, protocol.Report):
            return self._prepare_file(item, event, outbox, seq)
        return self._record(item, event, outbox, seq)

    def _prepare_file(
        self,
        item: Handoff,
        event: protocol.Event,
        outbox: Outbox,
        seq: int,
    ) -> tuple[int, bytes] | None:
        """Copy the event's file into the outbox, then record it; or what to record instead."""
        assert isinstance(event, protocol.FILE_EVENTS)
        fsync = self._config.fsync == "always"
        try:
            if item.source is None or isinstance(item.source, Payload):
                data = self._make(item, event)
                if data is None:
                    return self._record(item, event, outbox, seq)
                name = item.source.name if item.source is not None else "call.msgpack"
                event.file = outbox.spool_bytes(seq, data, name, fsync=fsync)
            else:
                event.file = outbox.spool_file(seq, item.source, fsync=fsync)
        except PayloadError as exc:
            self._unmade(item, event, exc)
            return None
        except SpoolWriteError as exc:
            if exc.errno in NO_ROOM:
                return self._no_room(item, seq, exc)
            self._copy_failed(item, event, outbox, exc)
            return None
        except OSError as exc:
            self._unreadable(item, event, exc)
            return None
        return self._record(item, event, outbox, seq)

    def _make(self, item: Handoff, event: protocol.Event) -> bytes | bytearray | memoryview | None:
        """Finish a payload's event; a Logger call too large for an event goes into its file."""
        data = item.source.make(event) if isinstance(item.source, Payload) else None
        if isinstance(event, protocol.Report) and event.call is not None:
            try:
                body = reports.encode_call(event.call)
            except (TypeError, ValueError, OverflowError) as exc:  # a value msgpack cannot carry
                raise PayloadError(f"{reports.method(event.call)} cannot be encoded: {exc}") from exc
            if len(body) > INLINE_CALL_BYTES:
                event.method, event.call, data = reports.method(event.call), None, body
        return data

    def _unmade(self, item: Handoff, event: protocol.Event, exc: PayloadError) -> None:
        """A Logger snapshot that cannot become its event (a figure that fails to draw): dropped."""
        self._tally.count("dropped_invalid")
        item.run.lost += 1
        self._tally.log_once(
            log,
            logging.WARNING,
            ("unmade", type(event).__name__, str(exc)[:80]),
            "clearml-relay: dropping a %s event of run %s: %s",
            type(event).__name__,
            item.run.run_id,
            exc,
        )

    def _record(
        self, item: Handoff, event: protocol.Event, outbox: Outbox, seq: int
    ) -> tuple[int, bytes] | None:
        """The numbered event, encoded; None (and its spooled file deleted) when it is invalid."""
        body = self._encode_checked(item.run, event)
        if body is None:
            if item.source is not None:
                outbox.blob_path(seq).unlink(missing_ok=True)
            return None
        item.run.next_seq = seq + 1
        return seq, body

    def _no_room(self, item: Handoff, seq: int, exc: OSError) -> tuple[int, bytes] | None:
        """A file that finds no room in the spool: held (None), or after the deadline, a gap."""
        gap = self._held.no_room(item, seq, exc)
        if gap is None:
            return None
        body = self._encode_checked(item.run, gap)
        if body is None:
            return None
        item.run.next_seq = seq + 1
        return seq, body

    def _copy_failed(self, item: Handoff, event: protocol.Event, outbox: Outbox, exc: OSError) -> None:
        """The file could not be written into the outbox (not for want of room): the event is lost."""
        self._tally.count("files_dropped_io")
        item.run.lost += 1
        log.error(
            "clearml-relay: cannot copy %s into the outbox of run %s in %s (%s); that %s event is dropped",
            item.source,
            item.run.run_id,
            outbox.directory,
            exc.strerror or exc,
            type(event).__name__,
        )

    def _unreadable(self, item: Handoff, event: protocol.Event, exc: OSError) -> None:
        """The event's file cannot be read (gone, unreadable): the event is dropped."""
        self._tally.count("files_missing")
        log.warning(
            "clearml-relay: cannot read %s for a %s event of run %s (%s); that event is dropped",
            item.source,
            type(event).__name__,
            item.run.run_id,
            exc.strerror or exc,
        )

    def _encode_checked(self, state: RunState, event: protocol.Event) -> bytes | None:
        """Encode and validate as the collector will; a RunOpen falls back to a lean context."""
        body, problem = _check(event)
        if problem and isinstance(event, protocol.RunOpen) and event.context is not None:
            event.context.git = None
            event.context.packages = []
            event.context.argv = event.context.argv[:1]
            body, problem = _check(event)
        if not problem:
            return body
        self._tally.count("dropped_invalid")
        self._tally.log_once(
            log,
            logging.WARNING,
            ("invalid", type(event).__name__, problem[:80]),
            "clearml-relay: dropping an invalid %s event of run %s: %s",
            type(event).__name__,
            state.run_id,
            problem,
        )
        return None


def _check(event: protocol.Event) -> tuple[bytes, str]:
    """The encoded event, and what the collector would refuse in it ("" if nothing)."""
    body = protocol.encode(event)
    try:
        protocol.decode_event(body)
    except protocol.ProtocolError as exc:
        return body, exc.reason
    if len(body) > MAX_EVENT_BYTES:
        return body, f"encoded event is {len(body)} bytes, limit {MAX_EVENT_BYTES}"
    return body, ""
