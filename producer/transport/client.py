"""The process-wide producer client: hand-off queue, writer thread, flush, exit and fork handling.

Callers (``Run`` methods, on the training thread) only build an event and append it to a
``deque`` bounded by ``max_pending`` (over the bound the event is dropped and counted). That is
the whole hand-off: no lock, and no wake-up of another thread. Waking the writer on every call
cost the caller 100-300 us on a busy 2-core machine (the woken thread preempts the caller, then
wakes the sender and the collector); instead the writer polls the deque, every millisecond while
events flow and backing off to :data:`MAX_POLL` when idle, so an event is in the outbox within
milliseconds. Flushes and stops wake the writer at once. The writer thread assigns sequence numbers, spools
referenced files into the outbox, appends the encoded events in batches and wakes the sender
thread (:mod:`producer.transport.sender`), which delivers them.

One :class:`Client` serves every ``Run`` of a process that uses the same endpoint and spool
directory (:func:`get_client`). At interpreter exit it flushes for at most ``flush_timeout`` and
then stops its threads with bounded joins, so the process exits even when the collector is down;
what was not acknowledged stays in the outbox for the next producer or ``clearml-relay sync``.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import enum
import errno
import logging
import math
import os
import shlex
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, NamedTuple

import zmq

from producer.config import ProducerConfig
from producer.context import complete_context
from producer.once import Once
from producer.transport.outbox import Outbox, SpoolWriteError, free_bytes
from producer.transport.sender import Sender
from producer.wire import protocol
from producer.wire.recordlog import Damage

log = logging.getLogger(__name__)

#: Most hand-offs the writer takes from the queue for one batch (one write per run per batch).
WRITE_BATCH: Final = 5000
#: An encoded event must leave room in a Submit body for its batch overhead.
MAX_EVENT_BYTES: Final = protocol.MAX_BODY_BYTES - 64 * 1024
#: Bounded joins at shutdown: the process must exit within flush_timeout + about 1 s.
JOIN_SECONDS: Final = 0.4


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
    held: collections.deque[_Handoff] = field(default_factory=collections.deque)
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


class _Handoff(NamedTuple):
    run: RunState
    event: protocol.Event
    source: str | None


class _FlushMark:
    """Queued by a flush: once the writer reaches it, everything handed off before is written.

    The deque is first in, first out, so no per-run counting is needed on the caller's path.
    """

    def __init__(self, runs: list[RunState]) -> None:
        self.runs = runs
        self.done = False


_STOP: Final = "stop"
_Item = _Handoff | _FlushMark | str
#: Errors that mean the spool has no room (they may pass: held files are tried again).
_NO_ROOM: Final = frozenset({errno.ENOSPC, errno.EDQUOT})
#: Retry interval of files held for room in the spool: doubles from MIN to MAX.
HOLD_RETRY_MIN: Final = 0.2
HOLD_RETRY_MAX: Final = 5.0


class _Spooled(enum.Enum):
    SPOOLED = "spooled"


#: What :meth:`Client._spool` returns when the file is in the outbox.
_SPOOLED: Final = _Spooled.SPOOLED
#: Writer poll interval while events flow, and the longest one when idle.
MIN_POLL: Final = 0.001
MAX_POLL: Final = 0.02


class Client:
    """Owns one spool directory's outboxes in this process and the threads that deliver them.

    Args:
        config: endpoint, spool directory, flush timeout, queue bound and fsync policy.
        adopt: deliver leftover outboxes found in the spool directory (crashed producers).
        at_exit: flush and stop at interpreter exit.

    """

    def __init__(self, config: ProducerConfig, *, adopt: bool = True, at_exit: bool = True) -> None:
        self.config = config
        self.pid = os.getpid()
        self.once = Once()
        # Reentrant: the SIGTERM handler (producer.preemption) flushes on the main thread, which
        # it may have interrupted inside this lock.
        self._cond = threading.Condition(threading.RLock())
        self._runs: dict[str, RunState] = {}
        # Delivered runs that lost events on the way (their own disk, the bounds): for the report.
        self._incomplete: list[RunState] = []
        # Guarded by _cond; never touched on the caller's path except to count a drop.
        self._counters: collections.Counter[str] = collections.Counter()
        # deque.append and popleft are atomic: the caller's only synchronisation.
        self._queue: collections.deque[_Item] = collections.deque()
        self._writer_wake = threading.Event()
        # Runs with files held for room in the spool (writer thread only), and when to retry.
        self._holding: set[RunState] = set()
        self._retry_at = math.inf
        self._retry_delay = HOLD_RETRY_MIN
        self._closed = False
        self._stopped = False
        # A flush timed out and no ack came since: the exit handler then waits no longer, so
        # that close() + exit cost one flush timeout, not two.
        self._stalled = False
        self._ctx = zmq.Context()
        wake_address = f"inproc://clearml-relay-wake-{uuid.uuid4().hex}"
        wake_in = self._ctx.socket(zmq.PAIR)
        wake_in.linger = 0
        wake_in.bind(wake_address)
        self._wake = self._ctx.socket(zmq.PAIR)
        self._wake.linger = 0
        self._wake.connect(wake_address)
        self.sender = Sender(self, self._ctx, wake_in, adopt=adopt)
        self._writer_thread = threading.Thread(
            target=self._write_loop, name="clearml-relay-writer", daemon=True
        )
        self._sender_thread = threading.Thread(
            target=self.sender.run, name="clearml-relay-sender", daemon=True
        )
        self._writer_thread.start()
        self._sender_thread.start()
        self._at_exit = at_exit
        if at_exit:
            atexit.register(self._exit_handler)

    # ------------------------------------------------------------------------- caller side

    @property
    def closed(self) -> bool:
        return self._closed

    def open_run(self, run_id: str) -> RunState | None:
        """Register a run of this process; None if the client already handles that run id."""
        with self._cond:
            if run_id in self._runs or self._closed:
                return None
            state = RunState(run_id, owned=True)
            self._runs[run_id] = state
            return state

    def submit(self, run: RunState, event: protocol.Event, source: str | None = None) -> bool:
        """Hand an event (seq unset) to the writer; False if it was dropped. Never blocks."""
        if not self._admit(run, 1):
            return False
        self._queue.append(_Handoff(run, event, source))
        return True

    def submit_all(self, run: RunState, events: list[protocol.Event]) -> bool:
        """Hand several file-less events to the writer at once (one ``deque.extend``)."""
        if not self._admit(run, len(events)):
            return False
        self._queue.extend([_Handoff(run, event, None) for event in events])
        return True

    def _admit(self, run: RunState, n: int) -> bool:
        """Whether ``n`` more events may be queued; counts and warns (once) when not."""
        if self._closed:
            self.count("dropped_closed", n)
            return False
        if len(self._queue) >= self.config.max_pending:
            self.count("dropped_overflow", n)
            run.lost += n  # from the caller's thread too: may undercount, never reads 0 after a drop
            self.once.log(
                log,
                logging.WARNING,
                "overflow",
                "clearml-relay: %d events wait to be written (CLEARML_RELAY_MAX_PENDING); "
                "dropping events until the writer catches up (counted as dropped_overflow)",
                self.config.max_pending,
            )
            return False
        return True

    def count(self, name: str, n: int = 1) -> None:
        with self._cond:
            self._counters[name] += n

    def stats(self) -> dict[str, int]:
        """Counters: events queued/written/acked, drops by reason, refusals by code, resends...

        Two gauges too: ``pending`` (handed off, not yet written) and ``waiting_for_room``
        (file events held until the spool has room for their file).
        """
        with self._cond:
            out = dict(self._counters)
        out["pending"] = sum(isinstance(item, _Handoff) for item in list(self._queue))
        out["waiting_for_room"] = sum(len(state.held) for state in self.run_states())
        return out

    def run_states(self) -> list[RunState]:
        """The runs this client handles now (owned and adopted), for the sender and progress."""
        with self._cond:
            return list(self._runs.values())

    def flush(self, timeout: float | None = None, *, runs: list[RunState] | None = None) -> bool:
        """Wait until every event handed off so far (of ``runs``, default all) is acknowledged.

        Returns:
            True when all of them were acknowledged within ``timeout`` (default: the config's
            flush timeout) seconds.

        """
        if os.getpid() != self.pid or self._closed:
            return False
        timeout = self.config.flush_timeout if timeout is None else max(0.0, timeout)
        targets = self.run_states() if runs is None else runs
        mark = _FlushMark([s for s in targets if s.owned and not s.removed and not s.failed])
        self._queue.append(mark)
        self._writer_wake.set()
        with self._cond:
            done = self._cond.wait_for(lambda: mark.done and all(s.finished() for s in targets), timeout)
            if not done:
                self._stalled = True
            return done and all(s.delivered() for s in targets)

    def on_acked(self) -> None:
        """Wake flush waiters: acks arrived, the collector is there."""
        with self._cond:
            self._stalled = False
            self._cond.notify_all()

    # ------------------------------------------------------------------------ sender side

    def adopt(self, outbox: Outbox) -> bool:
        """Register a leftover outbox the sender has locked; False if the run id is taken."""
        state = RunState(outbox.run_id, owned=False, outbox=outbox, closed=True, start_acked=outbox.acked)
        with self._cond:
            if state.run_id in self._runs:
                return False
            self._runs[state.run_id] = state
            return True

    def forget(self, state: RunState) -> None:
        """Drop a delivered and deleted run (one that lost events stays known to the exit report)."""
        with self._cond:
            if self._runs.get(state.run_id) is state:
                del self._runs[state.run_id]
                if state.lost:
                    self._incomplete.append(state)
            self._cond.notify_all()

    def on_damage(self, run_id: str) -> DamageCallback:
        """A RecordLog damage handler that counts and warns once per run."""
        return DamageCallback(self, run_id)

    # ------------------------------------------------------------------------ writer thread

    def _write_loop(self) -> None:
        dirty: set[RunState] = set()
        poll = MIN_POLL
        try:
            while True:
                if self._holding and time.monotonic() >= self._retry_at:
                    self._retry_held(dirty)
                if not self._queue:
                    self._writer_wake.wait(poll)
                    self._writer_wake.clear()
                    poll = MIN_POLL if self._queue else min(2 * poll, MAX_POLL)
                    continue
                batch: list[_Item] = []
                while self._queue and len(batch) < WRITE_BATCH:
                    batch.append(self._queue.popleft())
                if not self._write_batch(batch, dirty):
                    self._give_up_held(dirty)
                    return
        finally:
            self._wake.close()

    def _write_batch(self, batch: list[_Item], dirty: set[RunState]) -> bool:
        """Write one batch: one append per run. False when asked to stop."""
        keep_going = True
        handled = 0
        records: dict[RunState, list[tuple[int, bytes]]] = {}
        syncs: set[RunState] = set()
        closes: dict[RunState, _Handoff] = {}
        marks: list[_FlushMark] = []
        for item in batch:
            if isinstance(item, str):
                keep_going = False
            elif isinstance(item, _FlushMark):
                marks.append(item)
                syncs.update(item.runs)
            else:
                handled += self._prepare_safely(item, records, closes)
        for state, recs in records.items():
            if not self._append(state, recs, dirty, syncs if state in closes else None, closes.get(state)):
                closes.pop(state, None)
        if self.config.fsync != "never":
            for state in syncs & dirty:
                self._sync(state)
            dirty -= syncs
        with self._cond:
            self._counters["events_handled"] += handled
            for mark in marks:
                mark.done = True
            for state in closes:
                state.closed = True
            self._cond.notify_all()
        with contextlib.suppress(zmq.Again):  # a wake-up is already queued
            self._wake.send(b"", zmq.DONTWAIT)
        return keep_going

    def _prepare_safely(
        self,
        item: _Handoff,
        records: dict[RunState, list[tuple[int, bytes]]],
        closes: dict[RunState, _Handoff],
    ) -> int:
        """Prepare one hand-off into ``records``; 0 if it was held back for room in the spool."""
        state = item.run
        if state.held and (item.source is not None or isinstance(item.event, protocol.RunClose)):
            self._hold(item)  # behind the run's file that waits for room: files and close keep order
            return 0
        try:
            record = self._prepare(item)
        except Exception:  # the writer must outlive any one bad event
            self.count("writer_errors")
            self.once.log(log, logging.ERROR, ("writer", state.run_id), "clearml-relay: writer failed")
            log.debug("writer failure", exc_info=True)
            return 1
        if state.held and state.held[-1] is item:
            return 0
        if record is not None:
            records.setdefault(state, []).append(record)
            if isinstance(item.event, protocol.RunClose):
                closes[state] = item
        return 1

    # ---------------------------------------------------------------- files waiting for room

    def _hold(self, item: _Handoff) -> None:
        """Keep a hand-off until the spool has room for its file (or the run's end gives up)."""
        state = item.run
        state.held.append(item)
        if isinstance(item.event, protocol.RunClose):
            # The run ends: its files wait half its flush timeout more (tried often now), and
            # the other half delivers what follows.
            state.held_deadline = min(state.held_deadline, time.monotonic() + self.config.flush_timeout / 2)
            self._retry_delay = HOLD_RETRY_MIN
            self._retry_at = min(self._retry_at, time.monotonic() + HOLD_RETRY_MIN)
        if state not in self._holding:
            self._holding.add(state)
            self._retry_at = min(self._retry_at, time.monotonic() + self._retry_delay)

    def _retry_held(self, dirty: set[RunState]) -> None:
        """Hand every held event to the writer again; what still finds no room is held again."""
        items: list[_Item] = []
        for state in self._holding:
            items.extend(state.held)
            state.held.clear()
        self._holding.clear()
        self._retry_at = math.inf
        self._write_batch(items, dirty)
        if self._holding:
            self._retry_delay = min(2 * self._retry_delay, HOLD_RETRY_MAX)
            self._retry_at = time.monotonic() + self._retry_delay
        else:
            self._retry_delay = HOLD_RETRY_MIN

    def _give_up_held(self, dirty: set[RunState]) -> None:
        """At stop: one last try for every held file, then a gap in its place."""
        for state in self._holding:
            state.held_deadline = -math.inf
        if self._holding:
            self._retry_held(dirty)

    def _no_room(self, item: _Handoff, seq: int, exc: OSError) -> tuple[int, bytes] | None:
        """A file that finds no room in the spool: held, or after the deadline, a gap."""
        state, event = item.run, item.event
        assert item.source is not None
        needed = _size_of(item.source)
        free = free_bytes(self.config.spool_dir)
        where = f"the spool {self.config.spool_dir} ({_bytes(free)} free, the file is {_bytes(needed)})"
        name = os.path.basename(item.source)
        if time.monotonic() < state.held_deadline:
            self.once.log(
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
            self._hold(item)
            return None
        self.count("files_dropped_no_room")
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
        gap = protocol.Gap(run=state.run_id, seq=seq, last=seq, ts=time.time(), reason=reason)
        body = self._encode_checked(state, gap)
        if body is None:
            return None
        state.next_seq = seq + 1
        return seq, body

    # ------------------------------------------------------------------------- appending

    def _append(
        self,
        state: RunState,
        recs: list[tuple[int, bytes]],
        dirty: set[RunState],
        syncs: set[RunState] | None,
        close: _Handoff | None = None,
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
            self.count("dropped_io", dropped)
            state.lost += dropped
            if close is not None:
                self._hold(close)
            free = free_bytes(self.config.spool_dir)
            self.once.log(
                log,
                logging.ERROR,
                ("append", state.run_id),
                "clearml-relay: cannot write the outbox of run %s in %s (%s; %s free); %d events are "
                "dropped, and later ones until it can be written again (counted as dropped_io)",
                state.run_id,
                state.outbox.directory,
                exc.strerror or exc,
                _bytes(free),
                dropped,
            )
            return False
        self.count("events_written", len(recs))
        dirty.add(state)
        if self.config.fsync == "always":
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
            self.once.log(
                log, logging.WARNING, ("sync", state.run_id), "clearml-relay: fsync failed: %s", exc
            )

    def _open_outbox(self, state: RunState) -> Outbox | None:
        if state.outbox is not None or state.failed:
            return state.outbox
        reason = "it is locked by another process"
        try:
            state.outbox = Outbox.open(
                self.config.spool_dir, state.run_id, on_damage=self.on_damage(state.run_id)
            )
        except (OSError, ValueError) as exc:
            reason = str(exc)
        if state.outbox is None:
            state.failed, state.problem = True, f"its outbox could not be opened: {reason}"
            log.error(
                "clearml-relay: cannot open the outbox of run %s in %s (%s); its events are dropped",
                state.run_id,
                self.config.spool_dir,
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

    def _prepare(self, item: _Handoff) -> tuple[int, bytes] | None:
        """Number, spool and encode one event; None when it is dropped (and counted) or held."""
        state, event = item.run, item.event
        assert event is not None
        outbox = self._open_outbox(state)
        if outbox is None:
            self.count("dropped_no_outbox")
            state.lost += 1
            return None
        if outbox.bytes_held >= self.config.max_outbox_bytes and not isinstance(event, protocol.RunClose):
            self.count("dropped_outbox_full")
            state.lost += 1
            self.once.log(
                log,
                logging.WARNING,
                ("outbox-full", state.run_id),
                "clearml-relay: the outbox of run %s holds %d bytes not yet acknowledged "
                "(CLEARML_RELAY_MAX_OUTBOX_BYTES=%d); its new events are dropped until the collector "
                "catches up (counted as dropped_outbox_full)",
                state.run_id,
                outbox.bytes_held,
                self.config.max_outbox_bytes,
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
        if item.source is not None and isinstance(event, protocol.FILE_EVENTS):
            instead = self._spool(item, event, outbox, seq)
            if instead is not _SPOOLED:
                return instead
        body = self._encode_checked(state, event)
        if body is None:
            if item.source is not None:
                outbox.blob_path(seq).unlink(missing_ok=True)
            return None
        state.next_seq = seq + 1
        return seq, body

    def _spool(
        self,
        item: _Handoff,
        event: protocol.DebugImage | protocol.Plot | protocol.Model,
        outbox: Outbox,
        seq: int,
    ) -> tuple[int, bytes] | _Spooled | None:
        """Copy the event's file into the outbox: :data:`_SPOOLED`, or what to record instead."""
        assert item.source is not None
        state = item.run
        try:
            event.file = outbox.spool_file(seq, item.source, fsync=self.config.fsync == "always")
        except SpoolWriteError as exc:
            if exc.errno in _NO_ROOM:
                return self._no_room(item, seq, exc)
            self.count("files_dropped_io")
            state.lost += 1
            log.error(  # noqa: TRY400 - the message holds the reason; a traceback adds nothing
                "clearml-relay: cannot copy %s into the outbox of run %s in %s (%s); that %s event "
                "is dropped",
                item.source,
                state.run_id,
                outbox.directory,
                exc.strerror or exc,
                type(event).__name__,
            )
            return None
        except OSError as exc:
            self.count("files_missing")
            log.warning(
                "clearml-relay: cannot read %s for a %s event of run %s (%s); that event is dropped",
                item.source,
                type(event).__name__,
                state.run_id,
                exc.strerror or exc,
            )
            return None
        return _SPOOLED

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
        self.count("dropped_invalid")
        self.once.log(
            log,
            logging.WARNING,
            ("invalid", type(event).__name__, problem[:80]),
            "clearml-relay: dropping an invalid %s event of run %s: %s",
            type(event).__name__,
            state.run_id,
            problem,
        )
        return None

    # ----------------------------------------------------------------------------- shutdown

    def close(self, timeout: float | None = None) -> bool:
        """Flush (at most ``timeout``, default flush_timeout), then stop the threads.

        Returns:
            Whether everything was acknowledged before the threads stopped.

        """
        if os.getpid() != self.pid or self._closed:
            return False
        ok = self.flush(timeout)
        self.stop()
        return ok

    def stop(self) -> None:
        """Stop the threads (bounded joins) without waiting for acks; the client is then closed."""
        with self._cond:
            if self._stopped:
                return
            self._closed = self._stopped = True
        if self._at_exit:
            atexit.unregister(self._exit_handler)
        deadline = time.monotonic() + 2 * JOIN_SECONDS
        self._queue.append(_STOP)
        self._writer_wake.set()
        self.sender.stop()
        self._writer_thread.join(JOIN_SECONDS)
        self._sender_thread.join(max(0.0, deadline - time.monotonic()))
        _forget_client(self)
        if self._writer_thread.is_alive() or self._sender_thread.is_alive():
            # A thread stuck in a syscall (a huge file copy): leave it to die with the process;
            # terminating the context now would hang on its open socket.
            log.warning("clearml-relay: producer threads did not stop in time; unacked events stay spooled")
            return
        for state in self.run_states():
            if state.outbox is not None:
                state.outbox.close()
        self._ctx.term()

    def _exit_handler(self) -> None:
        if os.getpid() != self.pid:
            return  # a forked child inherited this handler; the parent's threads are not ours
        try:
            self.close(0.0 if self._stalled else None)
            for line in self.undelivered_report():
                log.warning("%s", line)
        except Exception:  # never turn an exit into a traceback
            log.debug("clearml-relay exit handler failed", exc_info=True)

    def undelivered_report(self) -> list[str]:
        """What this client's runs left undone, as it stands on disk: one line per kind of trouble."""
        lines = []
        stranded = 0
        events = 0
        with self._cond:
            states = [*self._incomplete, *self._runs.values()]
        for state in states:
            if state.failed:
                lines.append(
                    f"clearml-relay: run {state.run_id} recorded nothing ({state.problem}); "
                    "none of it is on disk"
                )
                continue
            if state.lost:
                lines.append(
                    f"clearml-relay: run {state.run_id}: {state.lost} of its events could not be recorded "
                    "(the errors above say why)"
                )
            if state.refused:
                lines.append(
                    f"clearml-relay: run {state.run_id} was not delivered ({state.problem}); its "
                    f"{state.unacked()} events stay in {state.outbox.directory if state.outbox else '?'}"
                )
            elif not state.finished() and state.unacked():
                stranded += 1
                events += state.unacked()
        if stranded:
            spool = shlex.quote(str(self.config.spool_dir))
            lines.append(
                f"clearml-relay: {stranded} run(s) not fully delivered to {self.config.endpoint} at exit: "
                f"{events} events stay in {self.config.spool_dir}; deliver them with: clearml-relay sync "
                f"--spool-dir {spool} --endpoint {shlex.quote(self.config.endpoint)} (or by starting the "
                "next training on the same spool)"
            )
        return lines


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


class DamageCallback:
    """Counts damaged stretches of an outbox log and warns once per run."""

    def __init__(self, client: Client, run_id: str) -> None:
        self._client = client
        self._run_id = run_id

    def __call__(self, damage: Damage) -> None:
        self._client.count("damage")
        self._client.once.log(
            log,
            logging.WARNING,
            ("damage", self._run_id),
            "clearml-relay: damaged outbox of run %s: %s at %s+%d (%d bytes); lost events become a gap",
            self._run_id,
            damage.reason,
            damage.path,
            damage.offset,
            damage.length,
        )


# --------------------------------------------------------------------------------- registry

_registry_lock = threading.Lock()
_clients: dict[tuple[str, Path], Client] = {}
# Clients inherited through fork: kept referenced so that garbage collection in the child never
# touches the parent's ZeroMQ context.
_inherited: list[Client] = []


def get_client(config: ProducerConfig) -> Client:
    """The process's client for ``config``'s endpoint and spool directory, created on first use."""
    key = (config.endpoint, config.spool_dir.absolute())
    with _registry_lock:
        client = _clients.get(key)
        if client is not None and client.pid != os.getpid():
            _inherited.append(client)
            client = None
        if client is None or client.closed:
            client = Client(config)
            _clients[key] = client
        return client


def close_clients(timeout: float | None = 0.0) -> None:
    """Close every client of this process, flushing each for at most ``timeout`` seconds."""
    with _registry_lock:
        clients = [c for c in _clients.values() if c.pid == os.getpid()]
    for client in clients:
        client.close(timeout)


def _forget_client(client: Client) -> None:
    with _registry_lock:
        for key, value in list(_clients.items()):
            if value is client:
                del _clients[key]


def _size_of(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except OSError:
        return None


def _bytes(n: int | None) -> str:
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
