"""The ClearML backend's durable per-run state: one small JSON file per run, never clearml.

``directory/<run>.json`` holds what the backend needs to continue a run's ClearML task exactly
where its last checkpoint left it: the task id, the durable applied position, the offline
session folder (the run's one copy: the zip ClearML writes at close is deleted), the run's
state and when it was closed, and for offline sessions the byte sizes of the session's
append-only files plus a copy of ``task.json`` at that checkpoint. The file is
replaced atomically (write a temporary file, fsync, rename, fsync the directory), so a
``kill -9`` leaves either the previous checkpoint or the new one.

This module does not import clearml: ``clearml-relay runs`` and retention read it through :func:`load`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

import msgspec

from collector.storage import paths

_SUFFIX: Final = ".json"


class RunState(msgspec.Struct, kw_only=True):
    """One run's ClearML task at its last checkpoint."""

    run: str
    task_id: str = ""
    #: Every event of the run up to this seq is durable in the task.
    applied: int = 0
    offline: bool = True
    #: The offline session folder (``.../offline/<task id>``); empty online.
    session: str = ""
    #: When the task was last closed (seconds since the epoch); 0 while open. (State files of
    #: earlier versions also hold ``zip``, the session's zip: ignored.)
    closed: float = 0.0
    #: ``open``, ``completed``, ``failed`` or ``aborted``.
    state: str = "open"
    project: str = ""
    name: str = ""
    #: Producer time of the RunOpen (the x axis of machine stats without an iteration).
    opened_ts: float = 0.0
    #: Offline: byte size of each append-only ``*.jsonl`` of the session at the checkpoint.
    sizes: dict[str, int] = {}
    #: Offline: ``task.json`` as it was at the checkpoint (restored before re-attaching).
    task_json: str = ""
    #: (title, series) of every series whose skipped NaN or infinity the task's console noted:
    #: noted once per series, and as the console is at the checkpoint (cut back with it).
    nonfinite_noted: list[tuple[str, str]] = []


def state_path(directory: Path, run: str) -> Path:
    """Where the state of ``run`` lives (raises UnsafeNameError for a bad run id)."""
    return paths.run_dir(directory, run).with_name(run + _SUFFIX)


def load(directory: Path, run: str) -> RunState | None:
    """The run's last checkpoint, or None if the backend never saw the run."""
    try:
        data = state_path(directory, run).read_bytes()
    except FileNotFoundError:
        return None
    return msgspec.json.decode(data, type=RunState)


def save(directory: Path, state: RunState, *, fsync: bool = True) -> None:
    """Replace the run's state atomically."""
    path = state_path(directory, state.run)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(msgspec.json.encode(state))
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if fsync:
        paths.fsync_path(directory)


def session_zip(session: str | Path) -> Path:
    """Where ClearML writes the zip of an offline session folder at close (beside it)."""
    return Path(f"{session}.zip")
