"""Ingest: the collector's ROUTER socket, from received frames to journaled events and acks.

The loop polls, then drains up to :data:`DRAIN_MESSAGES` messages without blocking and handles
them as one batch. Garbage is routine (a daemon on a shared network gets it): every message is
decoded inside its own try/except, every refusal is answered with a ``Refuse`` that names the
reason and counted as ``refused_<code>``, and the loop keeps serving. A message that trips an
unexpected error is logged with its traceback, counted as ``internal_error`` and answered with
``Refuse("internal")``.

Events of a ``Submit`` are accepted strictly in seq order per run, by
:mod:`collector.pipeline.submit`. All events accepted in a batch (:mod:`collector.pipeline.batch`)
are journaled in one group commit, and only then does each peer get its replies: its refusals
and nacks first, then one cumulative ``Ack`` with the journaled position of every run it touched,
duplicates included. Replies are never sent ahead of the journal. File offers and chunks go to
the file store (:mod:`collector.pipeline.files`) and are answered in the same batch.

Events are counted per kind when they arrive (``received.<kind>``, resends included) and once
journaled (``journaled.<kind>``), one counter update per batch. :attr:`Ingest.last_loop` tells
a health check when the loop last came round.

With CURVE (see :mod:`collector.pipeline.security`) every message carries its producer's public key: a
run belongs to the first key that writes to it, other keys are refused with ``denied``, a key's
open runs are capped (``limit``), files go only to a key's own runs, and heartbeats count only for
a key's own runs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Final, NamedTuple

import zmq

from collector.counters import Counters
from collector.pipeline.batch import BACKOFF_SECONDS, Batch
from collector.pipeline.files import FileStore
from collector.pipeline.security import Owners
from collector.pipeline.submit import Submits
from collector.storage import paths
from collector.storage.journal import Journal, kind
from collector.storage.space import Episodes, is_disk_full
from producer.wire import protocol

log = logging.getLogger(__name__)

#: Messages handled per batch (and so per group commit) at most.
DRAIN_MESSAGES: Final = 1000
POLL_MS: Final = 100


def max_message_size(max_body_bytes: int) -> int:
    """ZeroMQ's hard per-frame cap, well above the limits that are answered.

    A frame between a limit and the cap gets a ``Refuse("too_large")``; a frame beyond the cap
    makes ZeroMQ drop the connection, so a huge message never gets to exhaust memory.
    """
    return 2 * max_body_bytes + 64 * 1024


#: Frames after the peer's identity received as bytes: frame 0 and the body. Frames after them (a
#: ``FileChunk``'s payload) stay in ZeroMQ's buffer and are written and hashed from there: a copy
#: less of every file byte.
COPIED_FRAMES: Final = 2


class Message(NamedTuple):
    """One message from a producer: its ROUTER identity, the frames after it, its CURVE key."""

    peer: bytes
    frames: list[bytes | memoryview]
    key: str | None = None


def receive(socket: zmq.Socket[bytes], *, with_key: bool) -> Message:
    """One message from ``socket`` (``zmq.Again`` if none is waiting).

    ``with_key``: also take the CURVE public key (Z85) the ZAP handler gave the message's
    connection (None if it has none); otherwise the key is None.
    """
    peer = socket.recv(zmq.NOBLOCK)
    frames: list[bytes | memoryview] = []
    key = None
    while socket.getsockopt(zmq.RCVMORE):
        if len(frames) >= COPIED_FRAMES:
            frames.append(socket.recv(zmq.NOBLOCK, copy=False).buffer)
        elif with_key and not frames:
            first = socket.recv(zmq.NOBLOCK, copy=False)  # metadata rides on each frame
            key = _user_id(first)
            frames.append(first.bytes)
        else:
            frames.append(socket.recv(zmq.NOBLOCK))
    return Message(peer, frames, key)


def _user_id(frame: zmq.Frame) -> str | None:
    """The CURVE public key (Z85) the ZAP handler gave the connection a message came from."""
    try:
        return str(frame.get("User-Id"))
    except zmq.ZMQError:
        return None


class Ingest:
    """The ROUTER socket and what it does with each message.

    Args:
        context: The ZeroMQ context the socket is made in (owned by the caller).
        bind: The endpoint to bind (``tcp://host:0`` picks a free port; see :attr:`endpoint`).
        journal: Where accepted events go.
        files: Where file offers and chunks go.
        counters: Where every reason and event is counted.
        status: Builds the reply to a ``StatusRequest``.
        max_body_bytes: Largest body and chunk payload accepted.
        max_journal_bytes: Above this, new events are refused with ``backoff``.
        max_file_bytes: Larger file offers are refused with ``too_large``.
        curve: The collector's ``(public, secret)`` CurveZMQ key: the socket becomes a CURVE
            server (a ZAP handler must run on ``context``); None: plain.
        owners: Run ownership by producer key (required with ``curve``).
        max_runs_per_key: Open runs one key may own; beyond, new runs are refused (``limit``).

    """

    def __init__(
        self,
        context: zmq.Context[zmq.Socket[bytes]],
        bind: str,
        journal: Journal,
        files: FileStore,
        *,
        counters: Counters,
        status: Callable[[], protocol.StatusReply],
        max_body_bytes: int = protocol.MAX_BODY_BYTES,
        max_journal_bytes: int = 10 * 1024**3,
        max_file_bytes: int = 64 * 1024**3,
        curve: tuple[bytes, bytes] | None = None,
        owners: Owners | None = None,
        max_runs_per_key: int = 1000,
        allow_pickled_figures: bool = False,
    ) -> None:
        if curve is not None and owners is None:
            raise ValueError("CURVE needs a run ownership map")
        self.journal = journal
        self.max_file_bytes = max_file_bytes
        self.owners = owners if curve is not None else None
        self.files = files
        self.counters = counters
        self.status = status
        self.max_body_bytes = max_body_bytes
        self.max_journal_bytes = max_journal_bytes
        #: Episodes of the journal at its size cap, and of the file store's disk being full.
        self.journal_cap = Episodes("journal_cap", "the journal's size cap", counters)
        self.files_space = Episodes("files_disk", "the file store's disk", counters)
        self._submits = Submits(
            journal,
            files,
            counters=counters,
            owners=self.owners,
            max_runs_per_key=max_runs_per_key,
            allow_pickled_figures=allow_pickled_figures,
        )
        #: Last heartbeat (monotonic seconds) per run.
        self.heartbeats: dict[str, float] = {}
        #: When the serving loop last came round (monotonic seconds): a health check reads it,
        #: so a loop stuck in a system call shows even though the process still answers.
        self.last_loop = time.monotonic()
        self.socket: zmq.Socket[bytes] = context.socket(zmq.ROUTER)
        try:
            self.socket.setsockopt(zmq.LINGER, 0)
            # Mandatory routing makes a reply to a vanished peer an error we can count.
            self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
            self.socket.setsockopt(zmq.MAXMSGSIZE, max_message_size(max_body_bytes))
            if curve is not None:
                self.socket.curve_server = True
                self.socket.curve_publickey, self.socket.curve_secretkey = curve
            self.socket.bind(bind)
            self.endpoint: str = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        except BaseException:
            self.socket.close(linger=0)
            raise

    def serve(self, stop: threading.Event, tick: Callable[[], None] | None = None) -> None:
        """Handle messages until ``stop`` is set (checked at least every :data:`POLL_MS`).

        ``tick`` runs on this thread about once a second: housekeeping that writes to the
        journal belongs here, so that one thread alone writes it.
        """
        next_tick = time.monotonic() + 1.0
        while not stop.is_set():
            self.last_loop = time.monotonic()
            if tick is not None and time.monotonic() >= next_tick:
                next_tick = time.monotonic() + 1.0
                try:
                    tick()
                except Exception:  # housekeeping must never stop the ingest loop
                    log.exception("collector housekeeping failed")
                    self.counters.incr("internal_error")
            if not self.socket.poll(POLL_MS, zmq.POLLIN):
                continue
            messages: list[Message] = []
            with_key = self.owners is not None
            while len(messages) < DRAIN_MESSAGES:
                try:
                    messages.append(receive(self.socket, with_key=with_key))
                except zmq.Again:
                    break
            try:
                self.handle(messages)
            except Exception:  # e.g. a socket error while replying: keep serving
                log.exception("internal error handling a batch of %d messages", len(messages))
                self.counters.incr("internal_error")

    def close(self) -> None:
        self.socket.close(linger=0)

    # ------------------------------------------------------------------------------- one batch

    def handle(self, messages: list[Message]) -> None:
        """Handle one batch of received messages, commit, then reply."""
        held = self.journal.size_bytes()
        batch = Batch(self.journal, held >= self.max_journal_bytes, self.counters)
        if batch.over_quota:
            self.journal_cap.failed(f"{held} bytes held, cap {self.max_journal_bytes}")
        else:
            self.journal_cap.fits()
        for peer, frames, key in messages:
            self.counters.incr("messages")
            batch.key = key
            try:
                self._message(peer, frames, batch)
            except protocol.ProtocolError as exc:
                batch.refuse(peer, exc.code, exc.reason, run=exc.run)
            except Exception:  # one bad message must not stop the collector
                log.exception("internal error handling a message")
                self.counters.incr("internal_error")
                batch.refuse(peer, "internal", "the collector failed to handle this message")
        if self.owners is not None:
            self.owners.save()  # a run's owner is durable before any of its events is acked
        failed = self._commit(batch)
        self.counters.incr_many(batch.counts)
        now = time.monotonic()
        for run in batch.entries:
            self.heartbeats[run] = now  # events are a sign of life too
        for peer, reply in batch.replies:
            self._send(peer, reply)
        for peer, runs in batch.acks.items():
            positions = {run: self.journal.position(run) for run in sorted(runs - failed)}
            positions = {run: position for run, position in positions.items() if position > 0}
            if positions:
                self._send(peer, protocol.Ack(runs=positions))

    def _commit(self, batch: Batch) -> set[str]:
        """Journal the batch; returns the runs that must not be acked (their write failed)."""
        if not batch.entries:
            return set()
        try:
            failed = self.journal.append_batch(batch.entries)
        except Exception:  # acks below still report only what the journal holds
            log.exception("group commit failed")
            self.counters.incr("internal_error")
            failed = set(batch.entries)
        kinds = Counter(
            f"journaled.{kind(entry.event)}"
            for run, entries in batch.entries.items()
            if run not in failed
            for entry in entries
        )
        self.counters.incr_many({"events_journaled": kinds.total(), **kinds})
        for peer, runs in batch.acks.items():
            for run in sorted(runs & failed):
                batch.refuse(
                    peer,
                    "backoff",
                    "the collector's journal is full"
                    if self.journal.space.full
                    else "the collector could not journal this run's events",
                    run=run,
                    retry_after=BACKOFF_SECONDS,
                )
        return failed

    def _message(self, peer: bytes, frames: list[bytes | memoryview], batch: Batch) -> None:
        request, payload = protocol.decode_request(frames, self.max_body_bytes)
        if isinstance(request, protocol.Submit):
            for raw in request.events:
                self._submits.event(peer, raw, batch, request.writer)
        elif isinstance(request, protocol.FileOffer):
            self._check_run(request.run)
            self._check_owner(request.run, batch.key)
            conflict = self._submits.conflict(request.run, request.writer, batch)
            if conflict:
                raise protocol.ProtocolError("conflict", conflict, run=request.run)
            if request.size > self.max_file_bytes:
                raise protocol.ProtocolError(
                    "too_large",
                    f"file {request.sha256[:12]} of run {request.run} is {request.size} bytes, "
                    f"the collector's limit is {self.max_file_bytes} (CLEARML_RELAY_MAX_FILE_BYTES)",
                    run=request.run,
                )
            offer = request
            self._file(peer, batch, offer.run, lambda: self.files.offer(offer.run, offer.sha256, offer.size))
        elif isinstance(request, protocol.FileChunk):
            assert payload is not None  # decode_request pairs FileChunk with its payload
            if len(payload) > self.max_body_bytes:
                raise protocol.ProtocolError(
                    "too_large", f"chunk payload is {len(payload)} bytes, limit {self.max_body_bytes}"
                )
            self._check_run(request.run)
            self._check_owner(request.run, batch.key)
            chunk, data = request, payload
            self._file(
                peer, batch, chunk.run, lambda: self.files.chunk(chunk.run, chunk.sha256, chunk.offset, data)
            )
        elif isinstance(request, protocol.Heartbeat):
            self.counters.incr("heartbeats")
            now = time.monotonic()
            for run in request.runs:
                if paths.is_safe_run(run) and (self.owners is None or self.owners.owner(run) == batch.key):
                    self.heartbeats[run] = now
        else:
            batch.replies.append((peer, self.status()))

    def _file(self, peer: bytes, batch: Batch, run: str, call: Callable[[], protocol.FileStatus]) -> None:
        """Answer a file offer or chunk; a full disk answers ``backoff`` (the producer re-offers)."""
        try:
            status = call()
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            self.files_space.failed(f"{self.files.directory}: {exc.strerror}")
            batch.refuse(
                peer,
                "backoff",
                "the collector's disk is full: keep spooling",
                run=run,
                retry_after=BACKOFF_SECONDS,
            )
            return
        self.files_space.fits()
        batch.replies.append((peer, status))

    @staticmethod
    def _check_run(run: str) -> None:
        if not paths.is_safe_run(run):
            raise protocol.ProtocolError("invalid", f"run id {run!r} is reserved")

    def _check_owner(self, run: str, key: str | None) -> None:
        """Files go only to a run the key owns (or will own: the offer precedes the event)."""
        owner = self.owners.owner(run) if self.owners is not None else None
        if owner is not None and owner != key:
            raise protocol.ProtocolError("denied", f"run {run} belongs to another producer key", run=run)

    # --------------------------------------------------------------------------------- replies

    def _send(self, peer: bytes, reply: protocol.Reply) -> None:
        try:
            self.socket.send_multipart([peer, protocol.HEADER, protocol.encode(reply)], zmq.NOBLOCK)
        except zmq.Again:
            self.counters.incr("reply_dropped")  # the peer's queue is full: it will resend
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            self.counters.incr("unroutable")  # the peer left; its resend will be answered
