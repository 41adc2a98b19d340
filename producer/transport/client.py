"""The process-wide producer client: hand-off queue, flush, exit and fork handling.

Callers (``Run`` methods, on the training thread) only build an event and append it to a
``deque`` bounded by ``max_pending`` (over the bound the event is dropped and counted). That is
the whole hand-off: no lock, and no wake-up of another thread. Waking the writer on every call
cost the caller 100-300 us on a busy 2-core machine (the woken thread preempts the caller, then
wakes the sender and the collector); instead the writer polls the deque, every millisecond while
events flow and backing off to :data:`~producer.transport.writer.MAX_POLL` when idle, so an
event is in the outbox within milliseconds. Flushes and stops wake the writer at once. The writer
thread (:mod:`producer.transport.writer`) assigns sequence numbers, spools referenced files into
the outbox, appends the encoded events in batches and wakes the sender thread
(:mod:`producer.transport.sender`), which delivers them. Which thread owns which state, and the
few things they share, are listed in :mod:`producer.transport.runstate`.

One :class:`Client` serves every ``Run`` of a process that uses the same endpoint and spool
directory (:func:`get_client`). At interpreter exit it flushes for at most ``flush_timeout`` and
then stops its threads with bounded joins, so the process exits even when the collector is down;
what was not acknowledged stays in the outbox for the next producer or ``clearml-relay sync``.
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Final

import zmq

from producer.config import ProducerConfig
from producer.transport.outbox import Outbox
from producer.transport.payload import Payload, PendingBytes, Source
from producer.transport.report import undelivered_report
from producer.transport.runstate import STOP, FlushMark, Handoff, Item, RunState
from producer.transport.sender import ADOPT_EVERY, Sender
from producer.transport.tally import DamageCallback, Tally
from producer.transport.writer import Writer
from producer.wire import protocol

__all__ = ["Client", "close_clients", "get_client"]

log = logging.getLogger(__name__)

#: Bounded joins at shutdown: the process must exit within flush_timeout + about 1 s.
JOIN_SECONDS: Final = 0.4


class Client:
    """Owns one spool directory's outboxes in this process and the threads that deliver them.

    Args:
        config: endpoint, spool directory, flush timeout, queue bound and fsync policy.
        adopt: deliver leftover outboxes found in the spool directory (crashed producers).
        at_exit: flush and stop at interpreter exit.
        adopt_every: seconds between two scans of the spool directory for leftovers.

    """

    def __init__(
        self,
        config: ProducerConfig,
        *,
        adopt: bool = True,
        at_exit: bool = True,
        adopt_every: float = ADOPT_EVERY,
    ) -> None:
        self.config = config
        self.pid = os.getpid()
        self.tally = Tally()
        self.once = self.tally.once
        # Reentrant: the SIGTERM handler (producer.preemption) flushes on the main thread, which
        # it may have interrupted inside this lock. Guards _runs, _incomplete, _stalled, flush
        # marks and RunState.closed; flush waits on it, the writer and sender notify it.
        self._cond = threading.Condition(threading.RLock())
        self._runs: dict[str, RunState] = {}
        # Delivered runs that lost events on the way (their own disk, the bounds): for the report.
        self._incomplete: list[RunState] = []
        # deque.append and popleft are atomic: the caller's only synchronisation.
        self._queue: collections.deque[Item] = collections.deque()
        self._writer_wake = threading.Event()
        #: Memory held by Logger snapshots until the writer has written them.
        self.pending_bytes = PendingBytes(config.max_pending_bytes)
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
        wake_out = self._ctx.socket(zmq.PAIR)
        wake_out.linger = 0
        wake_out.connect(wake_address)
        writer = Writer(
            config,
            self.tally,
            cond=self._cond,
            queue=self._queue,
            wake=self._writer_wake,
            sender_wake=wake_out,
            pending_bytes=self.pending_bytes,
        )
        self.sender = Sender(
            self, config, self.tally, self._ctx, wake_in, adopt=adopt, adopt_every=adopt_every
        )
        self._writer_thread = threading.Thread(target=writer.run, name="clearml-relay-writer", daemon=True)
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

    def submit(self, run: RunState, event: protocol.Event, source: Source = None) -> bool:
        """Hand an event (seq unset) to the writer; False if it was dropped. Never blocks.

        ``source``: the file the event refers to (copied by the writer), or a :class:`Payload`
        (a snapshot the writer finishes); a payload beyond ``max_pending_bytes`` is dropped.
        """
        if not self._admit(run, 1):
            return False
        if isinstance(source, Payload) and not self.pending_bytes.take(source.size):
            self.tally.count("dropped_overflow")
            run.lost += 1
            self.tally.log_once(
                log,
                logging.WARNING,
                "overflow-bytes",
                "clearml-relay: Logger snapshots waiting to be written hold %d bytes "
                "(CLEARML_RELAY_MAX_PENDING_BYTES); dropping such calls until the writer catches up "
                "(counted as dropped_overflow)",
                self.pending_bytes.held,
            )
            return False
        self._queue.append(Handoff(run, event, source))
        return True

    def submit_all(self, run: RunState, events: list[protocol.Event]) -> bool:
        """Hand several file-less events to the writer at once (one ``deque.extend``)."""
        if not self._admit(run, len(events)):
            return False
        self._queue.extend([Handoff(run, event, None) for event in events])
        return True

    def _admit(self, run: RunState, n: int) -> bool:
        """Whether ``n`` more events may be queued; counts and warns (once) when not."""
        if self._closed:
            self.tally.count("dropped_closed", n)
            return False
        if len(self._queue) >= self.config.max_pending:
            self.tally.count("dropped_overflow", n)
            run.lost += n  # from the caller's thread too: may undercount, never reads 0 after a drop
            self.tally.log_once(
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
        self.tally.count(name, n)

    def stats(self) -> dict[str, int]:
        """Counters: events queued/written/acked, drops by reason, refusals by code, resends...

        Two gauges too: ``pending`` (handed off, not yet written) and ``waiting_for_room``
        (file events held until the spool has room for their file).
        """
        out = self.tally.counters()
        out["pending"] = sum(isinstance(item, Handoff) for item in list(self._queue))
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
        mark = FlushMark([s for s in targets if s.owned and not s.removed and not s.failed])
        self._queue.append(mark)
        self._writer_wake.set()
        with self._cond:
            done = self._cond.wait_for(lambda: mark.done and all(s.finished() for s in targets), timeout)
            if not done:
                self._stalled = True
            return done and all(s.delivered() for s in targets)

    # ------------------------------------------------------------- sender side (SenderHost)

    def on_acked(self) -> None:
        """Wake flush waiters: acks arrived, the collector is there."""
        with self._cond:
            self._stalled = False
            self._cond.notify_all()

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
        return self.tally.on_damage(run_id)

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
        self._queue.append(STOP)
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
        with self._cond:
            states = [*self._incomplete, *self._runs.values()]
        return undelivered_report(self.config, states)


# --------------------------------------------------------------------------------- registry

_registry_lock = threading.Lock()
_clients: dict[tuple[str, Path, bool], Client] = {}
# Clients inherited through fork: kept referenced so that garbage collection in the child never
# touches the parent's ZeroMQ context.
_inherited: list[Client] = []


def get_client(config: ProducerConfig) -> Client:
    """The process's client for ``config``'s endpoint and spool directory, created on first use."""
    key = (config.endpoint, config.spool_dir.absolute(), config.pinned)
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
