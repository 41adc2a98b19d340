"""The ClearML backend: owns every ClearML task of the collector, one per run, in one process.

It turns each run's events into what Ultralytics' built-in ClearML callback would have produced
(:mod:`~collector.backends.clearml.mapping` says how), offline (one session folder per run, the
only copy kept: the zip ClearML writes at close is deleted) or online, and it makes "applied"
durable with :meth:`ClearMLBackend.checkpoint` so that every event lands exactly once across a
``kill -9``. Every use of clearml SDK internals goes through :mod:`~collector.backends.clearml.compat`
(see docs/clearml-compat.md), which the backend installs when it is made.

One process, many tasks
=======================
All runs share this process; each run's task is made with the private ``Task._create`` (works
offline and online, unlike ``Task.create``; ``Task.init`` allows one task per process). Measured
on the project machine (2 cores, clearml 2.1.12, offline): ``import clearml`` costs 61 MiB once,
then 50 tasks (create + console logger + a scalar + flush) added 7.8 MiB in all (0.16 MiB per
task) and took 2.9 ms each (median; 250 ms for the very first). A process per run pays the
import again: ``Task.init`` in a fresh process took 0.85 s and 80 MiB peak RSS, and 12 s until
the process had exited (its reporting subprocess). So: one process, and isolation by threads.
The SDK is not made for tasks created in parallel threads: its shared upload pools are created
lazily without a lock, and creating tasks at once crashed the process until the backend started
those pools itself, before any applier thread (``compat.start_shared_pools``).

Every call for a run happens in that run's applier thread, and those that can block on the
network wait at most ``call_timeout`` seconds (:mod:`~collector.backends.clearml.calls`). Each
task's two background writers are stopped and written synchronously at each checkpoint
(``compat.TaskWriters``): that is what makes a checkpoint mean "on disk". ClearML still shares
one process-wide pool (4 threads) for file uploads: a hung upload of one run occupies one of
those threads. Offline or online is process-global (``Task.set_offline``), so one collector is
either.

Exactly once across ``kill -9``
===============================
The appliers resume a run at ``applied(run) + 1``, the position of the last checkpoint, so
events after it are applied again. Offline, a checkpoint records, with the position, the byte
size of every ``*.jsonl`` of the session (``metrics.jsonl``, ``log.jsonl``: ClearML only
appends to them) and the text of ``task.json``. Re-attaching a run after a restart first cuts
those files back to the recorded sizes (removing a torn last line too) and restores
``task.json``, then continues the SAME task with ``Task.get_task(task_id=...)``, which offline
reads ``task.json`` from ``$CLEARML_CACHE_DIR/offline/<task id>``. So re-applied events are
written once, and output models registered after the checkpoint (``offline_output_models`` in
``task.json``) are forgotten before they are registered again. Image and plot files get names
derived from the event's seq (see :mod:`~collector.backends.clearml.mapping`): a re-applied
image rewrites its own file.

Online, clearml-server indexes every non-log event under ``md5(task-iter-metric-variant-key)``
with an Elasticsearch ``index`` action, "overwrite if exists with same ID"
(allegroai/clearml-server ``apiserver/bll/event/event_bll.py``, ``EventBLL.add_events`` and
``_get_event_id``; ``event_id_fields = ("task", "iter", "metric", "variant", "key")``), so
re-sent scalars, single values, plots and images (same seq-derived key) replace themselves;
console lines get a random id there and may appear twice. A model re-applied online is found by
its comment (``clearml-relay <run>#<seq>``) among the task's output models and not registered
again. A checkpoint follows every model and every status change, so the window is small.

Events the server refused
=========================
The SDK does not retry a batch of events the server answers with 500 or a 4xx, and raises
nothing: it logs the error and drops the batch (502/503 are retried by its HTTP layer; a down
server blocks the call, which our call timeout turns into a retry). A drain would return
normally and the checkpoint would make the position of lost events durable. So each task's two
writers are watched (``compat``, "pinned: sends the SDK drops"): every refused batch, failed send
or failed file upload is recorded on the run, and a checkpoint (or close) that finds one raises
:class:`~collector.backends.base.Rewind` instead of persisting the position. Before raising, the
backend forgets the run's task object (with its queues), so the next event re-attaches the task
at its last checkpoint (offline: cut back) and the appliers apply everything since then again:
re-sent scalars, plots and images replace themselves on the server (see above); console lines
that did land are sent again, so they may appear twice. If the lost work included a status
change (a RunClose or an abort), the re-attached task is marked started again first.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from clearml import Task

from collector.backends.base import PartlyApplied, Rewind, apply_each
from collector.backends.clearml import compat
from collector.backends.clearml import state as clearml_state
from collector.backends.clearml.calls import TimedCalls
from collector.backends.clearml.live import LiveRun
from collector.backends.clearml.mapping import SCALAR_EVENTS, EventMapper
from collector.backends.clearml.state import RunState
from collector.config import NonfinitePolicy
from collector.counters import Counters
from collector.pipeline.files import FileStore
from collector.storage.journal import through
from producer.wire import protocol

__all__ = ["FALLBACK_PROJECT", "ClearMLBackend"]

log = logging.getLogger(__name__)

#: A run whose first event is not a RunOpen still gets a task, here.
FALLBACK_PROJECT: Final = "clearml-relay"

_CHECKPOINTED: Final = (protocol.RunOpen, protocol.Model)
#: Events that only report (appended to the session's *.jsonl); the others change task.json.
_REPORTS: Final = (
    protocol.Scalar,
    protocol.SingleValue,
    protocol.DebugImage,
    protocol.Plot,
    protocol.ConsoleText,
    protocol.MachineStats,
    protocol.Gap,
)


def _task_type(name: str) -> Any:
    try:
        return Task.TaskTypes(name)
    except ValueError:
        log.warning("unknown ClearML task type %r, using training", name)
        return Task.TaskTypes.training


def _jsonl_sizes(session: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in session.glob("*.jsonl")}


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------- backend


class ClearMLBackend:
    """Applies run events to ClearML tasks; each run's state lives in ``directory/<run>.json``.

    Args:
        directory: Where per-run state and staged model files go (created if missing).
        offline: ClearML offline mode (process-global): sessions under
            ``$CLEARML_CACHE_DIR/offline``; otherwise the configured server.
        call_timeout: Seconds to wait for a ClearML call that may block on the network
            before raising :class:`TimeoutError` to the applier.
        fsync: Whether state files are fsynced (durable against power loss).
        nonfinite: ``skip``: a NaN or infinite scalar, single value or machine stat is not
            reported (ClearML would report 0), but counted in ``counters`` as
            ``nonfinite_skipped`` and noted in the task's console once per series;
            ``clearml``: handed to ClearML as it is.
        counters: Where the backend counts what it skips (None: a private set).

    """

    #: A run's files are copied into its session (offline) or uploaded (online) by the time
    #: its events are durable: the collector may delete its own copies (see ``collector.service.server``).
    copies_files: Final = True

    def __init__(
        self,
        directory: Path,
        *,
        offline: bool,
        call_timeout: float = 60.0,
        fsync: bool = True,
        nonfinite: NonfinitePolicy = "skip",
        counters: Counters | None = None,
        allow_pickled_figures: bool = False,
    ) -> None:
        self.directory = directory
        self.offline = offline
        self.call_timeout = call_timeout
        self.fsync = fsync
        self.nonfinite = nonfinite
        self.counters = counters if counters is not None else Counters()
        compat.install()  # raises UnsupportedClearMLError for a clearml it was not written for
        Task.set_offline(offline)
        compat.start_shared_pools()  # before any applier thread makes a task
        directory.mkdir(parents=True, exist_ok=True)
        self._call = TimedCalls(call_timeout)
        self._mapper = EventMapper(
            directory,
            offline=offline,
            nonfinite=nonfinite,
            counters=self.counters,
            calls=self._call,
            allow_pickled_figures=allow_pickled_figures,
        )
        # Guards the dict only; never held across a ClearML call.
        self._lock = threading.Lock()
        self._live: dict[str, LiveRun] = {}
        #: Runs rewound after a status change: their task is marked started when re-attached.
        self._restart: set[str] = set()

    # ------------------------------------------------------------------------------ interface

    def applied(self, run: str) -> int:
        """The durable position of ``run`` (its last checkpoint); 0 if never seen."""
        state = clearml_state.load(self.directory, run)
        return state.applied if state is not None else 0

    def apply(self, run: str, event: protocol.Event, files: FileStore) -> None:
        """Apply one event to the run's task (opening or re-attaching the task first).

        RunOpen (the task id must survive) and Model (it must not be registered twice) are
        checkpointed at once. A RunClose becomes durable only once the task is closed (offline:
        ClearML's zip written and deleted): a crash before that re-applies it after the session
        was cut back, so no run is left recorded as applied but never closed. If a checkpoint or
        the close times out, the applier retries the event: it is not applied again, only
        checkpointed (or closed).
        """
        live = self._get_live(run)
        if live is not None and through(event) <= live.applied:
            if live.closing:
                self._finish(live, live.closing)
            elif isinstance(event, protocol.RunClose):
                self._finish(live, event.status)
            elif isinstance(event, _CHECKPOINTED):
                self._checkpoint(live)
            return
        if live is None:
            live = self._open(run, event)  # a RunOpen that creates the task is applied by it
            if not (isinstance(event, protocol.RunOpen) and live.applied == 0):
                self._mapper.apply(live, event, files)
        else:
            self._mapper.apply(live, event, files)
        if not isinstance(event, _REPORTS):
            live.task_changed = True
        live.applied = through(event)
        if isinstance(event, protocol.RunClose):
            self._finish(live, event.status)
        elif isinstance(event, _CHECKPOINTED):
            self._checkpoint(live)

    def apply_batch(self, run: str, events: Sequence[protocol.Event], files: FileStore) -> None:
        """Apply consecutive events of one kind: scalars in one go, other kinds one by one.

        A batch of scalars, single values or machine stats is one queued write of the task's
        (see :mod:`~collector.backends.clearml.scalars`); a run without an open task opens it with
        the first event of the batch, as :meth:`apply` does.
        """
        live = self._get_live(run)
        if not isinstance(events[0], SCALAR_EVENTS) or (live is not None and live.closing):
            apply_each(self.apply, run, events, files)
            return
        done = 0
        if live is None:
            self.apply(run, events[0], files)  # opens or re-attaches the task; raises: none applied
            done, live = 1, self._get_live(run)
            assert live is not None
        applied = live.applied
        rest = [event for event in events[done:] if through(event) > applied]
        if not rest:
            return
        try:
            self._mapper.apply_scalars(live, rest)  # type: ignore[arg-type]  # one kind, checked above
        except Exception as exc:
            if done:
                raise PartlyApplied(done) from exc
            raise
        live.applied = through(rest[-1])

    def checkpoint(self, run: str) -> None:
        """Make everything applied so far durable, then persist the position."""
        live = self._get_live(run)
        if live is not None:
            self._checkpoint(live)

    def abort(self, run: str, reason: str) -> None:
        """The run's producer vanished: mark its task stopped and close it (a late event reopens it)."""
        live = self._get_live(run)
        if live is None:
            state = clearml_state.load(self.directory, run)
            if state is None or state.state != "open":
                return
            live = self._reattach(state)
        live.logger.report_text(
            f"clearml-relay: run aborted: {reason}", level=logging.WARNING, print_console=False
        )
        live.state.state = "aborted"
        self._mapper.set_status(live, "aborted", reason)
        self._checkpoint(live)
        self._finish(live, "aborted")

    def close(self) -> None:
        """Checkpoint every open run (best effort); tasks stay open for the next start."""
        with self._lock:
            runs = list(self._live)
        for run in runs:
            try:
                self.checkpoint(run)
            except Exception:  # one stuck run must not keep the others from their checkpoint
                log.exception("run %s: final checkpoint failed", run)
        with self._lock:
            self._live.clear()

    # ------------------------------------------------------------------- opening and closing

    def _get_live(self, run: str) -> LiveRun | None:
        with self._lock:
            return self._live.get(run)

    def _open(self, run: str, event: protocol.Event) -> LiveRun:
        state = clearml_state.load(self.directory, run)
        if state is not None and self.offline and state.state != "open" and not Path(state.session).is_dir():
            # A late event for a finished run whose session retention deleted: that task is
            # gone, so the event (and any after it) goes to a new task of the same name.
            log.warning(
                "run %s: session %s was deleted (retention); seq %d on goes to a new task",
                run,
                state.session,
                event.seq,
                extra={"run": run},
            )
            opener = protocol.RunOpen(run=run, seq=event.seq, project=state.project, name=state.name)
            live = self._create(opener)
            live.applied = state.applied  # the new task's position continues the run's
            return live
        if state is not None:
            return self._reattach(state)
        if isinstance(event, protocol.RunOpen):
            return self._create(event)
        log.warning(
            "run %s: first event is %s, not a RunOpen; creating a task for it", run, type(event).__name__
        )
        opener = protocol.RunOpen(run=run, seq=event.seq, project=FALLBACK_PROJECT, name=run)
        return self._create(opener)

    def _create(self, event: protocol.RunOpen) -> LiveRun:
        run = event.run
        task: Any = None
        earlier = clearml_state.load(self.directory, event.resume_run) if event.resume_run else None
        if event.task_id and self.offline:
            log.warning("run %s: task_id %s given, but offline: creating a new task", run, event.task_id)
        elif event.task_id:
            task = self._call(run, "get-task", lambda: Task.get_task(task_id=event.task_id))
        elif event.resume_run and (earlier is None or not earlier.task_id):
            log.warning("run %s: resume_run %s is unknown here: creating a new task", run, event.resume_run)
        if task is None and earlier is not None and earlier.task_id:
            if self.offline:
                self._restore_session(earlier)
            task = self._call(run, "get-task", lambda: Task.get_task(task_id=earlier.task_id))
        if task is None:
            task = self._call(
                run,
                "create-task",
                lambda: compat.create_task(event.project, event.name, _task_type(event.task_type)),
            )
        else:
            self._call(run, "mark-started", lambda: task.mark_started(force=True))
        session = task.get_offline_mode_folder() if self.offline else None
        state = RunState(
            run=run,
            task_id=task.id,
            offline=self.offline,
            session=str(session) if session else "",
            project=event.project,
            name=event.name,
            opened_ts=event.ts,
        )
        if self.offline:
            compat.keep_project_name(task, event.project)
            compat.make_report_dir(task)
        elif not task.output_uri:
            # Without a destination the SDK registers models as file:// paths on this machine
            # and uploads nothing (found against the server double); True means the files server,
            # as Ultralytics' own callback asks with Task.init(output_uri=True).
            self._call(run, "output-uri", lambda: setattr(task, "output_uri", True))
        live = LiveRun(state, task)
        live.uncertain = False
        self._mapper.apply_open(live, event)
        with self._lock:
            self._live[run] = live
        return live

    def _reattach(self, state: RunState) -> LiveRun:
        """Continue the run's task exactly at its last checkpoint (after a restart or a close)."""
        if state.offline != self.offline:
            raise RuntimeError(
                f"run {state.run} was logged {'offline' if state.offline else 'online'}; "
                f"this collector is {'offline' if self.offline else 'online'}"
            )
        if self.offline:
            self._restore_session(state)
        task: Any = self._call(state.run, "get-task", lambda: Task.get_task(task_id=state.task_id))
        if self.offline:
            # Task.__init__ forgets the project name and the output models it just read back.
            compat.keep_project_name(task, state.project)
            compat.restore_output_models(task, state.task_json)
        elif state.state != "open" or state.run in self._restart:
            self._call(state.run, "mark-started", lambda: task.mark_started(force=True))
        with self._lock:
            self._restart.discard(state.run)
        if state.state != "open":
            state.state, state.closed = "open", 0.0
        live = LiveRun(state, task)
        with self._lock:
            self._live[state.run] = live
        log.info("run %s: continuing task %s from seq %d", state.run, state.task_id, state.applied)
        return live

    def _restore_session(self, state: RunState) -> None:
        """Cut the offline session back to the run's last checkpoint."""
        session = Path(state.session)
        expected = compat.offline_dir(state.task_id)
        if session != expected:
            raise RuntimeError(
                f"run {state.run}: session {session} is not where ClearML looks for task {state.task_id} "
                f"({expected}): was CLEARML_CACHE_DIR changed?"
            )
        for path in session.glob("*.jsonl"):
            size = state.sizes.get(path.name, 0)
            if path.stat().st_size != size:
                log.info("run %s: cutting %s back to %d bytes", state.run, path, size)
                os.truncate(path, size)
        if state.task_json:
            _write_atomic(compat.task_json_path(session), state.task_json)
        # A zip here was written by a close that never became durable (the process died before
        # _finish deleted it): it holds work after the checkpoint. The close applied again
        # writes a new one, and deletes it.
        clearml_state.session_zip(state.session).unlink(missing_ok=True)

    def _finish(self, live: LiveRun, status: str) -> None:
        """Drain and close the task (offline: delete the zip ClearML writes), then make it durable."""
        run = live.state.run
        if not live.closing:  # a retry after a timed-out close must not touch the closed task
            self._drain(live)
            live.closing = status
        self._call(run, "close", live.task.close)
        if self.offline:
            # ClearML zips the session at close: a second copy of all of it, models included.
            # The folder is the copy kept (upload, retention and a late event's re-attach use
            # it). The zip goes before the state says closed: after a crash in between, the run
            # is open at its last checkpoint and the close is applied again (see _restore_session).
            clearml_state.session_zip(live.state.session).unlink(missing_ok=True)
        live.state.state = status
        live.state.closed = time.time()
        self._save(live, edit=False)  # the closed task wrote task.json itself
        with self._lock:
            self._live.pop(run, None)

    # --------------------------------------------------------------------------- checkpoints

    def _checkpoint(self, live: LiveRun) -> None:
        self._drain(live)
        self._save(live)
        live.uncertain = False

    def _drain(self, live: LiveRun) -> None:
        """Write everything reported; Rewind if the SDK dropped any of it (nothing is saved)."""
        run = live.state.run
        self._call(run, "drain", live.drain)
        if not live.lost:
            return
        # Start clean: the next event re-attaches the task at its last checkpoint.
        with self._lock:
            if self._live.get(run) is live:
                del self._live[run]
            if live.status_changed:
                self._restart.add(run)
        if clearml_state.load(self.directory, run) is None:
            # A task made since: keep its id (at position 0), so the re-applied RunOpen continues it.
            clearml_state.save(self.directory, live.state, fsync=self.fsync)
        raise Rewind(f"run {run}: {'; '.join(live.lost)}")

    def _save(self, live: LiveRun, *, edit: bool = True) -> None:
        state = live.state
        state.applied = live.applied
        if self.offline:
            session = Path(state.session)
            state.sizes = _jsonl_sizes(session)
            if edit and live.task_changed:
                # Rewrite task.json now: offline_output_models lags otherwise. 4 ms of CPU (a
                # JSON dump of the whole task): three quarters of a checkpoint, so not after
                # reports alone, which only append to the session's *.jsonl.
                compat.write_task_json(live.task)
            live.task_changed = False
            state.task_json = compat.task_json_path(session).read_text()
        clearml_state.save(self.directory, state, fsync=self.fsync)
