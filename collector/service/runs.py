"""``clearml-relay runs``: every run a collector's data directory knows, read-only.

Safe beside a running collector: it reads the journal's metadata and newest records, and the
backend's own records of what it applied, without opening anything for writing. ``received`` is
the journaled position (events acknowledged to producers); ``applied`` is the backend's durable
position (events in the ClearML task or the JSONL records as of the last checkpoint);
``backlog`` is the difference: what is safe in the journal but not yet in ClearML, for example
while the ClearML server is down.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from collector.backends.base import JsonlBackend, read_applied
from collector.backends.clearml import state as clearml_state
from collector.storage import paths
from collector.storage.journal import read_meta, read_position


@dataclass(frozen=True)
class RunRow:
    run: str
    project: str
    name: str
    state: str
    received: int
    applied: int
    backlog: int
    task_id: str
    session: str


def list_runs(data_dir: Path) -> list[RunRow]:
    """One row per run journaled under ``data_dir``, in run id order."""
    journal = data_dir / paths.JOURNAL
    try:
        names = sorted(os.listdir(journal))
    except FileNotFoundError:
        return []
    rows = []
    for run in names:
        directory = journal / run
        if not paths.is_safe_run(run) or not directory.is_dir():
            continue
        meta = read_meta(directory)
        applied, task_id, session = _backend_view(data_dir, run)
        received = read_position(directory)
        rows.append(
            RunRow(
                run,
                meta.project,
                meta.name,
                meta.state,
                received,
                applied,
                max(0, received - applied),
                task_id,
                session,
            )
        )
    return rows


def _backend_view(data_dir: Path, run: str) -> tuple[int, str, str]:
    """(applied, task id, offline session) from whichever backend wrote about this run."""
    state = clearml_state.load(data_dir / paths.CLEARML, run)
    if state is not None:
        return state.applied, state.task_id, state.session
    return read_applied(JsonlBackend.path_in(data_dir / paths.RECORDS, run)), "", ""


def render(rows: list[RunRow], as_json: bool) -> str:
    """The rows as JSON (one list), or as a table for a terminal."""
    if as_json:
        return json.dumps([asdict(row) for row in rows], indent=2)
    from rich.console import Console  # noqa: PLC0415  (only the table needs rich)
    from rich.table import Table  # noqa: PLC0415

    table = Table(title=f"{len(rows)} runs", title_justify="left")
    numbers = ("received", "applied", "backlog")
    for column in ("run", "project", "name", "state", *numbers, "task id", "offline session"):
        table.add_column(column, justify="right" if column in numbers else "left")
    for row in rows:
        table.add_row(
            row.run,
            row.project,
            row.name,
            row.state,
            str(row.received),
            str(row.applied),
            str(row.backlog),
            row.task_id,
            row.session,
        )
    console = Console(width=200)
    with console.capture() as captured:
        console.print(table)
    return captured.get()
