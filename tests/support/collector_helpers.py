"""Shared helpers of the collector tests: a raw DEALER producer, event factories, deadline waits."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import zmq

from collector.config import CollectorConfig
from collector.service.server import Collector
from producer.wire import protocol
from producer.wire.curve import CurveKeys

DEADLINE = 10.0
R = TypeVar("R", bound=protocol.Reply)


def make_config(data_dir: Path, **overrides: Any) -> CollectorConfig:
    """A collector config on a free port that ignores the environment of the test process."""
    overrides.setdefault("bind", "tcp://127.0.0.1:0")
    overrides.setdefault("drain_timeout", 5.0)
    overrides.setdefault("backend", "jsonl")
    return CollectorConfig.from_env(environ={}, data_dir=data_dir, **overrides)


@contextmanager
def running(data_dir: Path, backend: Any = None, **overrides: Any) -> Iterator[Collector]:
    with Collector(make_config(data_dir, **overrides), backend=backend) as collector:
        yield collector


def open_event(run: str, seq: int = 1, project: str = "proj", name: str = "train") -> protocol.RunOpen:
    return protocol.RunOpen(run=run, seq=seq, project=project, name=name)


def scalar(run: str, seq: int, value: float = 1.0) -> protocol.Scalar:
    return protocol.Scalar(run=run, seq=seq, title="loss", series="train", value=value, iteration=seq)


def close_event(run: str, seq: int) -> protocol.RunClose:
    return protocol.RunClose(run=run, seq=seq)


def run_events(run: str, last: int) -> list[protocol.Event]:
    """RunOpen then scalars through ``last``."""
    events: list[protocol.Event] = [open_event(run)]
    events += [scalar(run, seq) for seq in range(2, last + 1)]
    return events


def raw_event(**fields: Any) -> bytes:
    """A msgpack event body built field by field (to make invalid ones)."""
    return msgspec.msgpack.encode(fields)


def records(data_dir: Path, run: str) -> list[dict[str, Any]]:
    """The JSONL backend's complete lines for ``run`` (safe to call while it writes)."""
    path = data_dir / "records" / f"{run}.jsonl"
    if not path.exists():
        return []
    complete = path.read_bytes().split(b"\n")[:-1]  # the last piece: empty, or a line being written
    return [msgspec.json.decode(line) for line in complete]


class Producer:
    """A raw DEALER speaking the protocol by hand: the tests' producer."""

    def __init__(self, endpoint: str, curve: CurveKeys | None = None) -> None:
        self.context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.socket: zmq.Socket[bytes] = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        if curve is not None:
            curve.apply(self.socket)
        self.socket.connect(endpoint)

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.socket.close(linger=0)
        self.context.term()

    def send_frames(self, frames: list[bytes]) -> None:
        self.socket.send_multipart(frames)

    def send(self, request: protocol.Request, payload: bytes | None = None) -> None:
        frames = [protocol.HEADER, protocol.encode(request)]
        if payload is not None:
            frames.append(payload)
        self.send_frames(frames)

    def submit(self, events: list[protocol.Event | bytes]) -> None:
        raws = [msgspec.Raw(e if isinstance(e, bytes) else protocol.encode(e)) for e in events]
        self.send(protocol.Submit(events=raws))

    def recv(self, timeout: float = DEADLINE) -> protocol.Reply:
        if not self.socket.poll(int(timeout * 1000), zmq.POLLIN):
            raise AssertionError(f"no reply within {timeout} s")
        return protocol.decode_reply(self.socket.recv_multipart())

    def recv_until(
        self, done: Callable[[protocol.Reply], bool], timeout: float = DEADLINE
    ) -> list[protocol.Reply]:
        """Every reply up to and including the first one for which ``done`` holds."""
        deadline = time.monotonic() + timeout
        replies: list[protocol.Reply] = []
        while True:
            replies.append(self.recv(max(0.0, deadline - time.monotonic())))
            if done(replies[-1]):
                return replies

    def expect(self, kind: type[R], timeout: float = DEADLINE) -> R:
        """The next reply of type ``kind`` (others before it are skipped)."""
        reply = self.recv_until(lambda r: isinstance(r, kind), timeout)[-1]
        assert isinstance(reply, kind)
        return reply

    def until_acked(self, run: str, seq: int, timeout: float = DEADLINE) -> list[protocol.Reply]:
        """Replies up to an Ack that covers ``run`` through ``seq``."""
        return self.recv_until(lambda r: isinstance(r, protocol.Ack) and r.runs.get(run, 0) >= seq, timeout)

    def status(self) -> protocol.StatusReply:
        self.send(protocol.StatusRequest())
        return self.expect(protocol.StatusReply)
