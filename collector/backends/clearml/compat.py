"""Every use of clearml SDK internals by the collector, checked against the clearml it was written for.

The ClearML backend needs more than the SDK's public API: many tasks in one process
(``Task._create``), its background writers stopped and written synchronously at each checkpoint,
events the SDK drops found out, images named after the event's seq, offline sessions cut back
and continued. Each of those touches private attributes, and they are all here, so that a new
clearml release is checked in one place (see docs/clearml-compat.md).

:func:`install` is the explicit step that makes the process ready (the backend calls it when it
is constructed; importing this module changes nothing): it refuses a clearml outside
:data:`SUPPORTED_RANGE` with :class:`UnsupportedClearMLError`, configures the SDK for a
long-lived service holding many tasks, and replaces ``OutputModel.published`` (see
:func:`_published`). tests/integration/test_clearml_backend.py pins the internals this module relies on.
"""

from __future__ import annotations

import importlib.metadata
import itertools
import json
import logging
import math
import re
import sys
import threading
import time
import zipfile
from pathlib import Path
from typing import Any, Final

from PIL import Image

from collector.config import ConfigError

log = logging.getLogger(__name__)

_MISSING: BaseException | None = None
try:  # what a clearml that moved these would fail on: install() says which version it is
    from clearml import OutputModel, Task
    from clearml.backend_api.services import tasks as api_tasks
    from clearml.backend_interface.metrics.events import ImageEvent, MediaEvent, ScalarEvent, UploadEvent
    from clearml.backend_interface.metrics.interface import Metrics
    from clearml.config import ConfigWrapper, get_offline_dir
    from clearml.storage.helper import _StorageHelper
    from clearml.utilities.plotly_reporter import create_image_plot

    from collector.backends.clearml.scalars import (
        ScalarRows,
        scalar_request,
        scalar_request_extra,
        write_rows,
    )

    #: ``OutputModel.published`` as clearml ships it (before :func:`install` replaces it).
    ORIGINAL_PUBLISHED: Any = OutputModel.__dict__["published"]
except (ImportError, KeyError) as exc:
    _MISSING = exc

#: The clearml releases this module was written and tested for (against 2.1.12).
SUPPORTED_FROM: Final = (2, 1)
SUPPORTED_BELOW: Final = (2, 2)
SUPPORTED_RANGE: Final = ">=2.1,<2.2"

_installed = False
_install_lock = threading.Lock()


class UnsupportedClearMLError(ConfigError):
    """The installed clearml is not a version the ClearML backend was written for."""


def release(version: str) -> tuple[int, ...]:
    """The numeric release of a version string: ``2.1.12rc1`` -> ``(2, 1, 12)``."""
    numbers: list[int] = []
    for piece in version.split("."):
        match = re.match(r"\d+", piece)
        if match is None:
            break
        numbers.append(int(match.group()))
        if match.end() < len(piece):  # a pre-release or local suffix ends the release
            break
    return tuple(numbers)


def supported(version: str) -> bool:
    """Whether clearml ``version`` is in :data:`SUPPORTED_RANGE`."""
    return SUPPORTED_FROM <= release(version) < SUPPORTED_BELOW


def check_version() -> str:
    """The installed clearml's version; UnsupportedClearMLError if this module was not written for it."""
    try:
        version = importlib.metadata.version("clearml")
    except importlib.metadata.PackageNotFoundError:
        version = "(not installed)"
    advice = (
        f"install a supported one (pip install 'clearml{SUPPORTED_RANGE}'); see docs/clearml-compat.md "
        "for what the collector relies on and how to check a newer clearml"
    )
    if not supported(version):
        raise UnsupportedClearMLError(
            f"clearml {version} is installed, but the collector's ClearML backend supports clearml "
            f"{SUPPORTED_RANGE} only (it relies on SDK internals that change between releases): {advice}"
        )
    if _MISSING is not None:
        raise UnsupportedClearMLError(
            f"clearml {version} lacks an SDK internal the collector's ClearML backend relies on "
            f"({_MISSING!r}): {advice}"
        )
    return version


def install() -> None:
    """Check the installed clearml and configure the SDK for this process (idempotent).

    Raises:
        UnsupportedClearMLError: clearml is not in :data:`SUPPORTED_RANGE`.

    """
    global _installed  # noqa: PLW0603  (once per process)
    with _install_lock:
        if _installed:
            return
        check_version()
        # Thread-mode reporting (the Linux default forks a reporting subprocess per main task).
        Task._report_subprocess_enabled = False  # type: ignore[assignment]  # a lazy config value
        # Fail a call to an unreachable server within seconds (api.http.retries = 2 each, so a dead
        # server fails a call in seconds instead of never); the applier retries the event. Merged
        # over clearml.conf / CLEARML_CONFIG_FILE, which still provide everything else.
        retries = dict.fromkeys(("total", "connect", "read", "redirect", "status"), 2)
        ConfigWrapper.set_overrides({"api": {"http": {"retries": retries}}})
        OutputModel.published = property(_published)  # type: ignore[method-assign,assignment]
        _skip_session_zip()
        _installed = True


# ---------------------------------------------------------------------------- pinned work-around
# Offline, an OutputModel's base object is a ``DummyModel`` without ``locked`` and the shipped
# ``published`` property raises AttributeError, so every ``update_weights`` offline crashes
# (clearml issue 1243, since 1.14): ClearML offline mode cannot register a model at all. An
# offline model has no registry and is never published, which is what the replacement says.
# tests/integration/test_clearml_backend.py pins the crash: when clearml fixes it, that test fails.
def _published(model: Any) -> bool:
    task = getattr(model, "_task", None)
    if task is not None and task.is_offline():
        return False
    return bool(ORIGINAL_PUBLISHED.fget(model))


# ----------------------------------------------------------------- pinned: no zip at close
# Offline, ``Task.__shutdown`` (clearml/task.py) ends every close by zipping the whole session
# folder, models included, with the ``ZipFile`` that clearml.task imports by name, inside a
# ``try: ... except Exception: pass`` (after ``self._edit()`` wrote task.json). The collector
# keeps the folder as the session's one copy and deletes that zip (``backend._finish``):
# deflating it was half of the CPU of closing a run of scalars, and seconds per GB of model
# weights, all of it thrown away. clearml.task's name is rebound (clearml.task alone; zipfile
# and every other user of it stay as they are) to a ZipFile that refuses, so the SDK's own
# ``except`` skips the zip and its "Offline session stored in" print. A clearml that zipped some
# other way would write the zip, and the backend would delete it as before.
# tests/integration/test_clearml_backend.py pins the source line and that a close writes no zip.
class SessionZipSkippedError(RuntimeError):
    """Raised in place of ClearML's offline session zip (the SDK catches it and goes on)."""


def _no_session_zip(file: Any, *_args: Any, **_kwargs: Any) -> Any:
    raise SessionZipSkippedError(f"the collector keeps the session folder; no zip written to {file}")


def _skip_session_zip() -> None:
    module = sys.modules[Task.__module__]
    if getattr(module, "ZipFile", None) is not zipfile.ZipFile:
        log.warning(
            "clearml.task no longer zips offline sessions with zipfile.ZipFile: the collector "
            "cannot skip that zip, it deletes it after each close instead (see docs/clearml-compat.md)"
        )
        return
    module.ZipFile = _no_session_zip  # type: ignore[attr-defined]  # checked above


# ---------------------------------------------------------------------------- pinned work-around
#: The SDK's process-wide thread pools: ``Metrics`` (events and file uploads, started by every
#: task's reporter and console log) and ``StorageHelper`` (asynchronous uploads). Each is made
#: on first use with a check-then-set and no lock, so tasks made at the same time in several
#: threads each make one and all but the last are dropped with their threads running. That
#: crashes the interpreter: with 10 tasks made at once, the collector died with a segmentation
#: fault (or ``AttributeError: mro``, or an abort) in about one burst in four, anywhere in the
#: SDK (found by the collector benchmark; tests/integration/test_clearml_backend.py reproduces it). Made
#: once, before any applier thread runs, the pools are never made again (only closing the
#: process's main task drops them, and the collector has none).
def start_shared_pools() -> None:
    Metrics._initialize_upload_pools()
    _StorageHelper._initialize_upload_pool()


# ----------------------------------------------------------------- pinned: sends the SDK drops
# ``Metrics._do_write_events`` (clearml/backend_interface/metrics/interface.py) uploads the
# events' files, leaves out every event whose upload failed (``upload_exception``; one whose file
# cannot be prepared is removed from the list) and ends with ``self.send(req,
# raise_on_errors=False)``: a batch the server refuses (500, 4xx) comes back as a CallResult
# that is not ``ok()``, which ``BackgroundReportService._write`` (reporter.py) ignores. The
# console's ``BackgroundLogService._send_events`` (backend_interface/task/log.py) sends through
# its ``session`` attribute and only logs a refused batch. Both are watched per task instance
# (the SDK's classes stay as they are); tests/integration/test_clearml_backend.py pins what this relies on.


def _watch_metrics(metrics: Any, lost: list[str]) -> None:
    """Record in ``lost`` every event of this task's metrics writer that did not land.

    It also writes the :class:`ScalarRows` among the events (which the SDK's own writer does not
    know), each stretch of them as one request, in their place between the SDK's events.
    """
    write = metrics._do_write_events  # bound to this instance; write_events calls it by name

    def checked_sdk(events: list[Any], storage_uri: str | None) -> Any:
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

    def checked(events: list[Any], storage_uri: str | None = None) -> Any:
        result = None
        for rows, group in itertools.groupby(events, key=lambda ev: isinstance(ev, ScalarRows)):
            stretch = list(group)
            if rows:
                result = write_rows(metrics, [row for ev in stretch for row in ev.rows], lost) or result
            else:
                result = checked_sdk(stretch, storage_uri) or result
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


# --------------------------------------------------------------------------- a task's writers


class TaskWriters:
    """A task's logger, its two writers stopped and watched, written by :meth:`drain` only.

    Each task's two background writer threads (metrics reporter, console log) are stopped right
    after the task is made, and :meth:`drain` writes both synchronously. That is what makes a
    checkpoint mean "on disk": ``task.flush()`` only signals the console log thread, and the
    reporter's wait can return before an event queued during its last write is written. It
    also halves the threads per task.
    """

    def __init__(self, task: Any) -> None:
        self.logger: Any = task._get_logger(auto_connect_streams={"stdout": True})
        # Only a logger that "captures" a stream gets a console TaskHandler; for a task that
        # is not the process's main task nothing is actually patched (no stdout capture).
        self.reporter: Any = task._reporter
        self.console: Any = self.logger._task_handler
        self.reporter._report_service.stop()
        self.console._background_log.stop()
        #: What the SDK dropped since this task object was made.
        self.lost: list[str] = []
        _watch_metrics(self.reporter._metrics, self.lost)
        log_service = self.console._background_log
        log_service.session = _WatchedSession(log_service.session, self.lost)
        #: What scalar requests carry besides the event (None: the SDK's own path, see above).
        self._scalar_extra = scalar_request_extra(self.reporter._metrics)

    def report_scalars(self, scalars: list[tuple[str, str, float, int]]) -> None:
        """``Logger.report_scalar`` for each ``(title, series, value, iteration)``, queued as one event."""
        if self._scalar_extra is None:
            for title, series, value, iteration in scalars:
                self.logger.report_scalar(title, series, value, iteration)
            return
        normalize, touch, extra = (
            self.reporter._normalize_name,
            self.logger._touch_title_series,
            self._scalar_extra,
        )
        now = int(time.time() * 1000)
        rows = []
        for title, series, value, iteration in scalars:
            touch(title, series)
            number = float(value)
            if not math.isfinite(number):
                number = ScalarEvent._convert_np_nan_inf(number)  # the SDK's stand-in value
            rows.append(
                scalar_request(
                    extra,
                    timestamp=now,
                    metric=normalize(title),
                    variant=normalize(series),
                    value=number,
                    iteration=iteration,
                )
            )
        if rows:
            self.reporter._report(ScalarRows(rows))

    def drain(self) -> None:
        """Write every event reported so far (session files offline, the server online)."""
        self.console._background_log.send_all_records()
        self.reporter._report_service.send_all_events(wait=True)

    def _upload(
        self,
        kind: Any,
        title: str,
        series: str,
        *,
        iteration: int,
        path: Path | None,
        name: str,
        ext: str | None,
        image: Any = None,
    ) -> tuple[str, Any]:
        upload_uri: str = self.logger.get_default_upload_destination()
        data = {"stream": image} if kind is MediaEvent else {"image_data": image}
        return upload_uri, kind(
            metric=title,
            variant=series,
            iter=iteration,
            **data,
            local_image_path=None if path is None else str(path),
            upload_uri=upload_uri,
            file_history_size=-1,
            override_filename=name,
            override_filename_ext=ext,
        )

    def report_image_array(self, title: str, series: str, *, iteration: int, image: Any, name: str) -> None:
        """A debug image of an array, encoded by the SDK as ``Logger.report_image(image=...)`` does."""
        _, upload = self._upload(
            ImageEvent, title, series, iteration=iteration, path=None, name=name, ext=None, image=image
        )
        self.reporter._report(upload)

    def report_media(
        self, title: str, series: str, *, iteration: int, path: Path, name: str, ext: str
    ) -> None:
        """A debug sample of a media file as it is (``Logger.report_media``), uploaded as ``name + ext``."""
        _, upload = self._upload(
            MediaEvent, title, series, iteration=iteration, path=path, name=name, ext=ext
        )
        self.reporter._report(upload)

    def report_image(
        self, title: str, series: str, *, iteration: int, path: Path, name: str, ext: str
    ) -> None:
        """A debug image of the file as it is, uploaded as ``name + ext`` (every sample kept)."""
        _, upload = self._upload(
            ImageEvent, title, series, iteration=iteration, path=path, name=name, ext=ext
        )
        self.reporter._report(upload)

    def report_image_plot(
        self, title: str, series: str, *, iteration: int, path: Path, name: str, ext: str, width: int
    ) -> None:
        """What Reporter.report_image_plot_and_upload does, with our file name: an image plot."""
        upload_uri, upload = self._upload(
            UploadEvent, title, series, iteration=iteration, path=path, name=name, ext=ext
        )
        _, url = upload.get_target_full_upload_uri(upload_uri, self.reporter._metrics.storage_key_prefix)
        self.reporter._report(upload)
        with Image.open(path) as image:
            image_width, image_height = image.size
        figure = create_image_plot(
            image_src=url,
            title=f"{title}/{series}",
            width=width,
            height=int(width * float(image_height or 480) / float(image_width or 640)),
        )
        self.reporter.report_plot(title=title, series=series, plot=figure, iter=iteration, nan_as_null=False)


# ----------------------------------------------------------------------------------- the task


def create_task(project: str, name: str, task_type: Any) -> Any:
    """A new task; unlike ``Task.create`` it works offline, unlike ``Task.init`` many per process.

    Tasks made this way get no stdout capture, no resource monitor and no framework bindings
    (only ``Task.init`` installs them).
    """
    return Task._create(project_name=project, task_name=name, task_type=task_type)


def set_script(task: Any, **fields: Any) -> None:
    """Set the task's execution section (``Script`` fields: repository, entry_point, diff...)."""
    task._update_script(api_tasks.Script(**fields))


def keep_project_name(task: Any, project: str) -> None:
    """Offline, ``Task.__init__`` forgets the project's name: the session's task.json needs it."""
    task._project_name = (task.project, project)


def make_report_dir(task: Any) -> None:
    """Offline: create the folder the task's images and plots are copied into."""
    Path(task._get_default_report_storage_uri()).mkdir(parents=True, exist_ok=True)


def restore_output_models(task: Any, task_json: str) -> None:
    """Offline: give back the output models ``Task.__init__`` forgets when it reads task.json."""
    stored: dict[str, Any] = json.loads(task_json) if task_json else {}
    task._offline_output_models = list(stored.get("offline_output_models", []))


def write_task_json(task: Any) -> None:
    """Offline: rewrite the session's task.json now (``offline_output_models`` lags otherwise)."""
    task._edit()


def set_status_message(task: Any, message: str) -> None:
    """Offline, status calls are no-ops: keep the outcome in task.json for the upload."""
    task._edit(status_message=message)


def task_json_path(session: Path) -> Path:
    """The task description in an offline session folder."""
    return session / Task._offline_filename


def offline_dir(task_id: str) -> Path:
    """Where ClearML looks for the offline session of ``task_id`` (under $CLEARML_CACHE_DIR)."""
    return Path(str(get_offline_dir(task_id=task_id)))  # clearml's is a pathlib2.Path
