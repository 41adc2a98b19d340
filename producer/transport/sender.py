"""The sender thread: delivers outboxes to the collector over one DEALER socket, with acks.

Per run it reads the outbox with a :class:`~producer.wire.recordlog.LogReader` and keeps in memory
only a bounded window of events read and not yet acknowledged (memory stays bounded when the
collector is away for hours). Events go out in ``Submit`` batches in seq order; cumulative
``Ack`` releases the window and the outbox; ``Nack(expect)`` and silence (no ack progress for
:data:`~producer.transport.window.RESEND_AFTER` with events in flight) rewind. An event with a
file waits until the file is on the collector (``FileOffer``, then ``FileChunk`` with a credit
window, read from the spooled blob at send time); other runs keep flowing meanwhile. Every send
is non-blocking: a full or unconnected socket (``zmq.Again``) means try again later, never wait.

What to send and what an answer does are decided by pure state machines
(:mod:`~producer.transport.window`, :mod:`~producer.transport.transfer`); a run's reading and
files are :class:`~producer.transport.stream.Stream`'s. This thread owns all of them and the
socket; it calls back into the client only through :class:`SenderHost`.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Final, Protocol

import msgspec
import zmq

from producer.config import ProducerConfig
from producer.transport.outbox import Outbox, home, list_outboxes
from producer.transport.refusals import Refusals
from producer.transport.runstate import RunState
from producer.transport.stream import Stream
from producer.transport.tally import Tally
from producer.transport.transfer import StatusOutcome
from producer.transport.window import Batch, Entry, NackOutcome
from producer.wire import protocol

log = logging.getLogger(__name__)

HEARTBEAT_EVERY: Final = 2.0
ADOPT_EVERY: Final = 30.0
POLL_MS: Final = 100


class SenderHost(Protocol):
    """What the sender asks of the client that owns it (``Client`` is one)."""

    def run_states(self) -> list[RunState]:
        """The runs to deliver now (owned and adopted)."""
        ...

    def adopt(self, outbox: Outbox) -> bool:
        """Register a leftover outbox the sender has locked; False if the run id is taken."""
        ...

    def forget(self, state: RunState) -> None:
        """A run is delivered and its outbox deleted."""
        ...

    def on_acked(self) -> None:
        """Acks arrived, or a run will get no further: wake whoever waits for delivery."""
        ...


class Sender:
    """The loop of the sender thread. Only that thread touches the DEALER socket and the streams.

    Args:
        host: the client, called back for the runs to deliver and to report progress.
        config: endpoint, keys, spool directory.
        tally: the client's counters and once-only messages.
        ctx: the ZeroMQ context to make the socket in.
        wake: the inproc socket the writer wakes this thread through (closed at the end).
        adopt: deliver leftover outboxes found in the spool directory too.

    """

    def __init__(
        self,
        host: SenderHost,
        config: ProducerConfig,
        tally: Tally,
        ctx: zmq.Context[zmq.Socket[bytes]],
        wake: zmq.Socket[bytes],
        *,
        adopt: bool,
        adopt_every: float = ADOPT_EVERY,
    ) -> None:
        self._host = host
        self._adopt_every = adopt_every
        self._config = config
        self._tally = tally
        self._ctx = ctx
        self._wake = wake
        self._adopt = adopt
        self._stop = threading.Event()
        self._streams: dict[str, Stream] = {}
        self._refusals = Refusals(config, tally, self._streams, wake_waiters=host.on_acked)
        self._blocked = False
        self._sock: zmq.Socket[bytes] | None = None
        #: Each file chunk is read into this buffer, and ZeroMQ copies it into a message of its own
        #: as it is sent, so the buffer is free again at once. A fresh ``bytes`` per chunk cost
        #: every page of every chunk a page fault (about 170,000 per GB sent, and 0.3 s or more of
        #: kernel CPU per GB in the training's process here).
        self._chunk = bytearray(protocol.CHUNK_BYTES)
        #: Outboxes locked by a live producer at the last adoption scan (read by sync).
        self.locked: set[str] = set()
        #: Set after each scan for leftover outboxes.
        self.scanned = threading.Event()
        self._hostname = socket.gethostname()[:255]

    def stop(self) -> None:
        """(Any thread.) Ask the loop to end; it does within :data:`POLL_MS`."""
        self._stop.set()

    # ------------------------------------------------------------------------------ the loop

    def run(self) -> None:
        sock = self._sock = self._ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.immediate = 1
        sock.reconnect_ivl = 100
        sock.reconnect_ivl_max = 2000
        sock.sndhwm = sock.rcvhwm = 100_000
        if self._config.curve is not None:
            self._config.curve.apply(sock)  # encrypted, and only to the collector holding that key
        try:
            sock.connect(self._config.endpoint)
            poller = zmq.Poller()
            poller.register(self._wake, zmq.POLLIN)
            poller.register(sock, zmq.POLLIN)
            next_heartbeat = next_adopt = time.monotonic()
            while not self._stop.is_set():
                poller.modify(sock, zmq.POLLIN | (zmq.POLLOUT if self._blocked else 0))
                ready = dict(poller.poll(POLL_MS))
                now = time.monotonic()
                try:
                    if self._wake in ready:
                        self._drain(self._wake)
                    if ready.get(sock, 0) & zmq.POLLOUT:
                        self._blocked = False
                    if ready.get(sock, 0) & zmq.POLLIN:
                        self._receive(sock, now)
                    if self._adopt and now >= next_adopt:
                        next_adopt = now + self._adopt_every
                        self._adopt_leftovers()
                    if now >= next_heartbeat:
                        next_heartbeat = now + HEARTBEAT_EVERY
                        self._heartbeat()
                    self._sync_streams()
                    if now >= self._refusals.paused_until:
                        self._check_silence(now)
                        self._pump(now)
                    self._retire()
                except Exception:  # keep delivering: one bad state must not end the thread
                    self._tally.count("sender_errors")
                    self._tally.log_once(log, logging.ERROR, "sender", "clearml-relay: sender error")
                    log.debug("sender error", exc_info=True)
        finally:
            for stream in self._streams.values():
                stream.end_transfer()
            sock.close(linger=0)
            self._wake.close(linger=0)

    @staticmethod
    def _drain(sock: zmq.Socket[bytes]) -> None:
        try:
            while True:
                sock.recv(zmq.DONTWAIT)
        except zmq.Again:
            pass

    def _send(self, frames: list[bytes | memoryview]) -> bool:
        """Send without blocking; False (and try later) when the socket cannot take it."""
        assert self._sock is not None
        if self._blocked:
            return False
        try:
            self._sock.send_multipart(frames, zmq.DONTWAIT)
        except zmq.Again:
            self._blocked = True
            return False
        return True

    def _send_message(self, message: protocol.Request, payload: memoryview | None = None) -> bool:
        frames: list[bytes | memoryview] = [protocol.HEADER, protocol.encode(message)]
        if payload is not None:
            frames.append(payload)
        return self._send(frames)

    # ------------------------------------------------------------------------- runs & timers

    def _adopt_leftovers(self) -> None:
        """Take over outboxes whose producer is gone (their lock is free)."""
        known = {s.run_id for s in self._host.run_states()}
        locked = set()
        for run_id in list_outboxes(self._config.spool_dir):
            if run_id in known:
                continue
            recorded = home(self._config.spool_dir, run_id)
            if recorded != self._config.endpoint and (recorded is not None or self._config.pinned):
                # Another collector's run: the client (or agent) of that one sends it. One of a
                # set of collectors takes only the outboxes that record it.
                continue
            try:
                outbox = Outbox.open(
                    self._config.spool_dir, run_id, create=False, on_damage=self._tally.on_damage(run_id)
                )
            except (OSError, ValueError) as exc:
                self._tally.log_once(
                    log, logging.WARNING, ("adopt", run_id), "clearml-relay: cannot adopt %s: %s", run_id, exc
                )
                continue
            if outbox is None:
                locked.add(run_id)
                continue
            if self._host.adopt(outbox):
                self._tally.count("outboxes_adopted")
                log.info("clearml-relay: delivering leftover outbox %s (%d events)", run_id, outbox.last_seq)
            else:
                outbox.close()
        self.locked = locked
        self.scanned.set()

    def _heartbeat(self) -> None:
        runs = [
            s.run_id
            for s in self._host.run_states()
            if s.owned and not (s.closing or s.failed or s.refused)  # a refused run is not ours to keep alive
        ]
        if runs:
            self._send_message(protocol.Heartbeat(runs=runs, host=self._hostname, pid=os.getpid()))

    def _sync_streams(self) -> None:
        """Start a stream for every run whose outbox is open."""
        for state in self._host.run_states():
            if state.outbox is not None and not state.removed and state.run_id not in self._streams:
                self._streams[state.run_id] = Stream(state, state.outbox, self._tally)

    def _retire(self) -> None:
        """Delete outboxes that are delivered and will get no more events."""
        for run_id, stream in list(self._streams.items()):
            state = stream.state
            if not stream.outbox.fully_acked():
                continue
            if state.owned and not state.closed:
                continue
            stream.end_transfer()
            del self._streams[run_id]
            stream.outbox.remove()
            state.removed = True
            self._host.forget(state)

    def _check_silence(self, now: float) -> None:
        for stream in self._streams.values():
            if stream.window.check_silence(now):
                self._tally.count("resends")
            if stream.transfer is not None and stream.transfer.check_silence(now):
                self._tally.count("resends")

    # ------------------------------------------------------------------------------ sending

    def _pump(self, now: float) -> None:
        for stream in list(self._streams.values()):
            if self._blocked:
                return
            if stream.window.paused(now):
                continue
            stream.fill()
            self._pump_stream(stream, now)

    def _pump_stream(self, stream: Stream, now: float) -> None:
        while (step := stream.window.next_step()) is not None:
            if not isinstance(step, Batch):
                self._pump_file(stream, step, now)
                return
            events = [msgspec.Raw(body) for body in step.bodies]
            if not self._send_message(protocol.Submit(events=events, writer=stream.outbox.writer)):
                return
            self._tally.count("events_sent", stream.window.sent_through(step.end, now))

    def _pump_file(self, stream: Stream, entry: Entry, now: float) -> None:
        t = stream.transfer
        if t is None or t.seq != entry.seq:
            t = stream.start_transfer(entry, now)
            if t is None:
                return
        if t.offer_due():
            offer = protocol.FileOffer(
                run=stream.state.run_id, sha256=t.ref.sha256, size=t.ref.size, writer=stream.outbox.writer
            )
            if self._send_message(offer):
                t.offer_sent(now)
            return
        while (offset := t.next_chunk()) is not None:
            data = stream.read_chunk(offset, self._chunk)
            if not data:
                stream.replace_with_gap(entry, "spooled file is shorter than recorded")
                return
            chunk = protocol.FileChunk(run=stream.state.run_id, sha256=t.ref.sha256, offset=offset)
            if not self._send_message(chunk, data):
                return
            t.chunk_sent(len(data), now)

    # ---------------------------------------------------------------------------- receiving

    def _receive(self, sock: zmq.Socket[bytes], now: float) -> None:
        while True:
            try:
                frames = sock.recv_multipart(zmq.DONTWAIT)
            except zmq.Again:
                return
            try:
                reply = protocol.decode_reply(frames)
            except protocol.ProtocolError as exc:
                if exc.code == "version":
                    self._refusals.version_mismatch(frames[0] if frames else b"", exc.reason, now)
                else:
                    self._tally.count("replies_malformed")
                    self._tally.log_once(
                        log, logging.WARNING, "bad-reply", "clearml-relay: undecodable reply: %s", exc
                    )
                continue
            if isinstance(reply, protocol.Ack):
                self._on_ack(reply, now)
            elif isinstance(reply, protocol.Nack):
                self._on_nack(reply, now)
            elif isinstance(reply, protocol.FileStatus):
                self._on_file_status(reply, now)
            elif isinstance(reply, protocol.Refuse):
                self._refusals.on_refuse(reply, now)

    def _on_ack(self, ack: protocol.Ack, now: float) -> None:
        for run_id, acked_to in ack.runs.items():
            stream = self._streams.get(run_id)
            if stream is None:
                continue
            newly = stream.on_ack(acked_to, now)
            if newly:
                self._tally.count("events_acked", newly)
        self._host.on_acked()

    def _on_nack(self, nack: protocol.Nack, now: float) -> None:
        stream = self._streams.get(nack.run)
        if stream is None:
            return
        outcome = stream.window.nack(nack.expect, now)
        if outcome is NackOutcome.REWOUND:
            self._tally.count("rewinds")
        elif outcome is NackOutcome.LOST_ACKED:
            # The collector lost events it had acknowledged and we deleted: let the run go on.
            acked = stream.window.acked
            self._tally.log_once(
                log,
                logging.WARNING,
                ("lost-acked", nack.run),
                "clearml-relay: collector asks run %s for events from %d, already acknowledged up to %d",
                nack.run,
                nack.expect,
                acked,
            )
            gap = stream.gap(nack.expect, acked, "collector lost acknowledged events")
            self._send_message(protocol.Submit(events=[msgspec.Raw(gap.body)], writer=stream.outbox.writer))

    def _on_file_status(self, status: protocol.FileStatus, now: float) -> None:
        stream = self._streams.get(status.run)
        t = stream.transfer if stream is not None else None
        if stream is None or t is None or t.ref.sha256 != status.sha256:
            return  # a late answer for a finished transfer
        outcome = t.on_status(status.have, complete=status.complete, error=status.error, now=now)
        if outcome is StatusOutcome.COMPLETE:
            stream.window.file_done(t.ref.sha256)
            stream.end_transfer()
        elif outcome is StatusOutcome.REJECTED:
            self._tally.count("file_errors")
            self._tally.log_once(
                log,
                logging.WARNING,
                ("file-error", status.run),
                "clearml-relay: collector rejected file %s of run %s (%s); sending it again",
                t.ref.name,
                status.run,
                status.error,
            )
