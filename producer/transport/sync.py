"""Deliver leftover outboxes of a spool directory: the engine of ``clearml-relay sync``.

Outboxes whose producer is gone (their lock is free) are adopted and delivered like a live
producer would; those still locked by a live producer are left to it and reported. Whether the
collector is there at all is asked once at the start (a ``StatusRequest`` on a socket of its
own, which any collector answers, whatever it is busy with): when nothing answers within
``connect_timeout`` the sync gives up early, leaving every outbox as it was.

:class:`SyncView` is what the command line shows of a sync: the endpoint and spool at the start,
a progress bar on a terminal (plain lines every :data:`PLAIN_EVERY` seconds otherwise), and a
table of the runs at the end. It loads ``rich`` only when it draws, and writes plain text where
``rich`` is not installed (a training node may have the producer only).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TextIO

import zmq

from producer.config import ProducerConfig
from producer.transport.client import Client
from producer.transport.runstate import RunState
from producer.wire import protocol

#: Seconds between progress reports.
PROGRESS_EVERY: Final = 0.5
#: Seconds to wait for the collector's first answer before giving up (``connect_timeout``).
CONNECT_TIMEOUT: Final = 5.0
#: Seconds between plain progress lines (when stderr is not a terminal).
PLAIN_EVERY: Final = 5.0

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


# ------------------------------------------------------------------------ the command's view


def outboxes(n: int) -> str:
    return f"{n} outbox" if n == 1 else f"{n} outboxes"


class SyncView:
    """What ``clearml-relay sync`` shows: pass :meth:`progress` to :func:`sync`, then :meth:`close`.

    Args:
        spool_dir: the spool directory synced (named in the first line).
        endpoint: the collector's endpoint (named in the first line).
        err: where the first line and the progress go (default ``sys.stderr``); a progress bar
            only when it is a terminal and ``rich`` is installed.

    """

    def __init__(self, spool_dir: Path, endpoint: str, err: TextIO | None = None) -> None:
        self.spool_dir = spool_dir.absolute()
        self.endpoint = endpoint
        self._err = sys.stderr if err is None else err
        self._started = False
        self._next_line = PLAIN_EVERY
        self._bar: Any = None  # a started rich.progress.Progress
        self._task: Any = None

    def progress(self, report: SyncProgress) -> None:
        if not self._started:
            self._started = True
            self._start(report)
        if not report.runs_total:
            return
        left = f"{report.runs_left} of {outboxes(report.runs_total)} left"
        if not report.answered:
            left += f", waiting for {self.endpoint} to answer"
        if self._bar is not None:
            self._bar.update(self._task, completed=report.events_acked, total=report.events_total, left=left)
        elif report.elapsed >= self._next_line and not report.final:  # the summary follows
            self._next_line = report.elapsed + PLAIN_EVERY
            print(
                f"sync: {report.events_acked}/{report.events_total} events acknowledged, {left}, "
                f"{report.elapsed:.0f} s",
                file=self._err,
                flush=True,
            )

    def _start(self, report: SyncProgress) -> None:
        if not report.runs_total:
            return  # the summary says there was nothing to deliver
        locked = f"; {_locked(len(report.locked))}" if report.locked else ""
        print(
            f"sync: delivering {outboxes(report.runs_total)} ({report.events_total} events) "
            f"from {self.spool_dir} to {self.endpoint}{locked}",
            file=self._err,
            flush=True,
        )
        if not self._err.isatty():
            return
        try:
            from rich.console import Console  # noqa: PLC0415  (only a terminal gets a bar)
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: PLC0415
        except ImportError:
            return
        self._bar = Progress(
            TextColumn("sync"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("events, {task.fields[left]}"),
            TimeElapsedColumn(),
            console=Console(file=self._err),
            transient=True,
        )
        self._task = self._bar.add_task("sync", total=report.events_total, left="")
        self._bar.start()

    def close(self) -> None:
        """Take the progress bar off the terminal."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def report(self, result: SyncResult) -> str:
        """The table of the runs (when there are any) and the summary line, for stdout."""
        table = _table(result.runs) if result.runs else ""
        return table + self.summary(result)

    def summary(self, result: SyncResult) -> str:
        adopted = len(result.runs) - len(result.locked)
        locked = f"; {_locked(len(result.locked))}" if result.locked else ""
        if not adopted:
            return f"sync: nothing to deliver in {self.spool_dir}{locked}"
        events = f"{result.events_acked}/{result.events_total} events"
        if result.ok:
            return f"sync: delivered {outboxes(adopted)} ({events}) to {self.endpoint}{locked}"
        return (
            f"sync: delivered {len(result.delivered)} of {outboxes(adopted)} ({events}) "
            f"to {self.endpoint} in {result.elapsed:.0f} s; the rest stay in {self.spool_dir}{locked}"
        )


def _locked(n: int) -> str:
    return f"{outboxes(n)} {'is' if n == 1 else 'are'} locked by a live producer, left to it"


def _table(runs: tuple[RunOutcome, ...]) -> str:
    def events(run: RunOutcome) -> str:
        return "-" if run.total is None else f"{run.acked}/{run.total}"

    try:
        from rich import box  # noqa: PLC0415  (only the table needs rich)
        from rich.console import Console  # noqa: PLC0415
        from rich.table import Table  # noqa: PLC0415
    except ImportError:
        width = max(len(r.run_id) for r in runs)
        lines = [f"{'run':<{width}}  {'events acknowledged':>19}  state"]
        lines += [f"{r.run_id:<{width}}  {events(r):>19}  {r.state}" for r in runs]
        return "\n".join(lines) + "\n"
    # As ``clearml-relay runs`` draws its table.
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)
    table.add_column("run", overflow="fold")
    table.add_column("events acknowledged", justify="right", no_wrap=True)
    table.add_column("state", no_wrap=True)
    for run in runs:
        table.add_row(run.run_id, events(run), run.state)
    console = Console()
    with console.capture() as captured:
        console.print(table)
    return "".join(line.rstrip() + "\n" for line in captured.get().splitlines())
