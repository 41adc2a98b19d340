"""Deliver leftover outboxes of a spool directory: the engine of ``clearml-relay sync``.

Outboxes whose producer is gone (their lock is free) are adopted and delivered like a live
producer would; those still locked by a live producer are left to it and reported.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from producer.config import ProducerConfig
from producer.transport.client import Client
from producer.transport.runstate import RunState

#: Progress reports per second.
PROGRESS_EVERY = 0.5


@dataclass(frozen=True)
class SyncProgress:
    """Where a sync stands.

    Attributes:
        runs_left: adopted outboxes not yet fully delivered.
        events_acked: events the collector acknowledged since the sync started.
        events_total: events the adopted outboxes held unacknowledged when adopted.
        locked: run ids of outboxes held by a live producer (not touched).
        elapsed: seconds since the sync started.

    """

    runs_left: int
    events_acked: int
    events_total: int
    locked: tuple[str, ...]
    elapsed: float


@dataclass(frozen=True)
class SyncResult:
    """What a sync achieved.

    Attributes:
        delivered: run ids delivered completely (their outboxes are deleted).
        left: run id -> events still unacknowledged (timeout, or collector unreachable).
        locked: run ids of outboxes held by a live producer (skipped).
        events_acked: events acknowledged during the sync.
        events_total: events to deliver when the sync started.

    """

    delivered: tuple[str, ...]
    left: dict[str, int] = field(default_factory=dict)
    locked: tuple[str, ...] = ()
    events_acked: int = 0
    events_total: int = 0

    @property
    def ok(self) -> bool:
        """Everything adopted was delivered."""
        return not self.left


def _counts(states: list[RunState]) -> tuple[int, int]:
    acked = total = 0
    for state in states:
        if state.outbox is not None:
            total += state.outbox.last_seq - state.start_acked
            acked += state.outbox.acked - state.start_acked
    return acked, total


def sync(
    spool_dir: str | os.PathLike[str],
    endpoint: str | None,
    timeout: float,
    progress: Callable[[SyncProgress], None] | None = None,
) -> SyncResult:
    """Deliver every leftover outbox in ``spool_dir`` to the collector at ``endpoint``.

    Args:
        spool_dir: the spool directory to empty.
        endpoint: collector endpoint (None: ``CLEARML_RELAY_ENDPOINT`` or the default).
        timeout: seconds to try at most.
        progress: called about twice per second, and once at the end.

    Returns:
        What was delivered, what is left and what was locked by a live producer.

    Raises:
        ConfigError: the endpoint is invalid.

    """
    start = time.monotonic()
    deadline = start + max(0.0, timeout)
    config = ProducerConfig.from_env(endpoint=endpoint, spool_dir=spool_dir)
    client = Client(config, adopt=True, at_exit=False)
    runs: dict[str, RunState] = {}
    try:
        client.sender.scanned.wait(max(0.0, deadline - time.monotonic()))
        while True:
            runs.update((s.run_id, s) for s in client.run_states())
            states = list(runs.values())
            finished = all(s.finished() for s in states)
            now = time.monotonic()
            if progress is not None:
                acked, total = _counts(states)
                left = sum(1 for s in states if not s.finished())
                progress(SyncProgress(left, acked, total, tuple(sorted(client.sender.locked)), now - start))
            if finished or now >= deadline:
                break
            client.flush(min(PROGRESS_EVERY, deadline - now), runs=states)
    finally:
        client.stop()
    acked, total = _counts(list(runs.values()))
    return SyncResult(
        delivered=tuple(sorted(r for r, s in runs.items() if s.removed)),
        left={r: s.outbox.last_seq - s.outbox.acked for r, s in runs.items() if s.outbox and not s.removed},
        locked=tuple(sorted(client.sender.locked)),
        events_acked=acked,
        events_total=total,
    )
