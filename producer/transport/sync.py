"""Deliver leftover outboxes of a spool directory: the engine of ``clearml-relay sync``.

Outboxes whose producer is gone (their lock is free) are adopted and delivered like a live
producer would; those still locked by a live producer are left to it and reported. Whether the
collector is there at all is asked once at the start (a ``StatusRequest`` on a socket of its
own, which any collector answers, whatever it is busy with): when nothing answers within
``connect_timeout`` the sync gives up early, leaving every outbox as it was.

What ``clearml-relay sync`` shows of it is :mod:`collector.service.syncview`.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import zmq

from producer.config import ConfigError, ProducerConfig
from producer.transport.client import Client
from producer.transport.runstate import RunState
from producer.wire import protocol

#: Seconds between progress reports.
PROGRESS_EVERY: Final = 0.5
#: Seconds to wait for the collector's first answer before giving up (``connect_timeout``).
CONNECT_TIMEOUT: Final = 5.0

DELIVERED: Final = "delivered"
NOT_DELIVERED: Final = "not delivered"
REFUSED: Final = "refused by the collector"
LOCKED: Final = "locked by a live producer"


@dataclass(frozen=True)
class SyncProgress:
    """Where a sync stands.

    Attributes:
        runs_left: adopted outboxes not yet fully delivered.
        events_acked: events the collector acknowledged since the sync started.
        events_total: events the adopted outboxes held unacknowledged when adopted.
        locked: run ids of outboxes held by a live producer (not touched).
        elapsed: seconds since the sync started.
        runs_total: outboxes adopted.
        answered: the collector answered (its status, or an acknowledgement).
        final: the last report: the sync ends now.

    """

    runs_left: int
    events_acked: int
    events_total: int
    locked: tuple[str, ...]
    elapsed: float
    runs_total: int = 0
    answered: bool = False
    final: bool = False


@dataclass(frozen=True)
class RunOutcome:
    """One outbox at the end of a sync: ``acked``/``total`` are None for a locked one."""

    run_id: str
    state: str
    acked: int | None = None
    total: int | None = None


@dataclass(frozen=True)
class SyncResult:
    """What a sync achieved.

    Attributes:
        delivered: run ids delivered completely (their outboxes are deleted).
        left: run id -> events still unacknowledged (timeout, or collector unreachable).
        locked: run ids of outboxes held by a live producer (skipped).
        events_acked: events acknowledged during the sync.
        events_total: events to deliver when the sync started.
        answered: the collector answered at all (False: nothing listens at the endpoint, or
            it cannot be reached).
        runs: every outbox seen, adopted ones first, in run id order.
        elapsed: seconds the sync took.

    """

    delivered: tuple[str, ...]
    left: dict[str, int] = field(default_factory=dict)
    locked: tuple[str, ...] = ()
    events_acked: int = 0
    events_total: int = 0
    answered: bool = True
    runs: tuple[RunOutcome, ...] = ()
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        """Everything adopted was delivered."""
        return not self.left

    @property
    def unreachable(self) -> bool:
        """Something was to be delivered and no collector ever answered."""
        return bool(self.left) and not self.answered


class _Probe:
    """One ``StatusRequest``: whether anything answers at the endpoint (any reply will do)."""

    def __init__(self, config: ProducerConfig) -> None:
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.linger = 0
        if config.curve is not None:
            config.curve.apply(self._sock)
        self._sock.connect(config.endpoint)
        self._answered = False
        # Queued until connected: a collector that starts meanwhile still gets it.
        with contextlib.suppress(zmq.Again):
            request = [protocol.HEADER, protocol.encode(protocol.StatusRequest())]
            self._sock.send_multipart(request, zmq.DONTWAIT)

    def answered(self) -> bool:
        if not self._answered and self._sock.poll(0, zmq.POLLIN):
            self._answered = True
        return self._answered

    def close(self) -> None:
        self._sock.close(linger=0)
        self._ctx.term()


def _counts(states: list[RunState]) -> tuple[int, int]:
    acked = total = 0
    for state in states:
        if state.outbox is not None:
            total += state.outbox.last_seq - state.start_acked
            acked += state.outbox.acked - state.start_acked
    return acked, total


def _outcome(state: RunState) -> RunOutcome:
    acked, total = _counts([state])
    kind = DELIVERED if state.removed else REFUSED if state.refused else NOT_DELIVERED
    return RunOutcome(state.run_id, kind, acked, total)


def sync(
    spool_dir: str | os.PathLike[str],
    endpoint: str | None,
    timeout: float,
    progress: Callable[[SyncProgress], None] | None = None,
    *,
    connect_timeout: float = CONNECT_TIMEOUT,
) -> SyncResult:
    """Deliver every leftover outbox in ``spool_dir`` to the collector at ``endpoint``.

    Args:
        spool_dir: the spool directory to empty.
        endpoint: collector endpoint (None: ``CLEARML_RELAY_ENDPOINT`` or the default).
        timeout: seconds to try at most.
        progress: called about twice per second, and once at the end.
        connect_timeout: give up after this many seconds when the collector has not answered
            at all by then (``SyncResult.unreachable``); the outboxes are left as they were.

    Returns:
        What was delivered, what is left and what was locked by a live producer.

    Raises:
        ConfigError: the endpoint is invalid.

    """
    start = time.monotonic()
    deadline = start + max(0.0, timeout)
    answer_by = start + max(0.0, connect_timeout)
    config = ProducerConfig.from_env(endpoint=endpoint, spool_dir=spool_dir)
    if len(config.endpoints) > 1:
        raise ConfigError(
            f"sync delivers to one collector, got {config.endpoint!r}: run it once per collector "
            "(each outbox records its own), or run `clearml-relay agent`, which delivers to each"
        )
    runs: dict[str, RunState] = {}
    answered = False
    with contextlib.ExitStack() as stack:
        probe = _Probe(config)
        stack.callback(probe.close)
        client = Client(config, adopt=True, at_exit=False)
        stack.callback(client.stop)
        client.sender.scanned.wait(max(0.0, deadline - time.monotonic()))
        while True:
            runs.update((s.run_id, s) for s in client.run_states())
            states = list(runs.values())
            finished = all(s.finished() for s in states)
            acked, total = _counts(states)
            answered = answered or acked > 0 or probe.answered()
            now = time.monotonic()
            final = finished or now >= deadline or (not answered and now >= answer_by)
            if progress is not None:
                left = sum(1 for s in states if not s.finished())
                locked = tuple(sorted(client.sender.locked))
                progress(SyncProgress(left, acked, total, locked, now - start, len(states), answered, final))
            if final:
                break
            wait = min(PROGRESS_EVERY, deadline - now, math.inf if answered else answer_by - now)
            client.flush(wait, runs=states)
        answered = answered or probe.answered()
    acked, total = _counts(list(runs.values()))
    locked = tuple(sorted(client.sender.locked))
    return SyncResult(
        delivered=tuple(sorted(r for r, s in runs.items() if s.removed)),
        left={r: s.outbox.last_seq - s.outbox.acked for r, s in runs.items() if s.outbox and not s.removed},
        locked=locked,
        events_acked=acked,
        events_total=total,
        answered=answered,
        runs=(
            *(_outcome(runs[r]) for r in sorted(runs)),
            *(RunOutcome(r, LOCKED) for r in locked if r not in runs),
        ),
        elapsed=time.monotonic() - start,
    )
