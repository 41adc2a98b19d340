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
from typing import Final

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


#: The table's columns; those named here may narrow to fit a terminal (folding their text onto
#: more lines), in this order, first to the width given, then all of them evenly, to at least
#: :data:`_NARROWEST` (or their header's longest word). The state and the counts are never
#: narrowed: a cut number would lie.
_COLUMNS: Final = (
    "run",
    "project",
    "name",
    "state",
    "received",
    "applied",
    "backlog",
    "task id",
    "offline session",
)
_SHRINK: Final = {"offline session": 16, "task id": 12, "name": 12, "project": 12, "run": 12}
_NARROWEST: Final = 4
#: Between two columns (no outer edge): the table's layout below.
_GAP: Final = 2


def render(rows: list[RunRow], as_json: bool, *, wide: bool = False, width: int | None = None) -> str:
    """The rows as JSON (one list), or as a table for a terminal.

    The table fits ``width`` columns (default: the terminal's; 80 when none is found): the
    offline session path folds onto further lines first, then the task id, the name, the project
    and the run id. ``wide`` prints every column in full, one line per run, however wide that is.
    """
    if as_json:
        return json.dumps([asdict(row) for row in rows], indent=2)
    from rich import box  # noqa: PLC0415  (only the table needs rich)
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    cells = [
        (
            r.run,
            r.project,
            r.name,
            r.state,
            str(r.received),
            str(r.applied),
            str(r.backlog),
            r.task_id,
            r.session,
        )
        for r in rows
    ]
    widths = {h: max([len(h), *(len(row[i]) for row in cells)]) for i, h in enumerate(_COLUMNS)}
    console = Console(width=width)
    if not wide:
        _shrink(widths, console.width - _GAP * (len(widths) - 1))
    needed = sum(widths.values()) + _GAP * (len(widths) - 1)
    if needed > console.width:  # wide, or a terminal too narrow even so: never cut a cell
        console = Console(width=needed)
    table = Table(
        title=f"{len(rows)} run" if len(rows) == 1 else f"{len(rows)} runs",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
    )
    for header in _COLUMNS:
        table.add_column(
            header,
            justify="right" if header in ("received", "applied", "backlog") else "left",
            width=widths[header],
            overflow="fold",
            no_wrap=header not in _SHRINK,
        )
    for row in cells:
        table.add_row(*row)
    with console.capture() as captured:
        console.print(table)
    return "\n".join(line.rstrip() for line in captured.get().splitlines())


def _shrink(widths: dict[str, int], room: int) -> None:
    """Narrow the columns of :data:`_SHRINK` until their contents take ``room`` at most."""
    for header, least in _SHRINK.items():
        excess = sum(widths.values()) - room
        if excess <= 0:
            return
        widths[header] = max(min(widths[header], least), widths[header] - excess)
    # Then evenly, widest first; a header still shows whole words.
    floor = {header: max(_NARROWEST, *map(len, header.split())) for header in _SHRINK}
    while sum(widths.values()) > room:
        widest = max(_SHRINK, key=lambda header: widths[header] - floor[header])
        if widths[widest] <= floor[widest]:
            return
        widths[widest] -= 1
