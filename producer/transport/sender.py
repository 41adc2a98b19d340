"""The sender thread: delivers outboxes to the collector over one DEALER socket, with acks.

Per run it reads the outbox with a :class:`~producer.wire.recordlog.LogReader` and keeps in memory
only a bounded window of events read and not yet acknowledged (memory stays bounded when the
collector is away for hours). Events go out in ``Submit`` batches in seq order; cumulative
``Ack`` releases the window and the outbox; ``Nack(expect)`` and silence (no ack progress for
:data:`RESEND_AFTER` with events in flight) rewind. An event with a file waits until the file is
on the collector (``FileOffer``, then ``FileChunk`` with a credit window, read from the spooled
blob at send time); other runs keep flowing meanwhile. Every send is non-blocking: a full or
unconnected socket (``zmq.Again``) means try again later, never wait.
"""

from __future__ import annotations

import collections
import logging
import os
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal, NamedTuple

import msgspec
import zmq

from producer.transport.outbox import Outbox, list_outboxes
from producer.wire import protocol
from producer.wire.recordlog import LogReader

if TYPE_CHECKING:
    from producer.transport.client import Client, RunState

log = logging.getLogger(__name__)

#: Events read and not yet acked, per run: the memory bound while the collector is away.
WINDOW_EVENTS: Final = 5000
WINDOW_BYTES: Final = 32 * 1024 * 1024
#: One Submit holds at most this many events or this many bytes of events.
BATCH_EVENTS: Final = 500
BATCH_BYTES: Final = 1024 * 1024
#: File chunks sent ahead of their FileStatus answers.
CREDIT: Final = 8
RESEND_AFTER: Final = 2.0
#: A Nack for the same ``expect`` within this time is an echo of out-of-order events in flight.
NACK_QUIET: Final = 1.0
HEARTBEAT_EVERY: Final = 2.0
ADOPT_EVERY: Final = 30.0
VERSION_RETRY: Final = 10.0
#: A run the collector refused (another key owns it, or this key's open-run limit): try again
#: this much later (an allow-list or a limit may change), sending nothing for it meanwhile.
REFUSED_RETRY: Final = 30.0
POLL_MS: Final = 100


class _Entry(NamedTuple):
    """One event of the window: ``seq`` .. ``last`` (a Gap covers several seqs)."""

    seq: int
    last: int
    body: bytes
    file: protocol.FileRef | None


@dataclass(eq=False)
class _Transfer:
    """The file of the event at ``seq`` on its way to the collector."""

    seq: int
    ref: protocol.FileRef
    fd: int
    offer: Literal["due", "sent", "answered"] = "due"
    next_offset: int = 0
    inflight: collections.deque[int] = field(default_factory=collections.deque)  # chunk end offsets
    stale: int = 0  # answers due for chunks sent before a rewind: they only return credit
    last_activity: float = 0.0


@dataclass(eq=False)
class _Stream:
    """Sender-side state of one run's delivery."""

    state: RunState
    outbox: Outbox
    reader: LogReader
    read_next: int
    window: collections.deque[_Entry] = field(default_factory=collections.deque)
    window_bytes: int = 0
    sent: int = 0  # window entries sent and in flight (window[:sent])
    last_progress: float = 0.0
    last_nack: tuple[int, float] = (0, 0.0)
    transfer: _Transfer | None = None
    files_done: set[str] = field(default_factory=set)
    paused_until: float = 0.0  # refused by the collector (denied, limit): nothing sent until then


class Sender:
    """The loop of the sender thread. Only that thread touches the DEALER socket."""

    def __init__(
        self, client: Client, ctx: zmq.Context[zmq.Socket[bytes]], wake: zmq.Socket[bytes], *, adopt: bool
    ):
        self._client = client
        self._config = client.config
        self._ctx = ctx
        self._wake = wake
        self._adopt = adopt
        self._stop = threading.Event()
        self._streams: dict[str, _Stream] = {}
        self._blocked = False
        self._paused_until = 0.0
        self._sock: zmq.Socket[bytes] | None = None
        #: Outboxes locked by a live producer at the last adoption scan.
        self.locked: set[str] = set()
        #: Set after each scan for leftover outboxes.
        self.scanned = threading.Event()
        self._host = socket.gethostname()[:255]

    def stop(self) -> None:
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
                        next_adopt = now + ADOPT_EVERY
                        self._adopt_leftovers()
                    if now >= next_heartbeat:
                        next_heartbeat = now + HEARTBEAT_EVERY
                        self._heartbeat()
                    self._sync_streams()
                    if now >= self._paused_until:
                        self._check_silence(now)
                        self._pump(now)
                    self._retire()
                except Exception:  # keep delivering: one bad state must not end the thread
                    self._client.count("sender_errors")
                    self._client.once.log(log, logging.ERROR, "sender", "clearml-relay: sender error")
                    log.debug("sender error", exc_info=True)
        finally:
            for stream in self._streams.values():
                self._end_transfer(stream)
            sock.close(linger=0)
            self._wake.close(linger=0)

    @staticmethod
    def _drain(sock: zmq.Socket[bytes]) -> None:
        try:
            while True:
                sock.recv(zmq.DONTWAIT)
        except zmq.Again:
            pass

    def _send(self, frames: list[bytes]) -> bool:
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

    def _send_message(self, message: protocol.Request, payload: bytes | None = None) -> bool:
        frames = [protocol.HEADER, protocol.encode(message)]
        if payload is not None:
            frames.append(payload)
        return self._send(frames)

    # ------------------------------------------------------------------------- runs & timers

    def _adopt_leftovers(self) -> None:
        """Take over outboxes whose producer is gone (their lock is free)."""
        known = {s.run_id for s in self._client.run_states()}
        locked = set()
        for run_id in list_outboxes(self._config.spool_dir):
            if run_id in known:
                continue
            try:
                outbox = Outbox.open(
                    self._config.spool_dir, run_id, create=False, on_damage=self._client.on_damage(run_id)
                )
            except (OSError, ValueError) as exc:
                self._client.once.log(
                    log, logging.WARNING, ("adopt", run_id), "clearml-relay: cannot adopt %s: %s", run_id, exc
                )
                continue
            if outbox is None:
                locked.add(run_id)
                continue
            if self._client.adopt(outbox):
                self._client.count("outboxes_adopted")
                log.info("clearml-relay: delivering leftover outbox %s (%d events)", run_id, outbox.last_seq)
            else:
                outbox.close()
        self.locked = locked
        self.scanned.set()

    def _heartbeat(self) -> None:
        runs = [
            s.run_id
            for s in self._client.run_states()
            if s.owned and not (s.closing or s.failed or s.refused)  # a refused run is not ours to keep alive
        ]
        if runs:
            self._send_message(protocol.Heartbeat(runs=runs, host=self._host, pid=os.getpid()))

    def _sync_streams(self) -> None:
        """Start a stream for every run whose outbox is open."""
        for state in self._client.run_states():
            if state.outbox is not None and not state.removed and state.run_id not in self._streams:
                start = state.outbox.acked + 1
                reader = state.outbox.reader(start, on_damage=self._client.on_damage(state.run_id))
                self._streams[state.run_id] = _Stream(state, state.outbox, reader, read_next=start)

    def _retire(self) -> None:
        """Delete outboxes that are delivered and will get no more events."""
        for run_id, stream in list(self._streams.items()):
            state = stream.state
            if not stream.outbox.fully_acked():
                continue
            if state.owned and not state.closed:
                continue
            self._end_transfer(stream)
            del self._streams[run_id]
            stream.outbox.remove()
            state.removed = True
            self._client.forget(state)

    def _check_silence(self, now: float) -> None:
        for stream in self._streams.values():
            if stream.sent and now - stream.last_progress > RESEND_AFTER:
                # No ack progress: what was in flight may be lost (collector restarted,
                # reconnect). Resend from acked + 1; the collector dedups.
                stream.sent = 0
                stream.last_progress = now
                self._client.count("resends")
            t = stream.transfer
            waiting = t is not None and (t.offer == "sent" or t.inflight or t.stale)
            if t is not None and waiting and now - t.last_activity > RESEND_AFTER:
                self._restart_transfer(t)
                self._client.count("resends")

    # ------------------------------------------------------------------------------ sending

    def _pump(self, now: float) -> None:
        for stream in list(self._streams.values()):
            if self._blocked:
                return
            if now < stream.paused_until:
                continue
            self._fill(stream)
            self._pump_stream(stream, now)

    def _fill(self, stream: _Stream) -> None:
        """Read events from the outbox into the window, up to its bounds."""
        while len(stream.window) < WINDOW_EVENTS and stream.window_bytes < WINDOW_BYTES:
            records = stream.reader.read(
                max_records=min(BATCH_EVENTS, WINDOW_EVENTS - len(stream.window)),
                max_bytes=BATCH_BYTES,
                max_seq=stream.outbox.last_seq,  # only what the writer's appends committed
            )
            if not records:
                return
            for record in records:
                if record.seq > stream.read_next:
                    # Damaged records: tell the collector, so the run does not wait for them.
                    self._push(stream, self._gap(stream, stream.read_next, record.seq - 1, "outbox damage"))
                self._push(stream, _Entry(record.seq, record.seq, record.body, _file_of(record.body)))
                stream.read_next = record.seq + 1

    def _gap(self, stream: _Stream, first: int, last: int, reason: str) -> _Entry:
        self._client.count("events_lost", last - first + 1)
        gap = protocol.Gap(run=stream.state.run_id, seq=first, last=last, ts=time.time(), reason=reason)
        return _Entry(first, last, protocol.encode(gap), None)

    @staticmethod
    def _push(stream: _Stream, entry: _Entry) -> None:
        stream.window.append(entry)
        stream.window_bytes += len(entry.body)

    def _pump_stream(self, stream: _Stream, now: float) -> None:
        while stream.sent < len(stream.window):
            entry = stream.window[stream.sent]
            if entry.file is not None and entry.file.sha256 not in stream.files_done:
                self._pump_file(stream, entry, now)
                return
            batch: list[msgspec.Raw] = []
            size = 0
            end = stream.sent
            while end < len(stream.window) and len(batch) < BATCH_EVENTS:
                item = stream.window[end]
                if item.file is not None and item.file.sha256 not in stream.files_done:
                    break
                if batch and size + len(item.body) > BATCH_BYTES:
                    break
                batch.append(msgspec.Raw(item.body))
                size += len(item.body)
                end += 1
            if not self._send_message(protocol.Submit(events=batch, writer=stream.outbox.writer)):
                return
            if stream.sent == 0:
                stream.last_progress = now  # nothing was in flight: the silence clock starts now
            self._client.count("events_sent", end - stream.sent)
            stream.sent = end

    def _pump_file(self, stream: _Stream, entry: _Entry, now: float) -> None:
        assert entry.file is not None
        t = stream.transfer
        if t is None or t.seq != entry.seq:
            self._end_transfer(stream)
            t = self._start_transfer(stream, entry, now)
            if t is None:
                return
        if t.offer == "due":
            offer = protocol.FileOffer(
                run=stream.state.run_id, sha256=t.ref.sha256, size=t.ref.size, writer=stream.outbox.writer
            )
            if self._send_message(offer):
                t.offer, t.last_activity = "sent", now
            return
        if t.offer == "sent":
            return
        while len(t.inflight) + t.stale < CREDIT and t.next_offset < t.ref.size:
            data = os.pread(t.fd, protocol.CHUNK_BYTES, t.next_offset)
            if not data:
                self._replace_with_gap(stream, entry, "spooled file is shorter than recorded")
                return
            chunk = protocol.FileChunk(run=stream.state.run_id, sha256=t.ref.sha256, offset=t.next_offset)
            if not self._send_message(chunk, data):
                return
            if not t.inflight and not t.stale:
                t.last_activity = now  # answers are due from now on
            t.next_offset += len(data)
            t.inflight.append(t.next_offset)

    def _start_transfer(self, stream: _Stream, entry: _Entry, now: float) -> _Transfer | None:
        assert entry.file is not None
        try:
            fd = os.open(stream.outbox.blob_path(entry.seq), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self._replace_with_gap(stream, entry, "spooled file is missing")
            return None
        t = _Transfer(entry.seq, entry.file, fd, last_activity=now)
        stream.transfer = t
        return t

    @staticmethod
    def _restart_transfer(t: _Transfer) -> None:
        """Offer the file again: the collector's answer tells where to resume."""
        t.offer, t.next_offset, t.stale = "due", 0, 0
        t.inflight.clear()

    def _end_transfer(self, stream: _Stream) -> None:
        if stream.transfer is not None:
            os.close(stream.transfer.fd)
            stream.transfer = None

    def _replace_with_gap(self, stream: _Stream, entry: _Entry, reason: str) -> None:
        """An event whose file cannot be sent becomes a Gap: the run must not stall on it."""
        self._client.count("files_missing")
        self._client.once.log(
            log,
            logging.WARNING,
            ("blob", stream.state.run_id),
            "clearml-relay: run %s event %d: %s (%s); it is sent as a gap",
            stream.state.run_id,
            entry.seq,
            reason,
            stream.outbox.blob_path(entry.seq),
        )
        self._end_transfer(stream)
        index = stream.window.index(entry)
        gap = self._gap(stream, entry.seq, entry.last, f"{reason}: {entry.file.name if entry.file else ''}")
        stream.window[index] = gap
        stream.window_bytes += len(gap.body) - len(entry.body)

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
                    self._version_mismatch(frames[0] if frames else b"", exc.reason, now)
                else:
                    self._client.count("replies_malformed")
                    self._client.once.log(
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
                self._on_refuse(reply, now)

    def _on_ack(self, ack: protocol.Ack, now: float) -> None:
        for run_id, acked_to in ack.runs.items():
            stream = self._streams.get(run_id)
            if stream is None:
                continue
            # A position beyond what we wrote would be another producer's run of the same id.
            position = min(acked_to, stream.outbox.last_seq)
            before = stream.outbox.acked
            if position <= before:
                continue
            popped = 0
            while stream.window and stream.window[0].last <= position:
                stream.window_bytes -= len(stream.window.popleft().body)
                popped += 1
            stream.sent = max(0, stream.sent - popped)
            if position >= stream.read_next:
                stream.read_next = position + 1
                stream.reader = stream.outbox.reader(position + 1, self._client.on_damage(run_id))
            if stream.transfer is not None and stream.transfer.seq <= position:
                self._end_transfer(stream)  # the collector had that event already
            stream.outbox.mark_acked(position)
            stream.last_progress = now
            self._client.count("events_acked", position - before)
        self._client.on_acked()

    def _on_nack(self, nack: protocol.Nack, now: float) -> None:
        stream = self._streams.get(nack.run)
        if stream is None:
            return
        last_expect, when = stream.last_nack
        if nack.expect == last_expect and now - when < NACK_QUIET:
            return  # an echo: every out-of-order event in flight answers with the same Nack
        stream.last_nack = (nack.expect, now)
        acked = stream.outbox.acked
        if nack.expect <= acked:
            # The collector lost events it had acknowledged and we deleted: let the run go on.
            self._client.once.log(
                log,
                logging.WARNING,
                ("lost-acked", nack.run),
                "clearml-relay: collector asks run %s for events from %d, already acknowledged up to %d",
                nack.run,
                nack.expect,
                acked,
            )
            gap = self._gap(stream, nack.expect, acked, "collector lost acknowledged events")
            self._send_message(protocol.Submit(events=[msgspec.Raw(gap.body)], writer=stream.outbox.writer))
            return
        for index in range(stream.sent):
            if stream.window[index].last >= nack.expect:
                stream.sent = index
                stream.last_progress = now
                self._client.count("rewinds")
                return

    def _on_file_status(self, status: protocol.FileStatus, now: float) -> None:
        stream = self._streams.get(status.run)
        t = stream.transfer if stream is not None else None
        if stream is None or t is None or t.ref.sha256 != status.sha256:
            return  # a late answer for a finished transfer
        t.last_activity = now
        if status.complete:
            stream.files_done.add(t.ref.sha256)
            self._end_transfer(stream)
            return
        if t.offer != "answered":
            if t.offer == "sent":  # the answer to our offer: resume where the collector is
                t.offer, t.next_offset = "answered", status.have
            return
        if t.stale:
            t.stale -= 1
            return
        expected = t.inflight.popleft() if t.inflight else None
        if status.error:
            self._client.count("file_errors")
            self._client.once.log(
                log,
                logging.WARNING,
                ("file-error", status.run),
                "clearml-relay: collector rejected file %s of run %s (%s); sending it again",
                t.ref.name,
                status.run,
                status.error,
            )
        if status.error or (expected is not None and status.have != expected):
            # Resume where the collector is; answers to chunks already sent only return credit.
            t.next_offset = status.have
            t.stale = len(t.inflight)
            t.inflight.clear()

    def _on_refuse(self, refuse: protocol.Refuse, now: float) -> None:
        self._client.count(f"refused_{refuse.code}")
        if refuse.code == "too_large" and self._refused_file(refuse):
            return  # that file's event is a gap now (logged once)
        if refuse.code == "version":
            self._version_mismatch(b"", refuse.reason, now)
        elif refuse.code == "invalid":
            self._client.once.log(
                log,
                logging.WARNING,
                ("invalid", refuse.run),
                "clearml-relay: collector refused event %s of run %s as invalid (%s); it stands as a gap",
                refuse.seq,
                refuse.run,
                refuse.reason,
            )
        elif refuse.code in ("denied", "limit") and refuse.run is not None:
            self._refused_run(refuse, now)
        elif refuse.code == "conflict" and refuse.run is not None:
            self._conflicting_run(refuse)
        elif refuse.code == "backoff":
            self._paused_until = now + (refuse.retry_after if refuse.retry_after is not None else 1.0)
            self._client.once.log(
                log,
                logging.WARNING,
                "backoff",
                "clearml-relay: collector at %s asks producers to back off (%s); events keep spooling",
                self._config.endpoint,
                refuse.reason,
            )
        else:
            self._client.once.log(
                log,
                logging.WARNING,
                ("refuse", refuse.code),
                "clearml-relay: collector at %s refused a message (%s): %s",
                self._config.endpoint,
                refuse.code,
                refuse.reason,
            )

    def _refused_run(self, refuse: protocol.Refuse, now: float) -> None:
        """The collector will not take this run's events from us: pause it, say so once."""
        stream = self._streams.get(refuse.run or "")
        if stream is not None:
            stream.paused_until = now + (refuse.retry_after or REFUSED_RETRY)
            stream.sent = 0  # resent from the acknowledged position when the pause ends
        self._client.once.log(
            log,
            logging.ERROR,
            (refuse.code, refuse.run),
            "clearml-relay: collector at %s refused run %s (%s): %s; its events stay in the outbox at %s",
            self._config.endpoint,
            refuse.run,
            refuse.code,
            refuse.reason,
            Path(self._config.spool_dir),
        )

    def _conflicting_run(self, refuse: protocol.Refuse) -> None:
        """Another outbox owns this run id at the collector: stop sending the run, say so once.

        Waiting does not help, so the run counts as finished and not delivered: ``close()`` and
        flushes return False at once, and the events stay in the outbox.
        """
        stream = self._streams.get(refuse.run or "")
        if stream is None or stream.state.refused:
            return
        stream.paused_until = float("inf")
        stream.sent = 0
        self._end_transfer(stream)
        stream.state.problem = f"refused by the collector: {refuse.reason}"
        stream.state.refused = True
        log.error(
            "clearml-relay: collector at %s refused run %s: %s; its %d events stay in the outbox %s",
            self._config.endpoint,
            refuse.run,
            refuse.reason,
            stream.state.unacked(),
            stream.outbox.directory,
        )
        self._client.on_acked()  # wake flush waiters: this run will not get further

    def _refused_file(self, refuse: protocol.Refuse) -> bool:
        """A file above the collector's size limit: its event becomes a Gap (logged once)."""
        stream = self._streams.get(refuse.run or "")
        t = stream.transfer if stream is not None else None
        if stream is None or t is None:
            return False
        entry = next((e for e in stream.window if e.seq == t.seq), None)
        if entry is None:
            return False
        self._replace_with_gap(stream, entry, f"refused by the collector: {refuse.reason}")
        return True

    def _version_mismatch(self, header: bytes, reason: str, now: float) -> None:
        self._paused_until = now + VERSION_RETRY
        if header.startswith(protocol.MAGIC) and len(header) == len(protocol.HEADER):
            (theirs,) = struct.unpack(">H", header[len(protocol.MAGIC) :])
            what = f"speaks protocol {theirs}"
        else:
            what = f"refused this producer's protocol ({reason})"
        self._client.once.log(
            log,
            logging.ERROR,
            "version",
            "clearml-relay: collector at %s %s, this producer speaks %d; events stay in the outbox at %s",
            self._config.endpoint,
            what,
            protocol.PROTOCOL_VERSION,
            Path(self._config.spool_dir),
        )


def _file_of(body: bytes) -> protocol.FileRef | None:
    try:
        return protocol.event_file(protocol.decode_event(body))
    except protocol.ProtocolError:
        return None  # sent as written: the collector refuses it and journals a gap
