"""Appliers: move journaled events into the backend, in order, one thread per run.

Each run with events to apply has its own thread, so a slow, failing or hung run never stalls
another. A thread waits until the journal is ahead of the backend (then up to
:data:`GATHER_SECONDS` more, to fill a batch), takes the events after the backend's applied
position (as the latest commits decoded them, else read back from the journal: see
:class:`~collector.pipeline.records.Recent`) and applies them in order, each stretch of one kind
as one batch (``Backend.apply_batch``):

- a jump in seq (journal damage the checksum caught) is applied as a synthesized ``Gap`` and
  counted, so the run goes on and the loss is visible in its task;
- an exception from the backend is logged and counted, and the *same* batch is retried (from
  the event that failed, when the backend says it applied the ones before it) with a capped
  exponential backoff that :meth:`Appliers.stop` interrupts;
- the backend is asked to make its work durable (``checkpoint``) every :data:`CHECKPOINT_EVENTS`
  events or :data:`CHECKPOINT_SECONDS`, whichever comes first, also when the run has caught up
  and nothing more comes (a lone event after a quiet spell: at once); only then are
  journal segments that hold nothing past the durable position reclaimed (the newest segment
  stays: it carries the journaled position). After a crash, events between the durable position
  and the journal's end are applied again, and the backend makes that harmless;
- a :class:`~collector.backends.base.Rewind` from the backend (work applied since its last
  checkpoint was lost, e.g. events the ClearML server refused) sends the run back to the
  backend's durable position: after the backoff the journal is read again from
  ``backend.applied(run) + 1`` and those events are applied again (counted as ``rewinds``;
  the run's reported applied position moves back meanwhile);
- a run whose producer vanished is aborted (``backend.abort``) once everything journaled for it
  is applied;
- a thread with nothing to do for ``idle_exit`` seconds ends; the next event starts a new one.

Applied events are counted per kind (``applied.<kind>``), once per batch, and the backend's time
recorded (``apply.<kind>``: a batch's time shared out over its events; ``checkpoint``). Log
lines about one run carry ``run`` (and ``kind`` where an event is involved) as fields.
Exactly-once rests on the backend: it owns the applied position (see :mod:`collector.backends.base`).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Final

from collector.backends.base import Backend, PartlyApplied, Rewind
from collector.counters import Counters
from collector.pipeline.files import FileStore
from collector.pipeline.records import BATCH_EVENTS, Pending, Recent, batches, events_from
from collector.storage.journal import Entry, Journal, through
from producer.wire import protocol
from producer.wire.recordlog import LogReader

log = logging.getLogger(__name__)

#: Checkpoint after this many events or seconds, whichever comes first (2 s: the period at which
#: ClearML's own reporter sends; a checkpoint per event cost 3 ms of CPU per event at a trickle).
CHECKPOINT_EVENTS: Final = 2000
CHECKPOINT_SECONDS: Final = 2.0
#: How long a run's thread waits for more events to fill a batch once there is work (the most
#: it adds to an event's way into the backend).
GATHER_SECONDS: Final = 0.05
#: How long to wait before looking again when the journal is ahead but nothing is readable yet.
_REREAD_SECONDS: Final = 0.5


class _Run:
    """One run's positions (guarded by the appliers' lock) and its thread, if one runs."""

    def __init__(self, run: str, lock: threading.Lock, applied: int, journaled: int) -> None:
        self.run = run
        self.applied = applied  # handed to the backend
        self.durable = applied  # made durable by the backend's last checkpoint
        self.checkpointed_at = time.monotonic()
        self.journaled = journaled
        self.abort_reason: str | None = None
        #: The backend lost what it applied since its checkpoint: restart from its position.
        self.rewind = False
        self.rewinds = 0  # in a row, for the backoff; reset by a checkpoint that holds
        #: The thread waits for more events to fill a batch (see ``Appliers._gather``).
        self.gathering = False
        #: The events the latest commits journaled, as the ingest thread decoded them.
        self.recent = Recent()
        #: The run's journal, read by its thread where ``recent`` does not hold what comes next.
        self.reader: LogReader | None = None
        self.wake = threading.Condition(lock)
        self.thread: threading.Thread | None = None


class Appliers:
    """Applies every run's journaled events to ``backend``.

    Args:
        journal: Source of events and positions; call :meth:`notify` on each commit.
        backend: Where events go; it owns the applied position.
        files: Passed to the backend for events that refer to a file.
        counters: Where applied events, damage and backend failures are counted.
        retry_initial: First delay before retrying an event the backend failed.
        retry_max: Cap of the doubling retry delay.
        idle_exit: Seconds a caught-up run's thread waits for more before it ends.

    """

    def __init__(
        self,
        journal: Journal,
        backend: Backend,
        files: FileStore,
        counters: Counters,
        *,
        retry_initial: float = 0.05,
        retry_max: float = 30.0,
        idle_exit: float = 30.0,
    ) -> None:
        self.journal = journal
        self.backend = backend
        self.files = files
        self.counters = counters
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.idle_exit = idle_exit
        self._lock = threading.Lock()
        self._progress = threading.Condition(self._lock)
        self._runs: dict[str, _Run] = {}
        self._stop = threading.Event()

    def start(self) -> None:
        """Resume every journaled run from the backend's applied position + 1."""
        for run in self.journal.runs():
            state = self._new_run(run, self.journal.position(run))
            with self._lock:
                self._runs[run] = state
                if state.journaled > state.applied or state.rewind:
                    self._spawn(state)
            if state.applied >= state.journaled and not state.rewind:
                self.journal.reclaim(run, state.applied)

    def _new_run(self, run: str, journaled: int) -> _Run:
        """A run's positions, from the backend; if it cannot tell, the run's thread asks again.

        A backend that fails to report one run's position (say, its state file is damaged) must
        not stop the collector's start or the ingest thread: that run's thread retries with
        backoff (the rewind path), the other runs go on.
        """
        try:
            return _Run(run, self._lock, self.backend.applied(run), journaled)
        except Exception:
            self.counters.incr("applier_error")
            log.exception("run %s: the backend cannot tell its applied position", run, extra={"run": run})
            state = _Run(run, self._lock, 0, journaled)
            state.rewind = True  # the run's thread asks the backend (and retries) before applying
            return state

    def notify(self, run: str, position: int, entries: Sequence[Entry] = ()) -> None:
        """The journal of ``run`` now reaches ``position`` with ``entries`` (a journal listener)."""
        if self._stop.is_set():
            return
        with self._lock:
            state = self._runs.get(run)
            if state is None:
                # A new run; its backend position is normally 0, but a backend may have
                # outlived the journal (a wiped data dir), so ask.
                state = self._runs[run] = self._new_run(run, position)
            state.journaled = max(state.journaled, position)
            state.recent.add(entries, state.applied)
            if state.thread is None:
                if state.journaled > state.applied or state.rewind:
                    self._spawn(state)
            elif not state.gathering or state.journaled - state.applied >= BATCH_EVENTS:
                state.wake.notify()

    def abort(self, run: str, reason: str) -> None:
        """Abort ``run`` in the backend once everything journaled for it is applied."""
        if self._stop.is_set():
            return
        with self._lock:
            state = self._runs.get(run)
            if state is None:
                state = self._runs[run] = self._new_run(run, self.journal.position(run))
            state.abort_reason = reason
            if state.thread is None:
                self._spawn(state)
            else:
                state.wake.notify()

    def applied(self, run: str) -> int:
        with self._lock:
            state = self._runs.get(run)
            return state.applied if state else 0

    def durable(self, run: str) -> int:
        """The run's position as of the backend's last checkpoint (0 for a run never seen)."""
        with self._lock:
            state = self._runs.get(run)
            return state.durable if state else 0

    def wait_applied(self, run: str, seq: int, timeout: float) -> bool:
        """Wait until ``run`` is applied through ``seq``; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while (state := self._runs.get(run)) is None or state.applied < seq:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._progress.wait(remaining)
            return True

    def drain(self, timeout: float) -> bool:
        """Wait until every run is applied through its journaled position; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while any(state.applied < state.journaled for state in self._runs.values()):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._progress.wait(remaining)
            return True

    def stop(self, timeout: float) -> bool:
        """Stop every thread (between events, or out of a retry wait); False if one is stuck."""
        self._stop.set()
        with self._lock:
            threads = [state.thread for state in self._runs.values() if state.thread is not None]
            for state in self._runs.values():
                state.wake.notify()
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [thread.name for thread in threads if thread.is_alive()]
        if stuck:
            log.warning("appliers still busy after %.1f s: %s", timeout, ", ".join(stuck))
        return not stuck

    # --------------------------------------------------------------------------------- threads

    def _spawn(self, state: _Run) -> None:
        # Daemon: a backend call that hangs forever must not keep the process alive at exit.
        state.thread = threading.Thread(
            target=self._serve, args=(state,), name=f"apply-{state.run}", daemon=True
        )
        state.thread.start()

    def _serve(self, state: _Run) -> None:
        delay = self.retry_initial
        while True:
            try:
                self._apply_journal(state)
            except Exception:  # e.g. an unreadable journal: keep the run alive
                self.counters.incr("applier_error")
                log.exception(
                    "run %s: applier failed, restarting in %.2f s", state.run, delay, extra={"run": state.run}
                )
                if not self._stop.wait(delay):
                    delay = min(delay * 2, self.retry_max)
                    continue
                with self._lock:
                    state.thread = None
            return

    def _apply_journal(self, state: _Run) -> None:
        while True:
            if state.rewind:
                # Asked here, not where Rewind was caught: if this raises, _serve comes back.
                durable = self.backend.applied(state.run)
                with self._lock:
                    state.applied = state.durable = durable
                    state.rewind = False
                    self._progress.notify_all()
            try:
                self._apply_from_journal(state)
            except Rewind:
                state.rewind = True  # a fresh reader from the durable position, at once
                continue
            return

    def _apply_from_journal(self, state: _Run) -> None:
        state.reader = None  # a fresh one at the position (after a rewind, say)
        while self._wait_for_work(state):
            with self._lock:
                behind = state.applied < state.journaled
                journaled = state.journaled
                reason = state.abort_reason
            if not behind and reason is None:  # _wait_for_work returned: a checkpoint is due
                if not self._maybe_checkpoint(state):
                    return
                continue
            if not behind:
                assert reason is not None
                if not self._retry(state, "abort", functools.partial(self.backend.abort, state.run, reason)):
                    return
                self.counters.incr("aborted")
                with self._lock:
                    if state.abort_reason == reason:
                        state.abort_reason = None
                continue
            events = self._next_events(state, journaled)
            if not events:
                # The position moved before the bytes became readable (or the tail is damaged).
                self._stop.wait(_REREAD_SECONDS)
                continue
            for name, batch in batches(events):
                if not self._apply_batch(state, name, batch):
                    return
            if not self._maybe_checkpoint(state):
                return

    def _next_events(self, state: _Run, journaled: int) -> list[protocol.Event]:
        """The events after the applied position: kept from the commits, else read from the journal."""
        with self._lock:
            applied = state.applied
            events = state.recent.take(applied + 1, BATCH_EVENTS)
            kept = state.recent.first()
        if events:
            return events
        if kept is not None:
            journaled = min(journaled, kept - 1)  # what follows is in memory
        if state.reader is None or state.reader.next_seq != applied + 1:
            state.reader = self.journal.reader(state.run, applied + 1)
        # Only what the journal committed: a failed append's tail is cut back, never applied.
        records = state.reader.read(max_records=BATCH_EVENTS, max_seq=journaled)
        return events_from(state.run, records, applied, self.counters)

    def _maybe_checkpoint(self, state: _Run) -> bool:
        """Checkpoint when due, then reclaim what is durable; False if stopping.

        Due every :data:`CHECKPOINT_EVENTS` events or :data:`CHECKPOINT_SECONDS`, whichever
        comes first; a run that caught up is checkpointed once the time is up even if nothing
        more comes (:meth:`_wait_for_work` wakes its thread). So a run that sends a few events
        every second costs one checkpoint (a drain, a state file, fsyncs) per interval, not per
        event, and a lone event after a quiet spell is checkpointed at once.
        """
        with self._lock:
            caught_up = state.applied >= state.journaled
            applied = state.applied
            due = (
                applied - state.durable >= CHECKPOINT_EVENTS
                or time.monotonic() - state.checkpointed_at >= CHECKPOINT_SECONDS
            )
        if not due or applied <= state.durable:
            return True
        checkpoint = self._timed("checkpoint", self.backend.checkpoint, state.run)
        if not self._retry(state, "checkpoint", checkpoint):
            return False
        durable = self.backend.applied(state.run)
        state.rewinds = 0
        with self._lock:
            state.durable, state.checkpointed_at = durable, time.monotonic()
            self._progress.notify_all()
        if caught_up:
            # Segments holding nothing past the durable position are no longer needed.
            self.journal.reclaim(state.run, durable)
        return True

    def _wait_for_work(self, state: _Run) -> bool:
        """Block until the run has events to apply, an abort or a checkpoint due.

        Returns False when this thread should end: stopping, or idle for ``idle_exit`` seconds
        with everything applied durable.
        """
        deadline = time.monotonic() + self.idle_exit
        with self._lock:
            while state.applied >= state.journaled and state.abort_reason is None and not self._stop.is_set():
                now = time.monotonic()
                if state.applied > state.durable:  # a checkpoint is pending
                    remaining = state.checkpointed_at + CHECKPOINT_SECONDS - now
                    if remaining <= 0:
                        return True
                else:
                    remaining = deadline - now
                    if remaining <= 0:
                        state.thread = None  # under the lock: notify() starts a new one if needed
                        return False
                state.wake.wait(remaining)
            if state.applied < state.journaled:
                self._gather(state)
            return not self._stop.is_set()

    def _gather(self, state: _Run) -> None:
        """Let more events come for up to :data:`GATHER_SECONDS` (under the lock), up to a batch.

        A run fed a few events per commit (one of 100 busy runs) then applies batches, not a
        wake-up per commit: 100 threads woken per commit took the interpreter lock from the
        ingest thread. Commits that do not fill a batch do not wake it (see :meth:`notify`).
        """
        until = time.monotonic() + GATHER_SECONDS
        state.gathering = True
        try:
            while (
                state.journaled - state.applied < BATCH_EVENTS
                and state.abort_reason is None
                and not self._stop.is_set()
            ):
                remaining = until - time.monotonic()
                if remaining <= 0:
                    return
                state.wake.wait(remaining)
        finally:
            state.gathering = False

    def _apply_batch(self, state: _Run, name: str, events: list[protocol.Event]) -> bool:
        """Apply consecutive events of one kind with retries until done; False if stopping first.

        What the backend applied of a batch that then failed (:class:`PartlyApplied`) is counted,
        and the retry starts at the event that failed.
        """
        batch = Pending(name, events)

        def call() -> None:
            started = time.perf_counter()
            try:
                self.backend.apply_batch(state.run, batch.events, self.files)
            except PartlyApplied as partly:
                self._applied(state, name, batch.events[: partly.count], time.perf_counter() - started)
                batch.events = batch.events[partly.count :]
                raise partly.__cause__ or RuntimeError("the backend gave no cause") from None
            self._applied(state, name, batch.events, time.perf_counter() - started)

        return self._retry(state, batch, call, name)

    def _applied(self, state: _Run, name: str, events: list[protocol.Event], seconds: float) -> None:
        """Count ``events`` as applied (their time shared out in ``apply.<kind>``) and advance."""
        if not events:
            return
        self.counters.incr_many({"applied": len(events), f"applied.{name}": len(events)})
        self.counters.observe(f"apply.{name}", seconds, count=len(events))
        with self._lock:
            state.applied = through(events[-1])
            self._progress.notify_all()

    def _timed(self, name: str, call: Callable[..., None], *args: object) -> Callable[[], None]:
        """``call(*args)``, its duration recorded as ``name`` when it succeeds."""

        def timed() -> None:
            started = time.perf_counter()
            call(*args)
            self.counters.observe(name, time.perf_counter() - started)

        return timed

    def _retry(
        self, state: _Run, what: object, call: Callable[[], None], event_kind: str | None = None
    ) -> bool:
        """Call until it succeeds, backing off between failures; False if the appliers stop first.

        A :class:`Rewind` is passed on to :meth:`_apply_journal` after the backoff (doubling
        with every rewind in a row, so a server that keeps refusing is not hammered).
        """
        delay = self.retry_initial
        failures = 0
        fields = {"run": state.run, "kind": event_kind}
        while True:
            try:
                call()
            except Rewind as exc:
                self.counters.incr("rewinds")
                delay = min(self.retry_initial * 2 ** min(state.rewinds, 30), self.retry_max)
                state.rewinds += 1
                log.warning(
                    "run %s: %s: the backend lost what it applied since its last checkpoint (%s); "
                    "re-applying from its durable position in %.2f s",
                    state.run,
                    what,
                    exc,
                    delay,
                    extra=fields,
                )
                if self._stop.wait(delay):
                    return False
                raise
            except Exception as exc:  # any backend failure: count, back off, retry
                self.counters.incr("apply_error")
                failures += 1
                if failures == 1:  # the traceback once; then one line per retry
                    log.exception(
                        "run %s: %s failed, retrying in %.2f s", state.run, what, delay, extra=fields
                    )
                else:
                    log.warning(
                        "run %s: %s failed again (%d times: %s), retrying in %.2f s",
                        state.run,
                        what,
                        failures,
                        _short(exc),
                        delay,
                        extra=fields,
                    )
            else:
                if failures:
                    log.info(
                        "run %s: %s succeeded after %d failures", state.run, what, failures, extra=fields
                    )
                return True
            if self._stop.wait(delay):
                return False
            delay = min(delay * 2, self.retry_max)


def _short(exc: BaseException, limit: int = 200) -> str:
    """``exc`` on one line, at most ``limit`` characters, for a log line."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
