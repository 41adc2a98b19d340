"""Helpers for the producer's tests: a scriptable fake collector and deadline waits.

The fake collector is a real ZeroMQ ROUTER in a thread that speaks ``producer.wire.protocol`` with
the collector's semantics (in-order acceptance, cumulative acks, Nack on a hole, credit-based
file transfer), plus knobs to misbehave on purpose: withhold acks, lose events in flight, answer
with another protocol version, start a file from a partial copy, corrupt a chunk.
"""

from __future__ import annotations

import hashlib
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import zmq

from producer.transport.outbox import Outbox
from producer.wire import protocol


@dataclass
class _File:
    size: int
    data: bytearray = field(default_factory=bytearray)
    complete: bool = False


class FakeCollector:
    """A collector end whose behaviour tests script precisely. Use as a context manager."""

    def __init__(self, *, ack: bool = True, header: bytes = protocol.HEADER) -> None:
        self.ack = ack
        self.header = header
        self.refuse_version = header != protocol.HEADER
        self.lose: set[tuple[str, int]] = set()  # (run, seq) to drop once, as if lost in flight
        self.drop_submits = 0  # Submits to ignore entirely (no ack, no nack)
        self.corrupt_chunk_at: int | None = None  # flip a byte of the chunk at this offset, once
        self.hold_file_status = False  # receive chunks but answer none
        self.invalid: set[tuple[str, int]] = set()  # (run, seq) to refuse as invalid (journaled as a Gap)
        self.positions: dict[str, int] = {}
        self.events: dict[str, list[protocol.Event]] = {}
        self.files: dict[str, _File] = {}
        self.requests: list[protocol.Request] = []
        self.chunk_offsets: list[int] = []
        self.nacks_sent = 0
        self.violations: list[str] = []
        self.refusals_sent = 0
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.linger = 0
        self._sock.bind("tcp://127.0.0.1:*")
        self.endpoint: str = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> FakeCollector:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self._sock.close(linger=0)
        self._ctx.term()

    def preset_file(self, sha256: str, size: int, data: bytes) -> None:
        """Pretend an earlier transfer left ``data`` (the start of the file) on the collector."""
        self.files[sha256] = _File(size, bytearray(data))

    def wait_for(self, predicate: Callable[[FakeCollector], bool], timeout: float = 10.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self), timeout)

    def seqs(self, run: str) -> list[int]:
        with self._cond:
            return [e.seq for e in self.events.get(run, [])]

    # ----------------------------------------------------------------------------- serving

    def _loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(20):
                continue
            while True:
                try:
                    frames = self._sock.recv_multipart(zmq.DONTWAIT)
                except zmq.Again:
                    break
                with self._cond:
                    self._handle(frames[0], frames[1:])
                    self._cond.notify_all()

    def _reply(self, peer: bytes, message: protocol.Reply) -> None:
        self._sock.send_multipart([peer, self.header, protocol.encode(message)])

    def _handle(self, peer: bytes, frames: list[bytes]) -> None:
        if self.refuse_version:
            self.refusals_sent += 1
            (theirs,) = struct.unpack(">H", frames[0][4:])
            self._reply(peer, protocol.Refuse(code="version", reason=f"peer speaks {theirs}"))
            return
        request, payload = protocol.decode_request(frames)
        self.requests.append(request)
        if isinstance(request, protocol.Submit):
            self._submit(peer, request)
        elif isinstance(request, protocol.FileOffer):
            f = self.files.setdefault(request.sha256, _File(request.size))
            self._reply(peer, self._status(request.run, request.sha256, f))
        elif isinstance(request, protocol.FileChunk):
            assert payload is not None
            self._chunk(peer, request, payload)

    def _status(self, run: str, sha: str, f: _File, error: str = "") -> protocol.FileStatus:
        return protocol.FileStatus(run=run, sha256=sha, have=len(f.data), complete=f.complete, error=error)

    def _chunk(self, peer: bytes, chunk: protocol.FileChunk, payload: bytes) -> None:
        self.chunk_offsets.append(chunk.offset)
        f = self.files[chunk.sha256]
        error = ""
        if chunk.offset == len(f.data) and not f.complete:
            if self.corrupt_chunk_at == chunk.offset:
                self.corrupt_chunk_at = None
                payload = bytes([payload[0] ^ 0xFF]) + payload[1:]
            f.data += payload
            if len(f.data) >= f.size:
                if hashlib.sha256(f.data).hexdigest() == chunk.sha256:
                    f.complete = True
                else:
                    f.data.clear()
                    error = "sha256 mismatch"
        if not self.hold_file_status:
            self._reply(peer, self._status(chunk.run, chunk.sha256, f, error))

    def _submit(self, peer: bytes, submit: protocol.Submit) -> None:
        if self.drop_submits:
            self.drop_submits -= 1
            return
        touched = set()
        for raw in submit.events:
            event = protocol.decode_event(raw)
            run, seq = event.run, event.seq
            if (run, seq) in self.lose:
                self.lose.discard((run, seq))
                continue
            touched.add(run)
            position = self.positions.get(run, 0)
            if seq <= position:
                continue
            if seq > position + 1:
                self.nacks_sent += 1
                self._reply(peer, protocol.Nack(run=run, expect=position + 1))
                continue
            if (run, seq) in self.invalid:
                self.refusals_sent += 1
                self._reply(peer, protocol.Refuse(code="invalid", reason="bad title", run=run, seq=seq))
                event = protocol.Gap(run=run, seq=seq, last=seq, reason="invalid: bad title")
            ref = protocol.event_file(event)
            if ref is not None and not (ref.sha256 in self.files and self.files[ref.sha256].complete):
                self.violations.append(f"event {seq} of {run} arrived before its file")
            self.events.setdefault(run, []).append(event)
            self.positions[run] = event.last if isinstance(event, protocol.Gap) else seq
        if self.ack and touched:
            self._reply(peer, protocol.Ack(runs={r: self.positions.get(r, 0) for r in touched}))


def free_endpoint() -> str:
    """A tcp endpoint where nothing listens (a collector that is down)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"tcp://127.0.0.1:{port}"


def other_version_header(version: int) -> bytes:
    return protocol.MAGIC + struct.pack(">H", version)


def leftover_outbox(spool: Path, run_id: str, n: int) -> Outbox:
    """An outbox as a crashed producer leaves it: n events (open, then scalars), none acknowledged."""
    outbox = Outbox.open(spool, run_id)
    assert outbox is not None
    events: list[protocol.Event] = [protocol.RunOpen(run=run_id, seq=1, project="p", name=run_id)]
    events += [
        protocol.Scalar(run=run_id, seq=s, title="t", series="s", value=float(s), iteration=s)
        for s in range(2, n + 1)
    ]
    outbox.append([(e.seq, protocol.encode(e)) for e in events])
    return outbox
