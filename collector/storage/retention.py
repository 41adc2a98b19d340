"""Retention of offline sessions: which finished runs' ClearML sessions to delete, and deleting them.

Offline, every run leaves a ClearML session folder (``$CLEARML_CACHE_DIR/offline/<task id>``),
which is all there is of the run until someone imports it with ``clearml-relay upload``. So the
default keeps every session; a platform that uploads them (or does not need them) sets an age
(``keep_sessions_days``) and/or a count (``keep_sessions``). Only sessions of runs that are
``completed`` or ``failed`` are candidates: an ``aborted`` run's producer may come back and
continue the same session. Age is counted from the moment the run was closed (its state's
``closed``; for a state written by an earlier version, which kept ClearML's zip beside the
folder, the folder's ``task.json``, which the close rewrote last). What is deleted: the session
folder, a zip beside it (earlier versions kept one) and any model files still staged for it.
The backend's state file stays (``clearml-relay runs`` still lists the run, and its session path
shows where the session was).

This module reads :mod:`collector.backends.clearml.state` files only, never imports clearml.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import msgspec

from collector.backends.clearml import state as clearml_state

log = logging.getLogger(__name__)

_FINISHED: Final = frozenset({"completed", "failed"})
_DAY: Final = 86400.0


@dataclass(frozen=True)
class Policy:
    """How many finished offline sessions to keep; None for either bound: no limit."""

    max_age_days: float | None = None
    max_count: int | None = None

    @property
    def keeps_everything(self) -> bool:
        return self.max_age_days is None and self.max_count is None


@dataclass(frozen=True)
class Session:
    run: str
    folder: Path
    finished: float  # when the run was closed (seconds since the epoch)


def finished_sessions(clearml_dir: Path) -> list[Session]:
    """Offline sessions of completed and failed runs that still exist, newest first."""
    found = []
    try:
        names = sorted(os.listdir(clearml_dir))
    except FileNotFoundError:
        return []
    for name in names:
        if not name.endswith(".json"):
            continue
        try:
            state = clearml_state.load(clearml_dir, name.removesuffix(".json"))
        except (OSError, ValueError, msgspec.MsgspecError):
            log.warning("retention: unreadable run state %s, skipped", clearml_dir / name)
            continue
        if state is None or state.state not in _FINISHED or not state.offline or not state.session:
            continue
        folder = Path(state.session)
        if not folder.is_dir():
            continue  # deleted already (or moved away by someone)
        finished = state.closed or _mtime(folder / "task.json")
        found.append(Session(state.run, folder, finished))
    found.sort(key=lambda s: s.finished, reverse=True)
    return found


def _mtime(path: Path) -> float:
    """A file's modification time; 0 (the oldest) for one that is gone (a half-deleted folder)."""
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def expired(sessions: list[Session], policy: Policy, now: float) -> list[Session]:
    """The sessions (newest first, as :func:`finished_sessions` lists them) the policy drops."""
    drop = []
    for index, session in enumerate(sessions):
        too_many = policy.max_count is not None and index >= policy.max_count
        too_old = policy.max_age_days is not None and now - session.finished > policy.max_age_days * _DAY
        if too_many or too_old:
            drop.append(session)
    return drop


def sweep(clearml_dir: Path, policy: Policy, now: float) -> list[Session]:
    """Delete what the policy drops; returns the sessions deleted (a failure is logged, skipped)."""
    if policy.keeps_everything:
        return []
    deleted = []
    for session in expired(finished_sessions(clearml_dir), policy, now):
        try:
            clearml_state.session_zip(session.folder).unlink(missing_ok=True)
            shutil.rmtree(clearml_dir / f"{session.run}.models", ignore_errors=True)
            # The folder last: while it exists, a sweep that failed half way finds the session again.
            shutil.rmtree(session.folder)
        except OSError as exc:
            log.warning("retention: cannot delete the session of run %s: %s", session.run, exc)
            continue
        log.info(
            "retention: deleted the offline session of run %s (%s), finished %.1f days ago",
            session.run,
            session.folder,
            (now - session.finished) / _DAY,
            extra={"run": session.run},
        )
        deleted.append(session)
    return deleted
