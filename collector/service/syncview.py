"""What ``clearml-relay sync`` shows of a sync (:func:`producer.transport.sync.sync`).

The endpoint and spool at the start, a progress bar on a terminal (plain lines every
:data:`PLAIN_EVERY` seconds otherwise), and a table of the runs at the end. It loads ``rich``
only when it draws, and writes plain text where ``rich`` is not installed (a training node may
have the producer only).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Final, TextIO

from producer.transport.sync import RunOutcome, SyncProgress, SyncResult

#: Seconds between plain progress lines (when stderr is not a terminal).
PLAIN_EVERY: Final = 5.0


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
