"""The ClearML backend: owns every ClearML task of the collector, one per run, in one process.

This is the only module of the project that imports clearml. It turns each run's events into
what Ultralytics' built-in ClearML callback would have produced (see NOTES.md), offline (one
session folder per run, the only copy kept: the zip ClearML writes at close is deleted) or
online, and it makes "applied" durable with :meth:`ClearMLBackend.checkpoint` so that every
event lands exactly once across a ``kill -9``.

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
those pools itself, before any applier thread (see ``_start_shared_pools``).

Per-run isolation and our own timeouts
======================================
Every call for a run happens in that run's applier thread; no lock is held across a ClearML
call. Calls that can block on the network (open/create the task, drain events to disk or the
server, model registration, status changes, close) run in a helper thread that the applier
waits on for at most ``call_timeout`` seconds; then :class:`TimeoutError` goes back to the
applier, which retries later. A timed-out call cannot be killed: its thread is abandoned and
may finish (or never finish) later. A retry of the same step therefore re-joins that call
instead of starting a second one, so at most one abandoned thread exists per run, and a step
whose first attempt completes late is not repeated.

Each task's two background writer threads (metrics reporter, console log) are stopped right
after the task is made, and the backend writes both synchronously at each checkpoint
(``send_all_events`` / ``send_all_records``, in the timed helper thread). That is what makes a
checkpoint mean "on disk": ``task.flush()`` only signals the console log thread, and the
reporter's wait can return before an event queued during its last write is written. It also
halves the threads per task. ClearML still shares one process-wide pool (4 threads) for file
uploads: a hung upload of one run occupies one of those threads.

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
derived from the event's seq instead of ClearML's process-wide counter (which restarts at 0
with the process and is shared by all tasks, so it would overwrite earlier images): a
re-applied image rewrites its own file.

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
writers are watched (see "pinned: sends the SDK drops" below): every refused batch, failed send
or failed file upload is recorded on the run, and a checkpoint (or close) that finds one raises
:class:`~collector.backends.base.Rewind` instead of persisting the position. Before raising, the
backend forgets the run's task object (with its queues), so the next event re-attaches the task
at its last checkpoint (offline: cut back) and the appliers apply everything since then again:
re-sent scalars, plots and images replace themselves on the server (see above); console lines
that did land are sent again, so they may appear twice. If the lost work included a status
change (a RunClose or an abort), the re-attached task is marked started again first.

Plots
=====
The built-in callback re-renders each plot PNG through a matplotlib figure, which ClearML saves
at 300 dpi and reports as an image plot. Measured here on a 2250x1500 curve PNG: 480 ms median
(370-800 ms) through matplotlib (Agg), 2 ms for the same ``type=plot`` event (an image plot,
variant ``plot image``, built by ClearML's ``create_image_plot`` as its matplotlib binding does
for non-interactive figures) over the producer's PNG as it is. No re-rendering, so no matplotlib
(which is not thread-safe) and the image is the producer's, byte for byte.

Configuration of the process (set once when this module is imported): reporting in thread
mode; API retries capped (``api.http.retries`` = 2 each, so a dead server fails a call in
seconds instead of never); tasks made with ``Task._create`` get no stdout capture, no resource
monitor and no framework bindings (only ``Task.init`` installs them); offline or online is
process-global (``Task.set_offline``), so one collector is either.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shlex
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, TypeVar

from clearml import OutputModel, Task
from clearml.backend_api.services import tasks as api_tasks
from clearml.backend_interface.metrics.events import ImageEvent, UploadEvent
from clearml.backend_interface.metrics.interface import Metrics
from clearml.config import ConfigWrapper, get_offline_dir
from clearml.storage.helper import _StorageHelper
from clearml.utilities.plotly_reporter import create_image_plot
from PIL import Image

from collector.backends.base import Rewind
from collector.backends.clearml import state as clearml_state
from collector.backends.clearml.state import RunState
from collector.config import ENV_NONFINITE, ConfigError, NonfinitePolicy
from collector.counters import Counters
from collector.pipeline.files import FileStore
from collector.storage.journal import through
from producer.wire import protocol

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The titles ClearML's own resource monitor reports under.
MONITOR_MACHINE: Final = ":monitor:machine"
MONITOR_GPU: Final = ":monitor:gpu"
#: The title ClearML reports single values under.
SUMMARY: Final = "Summary"
#: A run whose first event is not a RunOpen still gets a task, here.
FALLBACK_PROJECT: Final = "clearml-relay"

_LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
_STATUS_MESSAGE_CHARS: Final = 1000
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
_UNSAFE_NAME: Final = re.compile(r"[^A-Za-z0-9._ -]")


def _configure_clearml() -> None:
    """Process-wide ClearML settings for a long-lived service holding many tasks."""
    # Thread-mode reporting (the Linux default forks a reporting subprocess per main task).
    Task._report_subprocess_enabled = False  # type: ignore[assignment]  # a lazy config value
    # Fail a call to an unreachable server within seconds; the applier retries the event.
    # Merged over clearml.conf / CLEARML_CONFIG_FILE, which still provide everything else.
    retries = dict.fromkeys(("total", "connect", "read", "redirect", "status"), 2)
    ConfigWrapper.set_overrides({"api": {"http": {"retries": retries}}})


_configure_clearml()


# ---------------------------------------------------------------------------- pinned work-around
#: The SDK's process-wide thread pools: ``Metrics`` (events and file uploads, started by every
#: task's reporter and console log) and ``StorageHelper`` (asynchronous uploads). Each is made
#: on first use with a check-then-set and no lock, so tasks made at the same time in several
#: threads each make one and all but the last are dropped with their threads running. That
#: crashes the interpreter: with 10 tasks made at once, the collector died with a segmentation
#: fault (or ``AttributeError: mro``, or an abort) in about one burst in four, anywhere in the
#: SDK (found by the collector benchmark; tests/test_clearml_backend.py reproduces it). Made
#: once, before any applier thread runs, the pools are never made again (only closing the
#: process's main task drops them, and the collector has none).
def _start_shared_pools() -> None:
    Metrics._initialize_upload_pools()
    _StorageHelper._initialize_upload_pool()


# ---------------------------------------------------------------------------- pinned work-around
#: ``OutputModel.published`` as clearml ships it. Offline, the model's base object is a
#: ``DummyModel`` without ``locked`` and the property raises AttributeError, so every
#: ``update_weights`` offline crashes (clearml issue 1243, since 1.14). An offline model has no
#: registry and is never published, which is what the replacement says.
#: tests/test_clearml_backend.py pins the crash: when clearml fixes it, that test fails.
ORIGINAL_PUBLISHED: Final[Any] = OutputModel.__dict__["published"]


def _published(model: Any) -> bool:
    task = getattr(model, "_task", None)
    if task is not None and task.is_offline():
        return False
    return bool(ORIGINAL_PUBLISHED.fget(model))


OutputModel.published = property(_published)  # type: ignore[method-assign,assignment]

# ----------------------------------------------------------------- pinned: sends the SDK drops
# ``Metrics._do_write_events`` (clearml/backend_interface/metrics/interface.py) uploads the
# events' files, leaves out every event whose upload failed (``upload_exception``; one whose file
# cannot be prepared is removed from the list) and ends with ``self.send(req,
# raise_on_errors=False)``: a batch the server refuses (500, 4xx) comes back as a CallResult
# that is not ``ok()``, which ``BackgroundReportService._write`` (reporter.py) ignores. The
# console's ``BackgroundLogService._send_events`` (backend_interface/task/log.py) sends through
# its ``session`` attribute and only logs a refused batch. Both are watched per task instance
# (the SDK's classes stay as they are); tests/test_clearml_backend.py pins what this relies on.


def _watch_metrics(metrics: Any, lost: list[str]) -> None:
    """Record in ``lost`` every event of this task's metrics writer that did not land."""
    write = metrics._do_write_events  # bound to this instance; write_events calls it by name

    def checked(events: list[Any], storage_uri: str | None = None) -> Any:
        count = len(events)
        try:
            result = write(events, storage_uri)
        except BaseException as exc:
            lost.append(f"writing {count} events raised {exc!r}")
            raise
        dropped = count - len(events) + sum(ev.upload_exception is not None for ev in events)
        if dropped:
            lost.append(f"{dropped} of {count} events lost their file upload")
        if result is not None and not result.ok():
            lost.append(f"the server refused {count - dropped} events: {result.meta}")
        return result

    metrics._do_write_events = checked


class _WatchedSession:
    """The console writer's session: records every refused or failed send in ``lost``."""

    def __init__(self, session: Any, lost: list[str]) -> None:
        self._session = session
        self._lost = lost

    def send(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            result = self._session.send(request, *args, **kwargs)
        except BaseException as exc:  # the SDK queues the batch again: it is dropped with the task
            self._lost.append(f"sending console lines raised {exc!r}")
            raise
        if result is not None and not result.ok():
            self._lost.append(f"the server refused console lines: {result.meta}")
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


# ------------------------------------------------------------------------------------- helpers


class _Call:
    """A ClearML call running in its own thread, so that its caller can stop waiting."""

    def __init__(self, step: str, fn: Callable[[], Any]) -> None:
        self.step = step
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self._fn = fn
        threading.Thread(target=self._run, name=f"clearml-{step}", daemon=True).start()

    def _run(self) -> None:
        try:
            self.result = self._fn()
        except BaseException as exc:  # noqa: BLE001  (re-raised in the waiting caller's thread)
            self.error = exc
        finally:
            self.done.set()


class _Live:
    """A run whose task is open in this process (used by that run's applier thread only)."""

    def __init__(self, state: RunState, task: Any) -> None:
        self.state = state
        self.task = task
        self.logger: Any = task._get_logger(auto_connect_streams={"stdout": True})
        # Only a logger that "captures" a stream gets a console TaskHandler; for a task that
        # is not the process's main task nothing is actually patched (no stdout capture).
        self.reporter: Any = task._reporter
        self.console: Any = self.logger._task_handler
        # Stop both background writers: checkpoint() writes synchronously instead.
        self.reporter._report_service.stop()
        self.console._background_log.stop()
        #: What the SDK dropped since this task object was made (see "Events the server refused").
        self.lost: list[str] = []
        _watch_metrics(self.reporter._metrics, self.lost)
        log_service = self.console._background_log
        log_service.session = _WatchedSession(log_service.session, self.lost)
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
        #: the last checkpoint, so task.json must be rewritten (see ``_save``).
        self.task_changed = True

    def drain(self) -> None:
        """Write every event reported so far (session files offline, the server online)."""
        self.console._background_log.send_all_records()
        self.reporter._report_service.send_all_events(wait=True)


def _safe_name(name: str, default: str) -> str:
    """A file name from a display name: no directories, no leading dots, plain characters."""
    cleaned = _UNSAFE_NAME.sub("_", Path(name.replace("\\", "/")).name).lstrip(". ")
    return cleaned or default


def _suffix(name: str) -> str:
    suffix = Path(_safe_name(name, "file")).suffix.lower()
    return suffix if suffix and suffix != "." else ".png"


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
    ) -> None:
        self.directory = directory
        self.offline = offline
        self.call_timeout = call_timeout
        self.fsync = fsync
        self.nonfinite = nonfinite
        self.counters = counters if counters is not None else Counters()
        Task.set_offline(offline)
        _start_shared_pools()  # before any applier thread makes a task
        directory.mkdir(parents=True, exist_ok=True)
        # Guards the two dicts only; never held across a ClearML call.
        self._lock = threading.Lock()
        self._live: dict[str, _Live] = {}
        self._calls: dict[str, _Call] = {}
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
                self._dispatch(live, event, files)
        else:
            self._dispatch(live, event, files)
        if not isinstance(event, _REPORTS):
            live.task_changed = True
        live.applied = through(event)
        if isinstance(event, protocol.RunClose):
            self._finish(live, event.status)
        elif isinstance(event, _CHECKPOINTED):
            self._checkpoint(live)

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
        self._set_status(live, "aborted", reason)
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

    def _get_live(self, run: str) -> _Live | None:
        with self._lock:
            return self._live.get(run)

    def _open(self, run: str, event: protocol.Event) -> _Live:
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

    def _create(self, event: protocol.RunOpen) -> _Live:
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
                lambda: Task._create(
                    project_name=event.project, task_name=event.name, task_type=_task_type(event.task_type)
                ),
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
            task._project_name = (task.project, event.project)
            Path(task._get_default_report_storage_uri()).mkdir(parents=True, exist_ok=True)
        elif not task.output_uri:
            # Without a destination the SDK registers models as file:// paths on this machine
            # and uploads nothing (found against the server double); True means the files server,
            # as Ultralytics' own callback asks with Task.init(output_uri=True).
            self._call(run, "output-uri", lambda: setattr(task, "output_uri", True))
        live = _Live(state, task)
        live.uncertain = False
        self._apply_open(live, event)
        with self._lock:
            self._live[run] = live
        return live

    def _reattach(self, state: RunState) -> _Live:
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
            task._project_name = (task.project, state.project)
            stored: dict[str, Any] = json.loads(state.task_json) if state.task_json else {}
            task._offline_output_models = list(stored.get("offline_output_models", []))
        elif state.state != "open" or state.run in self._restart:
            self._call(state.run, "mark-started", lambda: task.mark_started(force=True))
        with self._lock:
            self._restart.discard(state.run)
        if state.state != "open":
            state.state, state.closed = "open", 0.0
        live = _Live(state, task)
        with self._lock:
            self._live[state.run] = live
        log.info("run %s: continuing task %s from seq %d", state.run, state.task_id, state.applied)
        return live

    def _restore_session(self, state: RunState) -> None:
        """Cut the offline session back to the run's last checkpoint."""
        session = Path(state.session)
        expected = Path(str(get_offline_dir(task_id=state.task_id)))  # clearml's is a pathlib2.Path
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
            _write_atomic(session / Task._offline_filename, state.task_json)
        # A zip here was written by a close that never became durable (the process died before
        # _finish deleted it): it holds work after the checkpoint. The close applied again
        # writes a new one, and deletes it.
        clearml_state.session_zip(state.session).unlink(missing_ok=True)

    def _finish(self, live: _Live, status: str) -> None:
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

    def _checkpoint(self, live: _Live) -> None:
        self._drain(live)
        self._save(live)
        live.uncertain = False

    def _drain(self, live: _Live) -> None:
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

    def _save(self, live: _Live, *, edit: bool = True) -> None:
        state = live.state
        state.applied = live.applied
        if self.offline:
            session = Path(state.session)
            state.sizes = _jsonl_sizes(session)
            if edit and live.task_changed:
                # Rewrite task.json now: offline_output_models lags otherwise. 4 ms of CPU (a
                # JSON dump of the whole task): three quarters of a checkpoint, so not after
                # reports alone, which only append to the session's *.jsonl.
                live.task._edit()
            live.task_changed = False
            state.task_json = (session / Task._offline_filename).read_text()
        clearml_state.save(self.directory, state, fsync=self.fsync)

    def _call(self, run: str, step: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` in a helper thread; TimeoutError after ``call_timeout`` (see module doc).

        A call of the same step left over from an earlier timeout is waited for instead of
        starting ``fn`` again; a left-over call of another step is waited for first.
        """
        with self._lock:
            call = self._calls.get(run)
        if call is not None and call.step != step:
            if not call.done.wait(self.call_timeout):
                raise TimeoutError(f"run {run}: ClearML call {call.step!r} is still running")
            call = None  # its outcome went to nobody: the step that timed out is retried on its own
        if call is None:
            call = _Call(step, fn)
            with self._lock:
                self._calls[run] = call
        if not call.done.wait(self.call_timeout):
            raise TimeoutError(f"run {run}: ClearML call {step!r} took over {self.call_timeout} s")
        with self._lock:
            if self._calls.get(run) is call:
                del self._calls[run]
        if call.error is not None:
            raise call.error
        result: T = call.result
        return result

    # ------------------------------------------------------------------------------ mapping

    def _dispatch(self, live: _Live, event: protocol.Event, files: FileStore) -> None:  # noqa: PLR0912  (a branch per event type)
        logger = live.logger
        if isinstance(event, protocol.RunOpen):
            self._apply_open(live, event)  # a RunOpen again (a restarted producer): refresh
        elif isinstance(event, protocol.Scalar):
            if self._reportable(live, event.title, event.series, event.value, event.iteration):
                logger.report_scalar(event.title, event.series, event.value, event.iteration)
        elif isinstance(event, protocol.SingleValue):
            if self._reportable(live, SUMMARY, event.name, event.value, None):
                logger.report_single_value(event.name, event.value)
        elif isinstance(event, protocol.Hyperparams):
            self._set_section(live, event.section, event.values)
        elif isinstance(event, protocol.DebugImage):
            self._report_upload(live, event, files.path(live.state.run, event.file.sha256), plot=False)
        elif isinstance(event, protocol.Plot):
            self._report_upload(live, event, files.path(live.state.run, event.file.sha256), plot=True)
        elif isinstance(event, protocol.Model):
            self._apply_model(live, event, files.path(live.state.run, event.file.sha256))
        elif isinstance(event, protocol.ConsoleText):
            logger.report_text(event.text, level=_LEVELS[event.level], print_console=False)
        elif isinstance(event, protocol.MachineStats):
            iteration = event.iteration
            if iteration is None:
                iteration = max(0, int(event.ts - live.state.opened_ts))
            for key, value in event.values.items():
                title = MONITOR_GPU if key.startswith("gpu") else MONITOR_MACHINE
                if self._reportable(live, title, key, value, iteration):
                    logger.report_scalar(title, key, value, iteration)
        elif isinstance(event, protocol.RunClose):
            self._set_status(live, event.status, event.error)  # first: a timed-out call is retried
            if event.error:
                logger.report_text(event.error, level=logging.ERROR, print_console=False)
        elif isinstance(event, protocol.Gap):
            lost = f"{event.seq}" if event.last == event.seq else f"{event.seq}..{event.last}"
            logger.report_text(
                f"clearml-relay: events {lost} of run {event.run} were lost: {event.reason}",
                level=logging.WARNING,
                print_console=False,
            )

    def _reportable(self, live: _Live, title: str, series: str, value: float, iteration: int | None) -> bool:
        """Whether ``value`` goes to ClearML; a NaN or infinity skipped is counted and noted.

        ClearML reports a non-finite value as ``default_nan_value`` / ``default_inf_value``
        (backend_interface/metrics/events.py; 0 unless ``Logger.set_reporting_nan_value`` and
        ``set_reporting_inf_value`` changed them, process-wide), so a diverged loss would show
        as a perfect 0: by default the point is left out, and the console says so once per series.
        """
        if math.isfinite(value) or self.nonfinite == "clearml":
            return True
        self.counters.incr("nonfinite_skipped")
        key = (title, series)
        if key not in live.state.nonfinite_noted:
            live.state.nonfinite_noted.append(key)
            where = "" if iteration is None else f" at iteration {iteration}"
            live.logger.report_text(
                f"clearml-relay: {title} / {series} is {value}{where}: not reported, nor any later "
                f"NaN or infinity of this series (ClearML would show 0; {ENV_NONFINITE}=clearml "
                "hands them to it)",
                level=logging.WARNING,
                print_console=False,
            )
        return False

    def _apply_open(self, live: _Live, event: protocol.RunOpen) -> None:
        task = live.task
        if event.tags:
            task.add_tags(list(event.tags))
        for section, values in event.hyperparams.items():
            self._set_section(live, section, values)
        if event.context is not None:
            self._set_context(live, event.context)

    def _set_section(self, live: _Live, section: str, values: dict[str, protocol.ParamValue]) -> None:
        # update_parameters writes run -> task only; task.connect() would let an agent's or the
        # server's values flow back into the dict.
        live.task.update_parameters({f"{section}/{key}": value for key, value in values.items()})

    def _set_context(self, live: _Live, context: protocol.ExecutionContext) -> None:
        git = context.git or protocol.GitInfo()
        version = ".".join(context.python.split(".")[:2])
        script = api_tasks.Script(
            binary=f"python{version}" if version else "python",
            repository=git.repository,
            branch=git.branch,
            version_num=git.commit,
            entry_point=context.script,
            working_dir=context.cwd,
            diff=git.diff,
            requirements={"pip": "\n".join(context.packages)} if context.packages else {},
        )
        live.task._update_script(script)
        # Where the run executes goes to the task's description, as Task.init's "created by"
        # line does (runtime properties need API 2.13 and are dropped offline).
        argv = shlex.join(context.argv)
        live.task.set_comment(
            f"clearml-relay run {live.state.run}: {context.user}@{context.host} pid {context.pid}\n"
            f"python {context.python}\nargv: {argv}"
        )

    def _report_upload(
        self, live: _Live, event: protocol.DebugImage | protocol.Plot, path: Path, *, plot: bool
    ) -> None:
        """Report a debug image, or a plot as an image plot, over the stored file as it is.

        The file name comes from the event's seq (see the module doc on exactly once);
        ``file_history_size=-1`` keeps every sample, as a name is never reused.
        """
        reporter = live.reporter
        upload_uri = live.logger.get_default_upload_destination()
        kind = UploadEvent if plot else ImageEvent
        upload = kind(
            metric=event.title,
            variant=event.series,
            iter=event.iteration,
            image_data=None,
            local_image_path=str(path),
            upload_uri=upload_uri,
            file_history_size=-1,
            override_filename=f"{event.title}_{event.series}_{event.seq:08d}",
            override_filename_ext=_suffix(event.file.name),
        )
        if not plot:
            reporter._report(upload)
            return
        # What Reporter.report_image_plot_and_upload does, with our file name.
        _, url = upload.get_target_full_upload_uri(upload_uri, reporter._metrics.storage_key_prefix)
        reporter._report(upload)
        with Image.open(path) as image:
            width, height = image.size
        figure = create_image_plot(
            image_src=url,
            title=f"{event.title}/{event.series}",
            width=640,
            height=int(640 * float(height or 480) / float(width or 640)),
        )
        reporter.report_plot(
            title=event.title, series=event.series, plot=figure, iter=event.iteration, nan_as_null=False
        )

    def _apply_model(self, live: _Live, event: protocol.Model, path: Path) -> None:
        run, task = live.state.run, live.task
        marker = f"clearml-relay {run}#{event.seq}"
        if not self.offline and live.uncertain and event.seq > live.uncertain_after:
            models = self._call(run, "list-models", lambda: list(task.models["output"]))
            if any(marker in (model.comment or "") for model in models):
                log.info("run %s: model of seq %d is registered already", run, event.seq)
                return
        # ClearML names the copy (offline) or the upload after the file: stage the stored file
        # under its own name. A hard link costs nothing; the store's file stays where it is.
        staged = (
            self.directory / f"{run}.models" / event.file.sha256 / _safe_name(event.file.name, "model.pt")
        )
        if not staged.exists():
            staged.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, staged)
            except OSError:
                shutil.copyfile(path, staged)

        def register() -> None:
            model = OutputModel(
                task=task, name=event.name, tags=list(event.tags), comment=marker, framework=event.framework
            )
            model.connect(task=task, name=event.name)
            model.update_weights(
                weights_filename=str(staged), auto_delete_file=False, update_comment=False, async_enable=False
            )

        self._call(run, "model", register)
        if self.offline:
            # ClearML copied the file into the session's models/: the staged link would keep a
            # second copy alive once the store releases the run's files. A re-applied Model
            # event stages it again from the store, which keeps it until the run is retired.
            shutil.rmtree(staged.parent, ignore_errors=True)
            with contextlib.suppress(OSError):
                staged.parent.parent.rmdir()  # the run's staging folder, once empty

    def _set_status(self, live: _Live, status: str, message: str) -> None:
        task, message = live.task, message[:_STATUS_MESSAGE_CHARS]
        live.status_changed = live.task_changed = True
        if self.offline:
            # Offline, status calls are no-ops: keep the outcome in task.json for the upload.
            task._edit(status_message=f"{status}: {message}" if message else status)
            return
        if status == "completed":
            self._call(live.state.run, "status", lambda: task.mark_completed(status_message=message or None))
        elif status == "failed":
            self._call(
                live.state.run,
                "status",
                lambda: task.mark_failed(status_reason=message or "failed", status_message=message or None),
            )
        else:
            self._call(
                live.state.run,
                "status",
                lambda: task.mark_stopped(force=True, status_message=message or None),
            )


# ------------------------------------------------------------------- importing offline sessions


def files_host() -> str:
    """The configured ClearML files server, where imported model weights are uploaded.

    Raises:
        ConfigError: none is configured and ClearML cannot derive one from the API host (it
            does so only for ``:8008`` and ``api.`` hosts).

    """
    from clearml.backend_api import Session  # noqa: PLC0415  (only `upload` needs it)

    try:
        host: str = Session.get_files_server_host()
    except ValueError as exc:  # "Could not detect ClearML web application server"
        raise ConfigError(
            f"no ClearML files server configured, and ClearML cannot derive one from the API server "
            f"{Session.get_api_server_host()} (only from a :8008 or api.* host): set CLEARML_FILES_HOST "
            "(or api.files_server in clearml.conf)"
        ) from exc
    return host


def import_session(folder: Path) -> str:
    """Import one extracted offline session into the configured server; returns the task id."""
    task_id = Task.import_offline_session(str(folder))
    if not task_id:
        raise RuntimeError(f"ClearML did not import the session in {folder}")
    return str(task_id)
