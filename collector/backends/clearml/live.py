"""A run whose ClearML task is open in this process: the task, its writers, and where it stands."""

from __future__ import annotations

from typing import Any

from collector.backends.clearml import compat
from collector.backends.clearml.state import RunState


class LiveRun:
    """A run whose task is open in this process (used by that run's applier thread only)."""

    def __init__(self, state: RunState, task: Any) -> None:
        self.state = state
        self.task = task
        #: The task's logger and its two writers, stopped: :meth:`drain` writes them.
        self.writers = compat.TaskWriters(task)
        self.logger: Any = self.writers.logger
        #: What the SDK dropped since this task object was made (see "Events the server refused"
        #: in :mod:`collector.backends.clearml.backend`).
        self.lost = self.writers.lost
        #: A status change was sent (to be undone if the work since the checkpoint is lost).
        self.status_changed = False
        #: Applied in this process (ahead of state.applied until the next checkpoint).
        self.applied = state.applied
        #: Model events above this seq may have been registered before a restart (online).
        self.uncertain_after = state.applied
        self.uncertain = True
        #: The status being closed with, once the close began (a timed-out close is retried).
        self.closing = ""
        #: Something besides reports (parameters, tags, models, status) changed the task since
        #: the last checkpoint, so task.json must be rewritten (see ``ClearMLBackend._save``).
        self.task_changed = True

    def drain(self) -> None:
        """Write every event reported so far (session files offline, the server online)."""
        self.writers.drain()
