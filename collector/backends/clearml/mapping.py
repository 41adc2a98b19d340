"""How each run event becomes ClearML Logger, Task and OutputModel calls.

The result is what Ultralytics' built-in ClearML callback would have produced for the same
training: scalars, single values (under ``Summary``), debug images, plots, console text,
hyperparameter sections, the execution context, output models and the task's final status.
Positions, checkpoints and rewinds are :mod:`collector.backends.clearml.backend`'s; SDK
internals are :mod:`collector.backends.clearml.compat`'s.

Images and plots
================
Image and plot files get names derived from the event's seq instead of ClearML's process-wide
counter (which restarts at 0 with the process and is shared by all tasks, so it would overwrite
earlier images): a re-applied image rewrites its own file, and online the server replaces it.

The built-in callback re-renders each plot PNG through a matplotlib figure, which ClearML saves
at 300 dpi and reports as an image plot. Measured here on a 2250x1500 curve PNG: 480 ms median
(370-800 ms) through matplotlib (Agg), 2 ms for the same ``type=plot`` event (an image plot,
variant ``plot image``, built by ClearML's ``create_image_plot`` as its matplotlib binding does
for non-interactive figures) over the producer's PNG as it is. No re-rendering, so no matplotlib
(which is not thread-safe) and the image is the producer's, byte for byte.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import shlex
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from clearml import OutputModel

from collector.backends.clearml import compat
from collector.backends.clearml.calls import TimedCalls
from collector.backends.clearml.live import LiveRun
from collector.backends.clearml.replay import Replay
from collector.config import ENV_NONFINITE, NonfinitePolicy
from collector.counters import Counters
from collector.pipeline.files import FileStore
from producer.wire import protocol
from producer.wire.execution import ExecutionContext, GitInfo

log = logging.getLogger("collector.backends.clearml.backend")  # split out of it: log lines keep its name

#: The titles ClearML's own resource monitor reports under.
MONITOR_MACHINE: Final = ":monitor:machine"
MONITOR_GPU: Final = ":monitor:gpu"
#: The title ClearML reports single values under, and their iteration (``Logger.report_single_value``).
SUMMARY: Final = "Summary"
SINGLE_VALUE_ITERATION: Final = -(2**31)
#: Events that are scalars in ClearML: a batch of them is reported in one go (``apply_scalars``).
SCALAR_EVENTS: Final = (protocol.Scalar, protocol.SingleValue, protocol.MachineStats)
#: Width of the image plot made over a plot's PNG (its height follows the PNG's aspect).
PLOT_WIDTH: Final = 640

_LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
_STATUS_MESSAGE_CHARS: Final = 1000
_UNSAFE_NAME: Final = re.compile(r"[^A-Za-z0-9._ -]")


def safe_name(name: str, default: str) -> str:
    """A file name from a display name: no directories, no leading dots, plain characters."""
    cleaned = _UNSAFE_NAME.sub("_", Path(name.replace("\\", "/")).name).lstrip(". ")
    return cleaned or default


def sample_name(event: protocol.Event) -> str:
    """A debug sample's file name: by its ``max_image_history`` slot (as ClearML's), else its seq."""
    slot = getattr(event, "slot", None)
    number = event.seq if slot is None else slot
    return f"{getattr(event, 'title', '')}_{getattr(event, 'series', '')}_{number:08d}"


def _suffix(name: str) -> str:
    suffix = Path(safe_name(name, "file")).suffix.lower()
    return suffix if suffix and suffix != "." else ".png"


class EventMapper:
    """Applies one event to a run's open task.

    Args:
        directory: Where model files are staged for ClearML (``<run>.models/``).
        offline: ClearML offline mode (status and models differ).
        nonfinite: What happens to a NaN or infinity (see :class:`ClearMLBackend`).
        counters: Where skipped values are counted.
        calls: Runs the calls that may block on the network, with a timeout.
        allow_pickled_figures: Draw figures sent pickled (``--allow-pickled-figures``).

    """

    def __init__(
        self,
        directory: Path,
        *,
        offline: bool,
        nonfinite: NonfinitePolicy,
        counters: Counters,
        calls: TimedCalls,
        allow_pickled_figures: bool = False,
    ) -> None:
        self.directory = directory
        self.offline = offline
        self.nonfinite = nonfinite
        self.counters = counters
        self._call = calls
        self.replay = Replay(counters=counters, allow_pickled_figures=allow_pickled_figures, name=sample_name)

    def apply(self, live: LiveRun, event: protocol.Event, files: FileStore) -> None:  # noqa: PLR0912  (a branch per event type)
        logger = live.logger
        if isinstance(event, protocol.RunOpen):
            self.apply_open(live, event)  # a RunOpen again (a restarted producer): refresh
        elif isinstance(event, SCALAR_EVENTS):
            self.apply_scalars(live, [event])
        elif isinstance(event, protocol.Hyperparams):
            self._set_section(live, event.section, event.values)
        elif isinstance(event, protocol.DebugImage):
            self._report_upload(live, event, files.path(live.state.run, event.file.sha256), plot=False)
        elif isinstance(event, protocol.Plot):
            self._report_upload(live, event, files.path(live.state.run, event.file.sha256), plot=True)
        elif isinstance(event, protocol.Model):
            self._apply_model(live, event, files.path(live.state.run, event.file.sha256))
        elif isinstance(event, protocol.ImageArray | protocol.Media | protocol.Figure | protocol.Report):
            self.replay.apply(live, event, files)
        elif isinstance(event, protocol.Parameters):
            self._apply_parameters(live, event)
        elif isinstance(event, protocol.Configuration):
            self._apply_configuration(live, event)
        elif isinstance(event, protocol.ConsoleText):
            logger.report_text(event.text, level=_LEVELS[event.level], print_console=False)
        elif isinstance(event, protocol.RunClose):
            self.set_status(live, event.status, event.error)  # first: a timed-out call is retried
            if event.error:
                logger.report_text(event.error, level=logging.ERROR, print_console=False)
        elif isinstance(event, protocol.Gap):
            lost = (
                f"event {event.seq} was"
                if event.last == event.seq
                else f"events {event.seq}..{event.last} were"
            )
            logger.report_text(
                f"clearml-relay: {lost} lost, run {event.run}: {event.reason}",
                level=logging.WARNING,
                print_console=False,
            )

    def apply_scalars(
        self, live: LiveRun, events: Sequence[protocol.Scalar | protocol.SingleValue | protocol.MachineStats]
    ) -> None:
        """Report every scalar of ``events`` in one go (``Logger.report_scalar`` each, as a batch).

        A single value is a scalar of ``Summary`` at iteration -2**31 (``Logger.report_single_value``);
        machine stats are scalars of ClearML's monitor titles.
        """
        rows: list[tuple[str, str, float, int]] = []
        for event in events:
            if isinstance(event, protocol.Scalar):
                if self._reportable(live, event.title, event.series, event.value, event.iteration):
                    rows.append((event.title, event.series, event.value, event.iteration))
            elif isinstance(event, protocol.SingleValue):
                if self._reportable(live, SUMMARY, event.name, event.value, None):
                    rows.append((SUMMARY, event.name, event.value, SINGLE_VALUE_ITERATION))
            else:
                iteration = event.iteration
                if iteration is None:
                    iteration = max(0, int(event.ts - live.state.opened_ts))
                for key, value in event.values.items():
                    title = MONITOR_GPU if key.startswith("gpu") else MONITOR_MACHINE
                    if self._reportable(live, title, key, value, iteration):
                        rows.append((title, key, value, iteration))
        live.writers.report_scalars(rows)

    def _reportable(
        self, live: LiveRun, title: str, series: str, value: float, iteration: int | None
    ) -> bool:
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

    def apply_open(self, live: LiveRun, event: protocol.RunOpen) -> None:
        task = live.task
        if event.tags:
            task.add_tags(list(event.tags))
        for section, values in event.hyperparams.items():
            self._set_section(live, section, values)
        if event.context is not None:
            self._set_context(live, event.context)

    def _set_section(self, live: LiveRun, section: str, values: dict[str, protocol.ParamValue]) -> None:
        # update_parameters writes run -> task only; task.connect() would let an agent's or the
        # server's values flow back into the dict.
        live.task.update_parameters({f"{section}/{key}": value for key, value in values.items()})

    def _set_context(self, live: LiveRun, context: ExecutionContext) -> None:
        git = context.git or GitInfo()
        version = ".".join(context.python.split(".")[:2])
        compat.set_script(
            live.task,
            binary=f"python{version}" if version else "python",
            repository=git.repository,
            branch=git.branch,
            version_num=git.commit,
            entry_point=context.script,
            working_dir=context.cwd,
            diff=git.diff,
            requirements={"pip": "\n".join(context.packages)} if context.packages else {},
        )
        # Where the run executes goes to the task's description, as Task.init's "created by"
        # line does (runtime properties need API 2.13 and are dropped offline).
        argv = shlex.join(context.argv)
        live.task.set_comment(
            f"clearml-relay run {live.state.run}: {context.user}@{context.host} pid {context.pid}\n"
            f"python {context.python}\nargv: {argv}"
        )

    def _report_upload(
        self, live: LiveRun, event: protocol.DebugImage | protocol.Plot, path: Path, *, plot: bool
    ) -> None:
        """Report a debug image, or a plot as an image plot, over the stored file as it is.

        The file name comes from the event's seq (see the module doc); every sample is kept, as
        a name is never reused.
        """
        name, ext = sample_name(event), _suffix(event.file.name)
        writers, iteration = live.writers, event.iteration
        if plot:
            writers.report_image_plot(
                event.title,
                event.series,
                iteration=iteration,
                path=path,
                name=name,
                ext=ext,
                width=PLOT_WIDTH,
            )
        else:
            writers.report_image(
                event.title, event.series, iteration=iteration, path=path, name=name, ext=ext
            )

    def _apply_model(self, live: LiveRun, event: protocol.Model, path: Path) -> None:
        run, task = live.state.run, live.task
        marker = f"clearml-relay {run}#{event.seq}"
        comment = f"{event.comment}\n{marker}" if event.comment else marker
        if not self.offline and live.uncertain and event.seq > live.uncertain_after:
            models = self._call(run, "list-models", lambda: list(task.models["output"]))
            if any(marker in (model.comment or "") for model in models):
                log.info("run %s: model of seq %d is registered already", run, event.seq)
                return
        # ClearML names the copy (offline) or the upload after the file: stage the stored file
        # under its own name. A hard link costs nothing; the store's file stays where it is.
        staged = self.directory / f"{run}.models" / event.file.sha256 / safe_name(event.file.name, "model.pt")
        if not staged.exists():
            staged.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, staged)
            except OSError:
                shutil.copyfile(path, staged)

        def register() -> None:
            model = OutputModel(
                task=task, name=event.name, tags=list(event.tags), comment=comment, framework=event.framework
            )
            model.connect(task=task, name=event.name)
            model.update_weights(
                weights_filename=str(staged),
                auto_delete_file=False,
                update_comment=False,
                async_enable=False,
                iteration=event.iteration,
            )

        self._call(run, "model", register)
        if self.offline:
            # ClearML copied the file into the session's models/: the staged link would keep a
            # second copy alive once the store releases the run's files. A re-applied Model
            # event stages it again from the store, which keeps it until the run is retired.
            shutil.rmtree(staged.parent, ignore_errors=True)
            with contextlib.suppress(OSError):
                staged.parent.parent.rmdir()  # the run's staging folder, once empty

    def _apply_parameters(self, live: LiveRun, event: protocol.Parameters) -> None:
        """``Task.connect`` / ``set_parameters`` / ``update_parameters`` with the caller's values."""
        task, values = live.task, event.values
        live.task_changed = True
        if event.how == "connect":
            self._call(live.state.run, "parameters", lambda: task.connect(values, name=event.section))
        elif event.how == "set":
            self._call(live.state.run, "parameters", lambda: task.set_parameters(values))
        else:
            self._call(live.state.run, "parameters", lambda: task.update_parameters(values))

    def _apply_configuration(self, live: LiveRun, event: protocol.Configuration) -> None:
        """``Task.connect_configuration``: a dict as it is, a file's text from a file of its name."""
        task, run = live.task, live.state.run
        live.task_changed = True
        description = event.description or None
        if event.value is not None:
            value = event.value
            self._call(
                run, "configuration", lambda: task.connect_configuration(value, event.name, description)
            )
            return
        staged = self.directory / f"{run}.config" / str(event.seq) / safe_name(event.file_name, "config.txt")
        staged.parent.mkdir(parents=True, exist_ok=True)
        staged.write_text(event.text or "", encoding="utf-8")
        try:
            self._call(
                run, "configuration", lambda: task.connect_configuration(staged, event.name, description)
            )
        finally:
            shutil.rmtree(staged.parent.parent, ignore_errors=True)

    def set_status(self, live: LiveRun, status: str, message: str) -> None:
        task, message = live.task, message[:_STATUS_MESSAGE_CHARS]
        live.status_changed = live.task_changed = True
        if self.offline:
            # Offline, status calls are no-ops: keep the outcome in task.json for the upload.
            compat.set_status_message(task, f"{status}: {message}" if message else status)
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
