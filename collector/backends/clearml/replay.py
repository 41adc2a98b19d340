"""The Logger and Task calls of ``run.logger`` / ``Run.connect``..., replayed through the SDK.

Each event of the ClearML-compatible API (``producer.logger``) is handed to the ClearML SDK's
own method of the same name on the run's task and logger, so what lands in ClearML is what that
call on ``clearml.Logger`` or ``clearml.Task`` makes (event types, titles, series, iterations,
plot JSON). The exceptions, for exactly-once: a debug sample's file is named after the event's
seq (or its ``max_image_history`` slot) instead of ClearML's process-wide counter, as for
``Run.image`` (see :mod:`collector.backends.clearml.mapping`).

A call the SDK refuses (a bad argument that got past the producer's checks: it raises
ValueError, TypeError, even AssertionError) or a figure that cannot be unpickled or drawn is not
retried: it is counted (``reports_failed``), logged, and the task's console says which event it
was, so the run goes on without it. Only an OSError (the file store or the session's disk) is
raised, for the applier to retry.
"""

from __future__ import annotations

import logging
import os
import pickle
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import msgspec

from collector.backends.clearml import drawings
from collector.backends.clearml.live import LiveRun
from collector.counters import Counters
from collector.pipeline.files import FileStore
from collector.storage import paths
from producer.wire import protocol, reports

log = logging.getLogger("collector.backends.clearml.backend")

#: matplotlib is not thread-safe, and appliers run one thread per run: one figure at a time.
_FIGURES: Final = drawings.LOCK
#: The SDK warns that report_vector, report_line_plot and report_matrix are deprecated: the
#: producer's caller chose them, and a shared collector's log is no place to say so per call.
warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"clearml\.logger")
#: Width of the image plot ClearML makes over a figure it cannot convert (as mapping.PLOT_WIDTH).
_PLOT_WIDTH: Final = 640


class ReplayError(Exception):
    """A call that cannot be replayed; it is skipped (counted, noted in the task), not retried."""


def _array(value: reports.Array) -> Any:
    import numpy as np  # noqa: PLC0415 - the SDK's own dependency

    return np.frombuffer(value.data, dtype=np.dtype(value.dtype).newbyteorder("<")).reshape(value.shape)


def _frame(frame: reports.Frame) -> Any:
    import pandas as pd  # noqa: PLC0415 - only for a table

    def values(column: reports.Column) -> Any:
        return _array(column.array) if column.array is not None else column.cells

    data = {i: values(column) for i, column in enumerate(frame.columns)}
    index = None
    if frame.index is not None:
        index = pd.Index(values(frame.index), name=frame.index.name)
    df = pd.DataFrame(data, index=index)
    df.columns = [column.name for column in frame.columns]
    return df


def _table_plot(call: reports.Table) -> dict[str, Any]:
    import io  # noqa: PLC0415

    if call.frame is not None:
        return {"table_plot": _frame(call.frame)}
    if call.rows is not None:
        return {"table_plot": call.rows}
    import pandas as pd  # noqa: PLC0415 - what clearml.Logger.report_table reads a csv with

    return {"table_plot": pd.read_csv(io.StringIO(call.csv or ""), index_col=[0])}


def _kwargs(call: reports.Call) -> dict[str, Any]:
    """The call's fields as the SDK method's keyword arguments (arrays as numpy arrays)."""
    if isinstance(call, reports.Table):
        return {
            **_table_plot(call),
            "extra_layout": call.extra_layout,
            "extra_data": call.extra_data,
        }
    if isinstance(call, reports.ImageUrl | reports.MediaUrl):
        return {"url": call.url}
    if isinstance(call, reports.LinePlot):
        from clearml import Logger  # noqa: PLC0415

        series = [Logger.SeriesInfo(s.name, _array(s.data), s.labels) for s in call.series]
        fields = {f: getattr(call, f) for f in call.__struct_fields__ if f != "series"}
        return {"series": series, **fields}
    fields = {}
    for name in call.__struct_fields__:
        value = getattr(call, name)
        fields[name] = _array(value) if isinstance(value, reports.Array) else value
    return fields


class Replay:
    """Applies the events of the ClearML-compatible API to a run's task.

    Args:
        counters: where failed replays are counted (``reports_failed``).
        allow_pickled_figures: unpickle figures (the collector's ``--allow-pickled-figures``);
            without it a pickled figure already journaled is skipped, not drawn.
        name: the file name (without extension) of a debug sample event.

    """

    def __init__(
        self, *, counters: Counters, allow_pickled_figures: bool, name: Callable[[Any], str]
    ) -> None:
        self.counters = counters
        self.allow_pickled_figures = allow_pickled_figures
        self._name = name

    def apply(self, live: LiveRun, event: protocol.Event, files: FileStore) -> None:
        """Apply one event of the API; a call that cannot be replayed is skipped and noted."""
        try:
            self._apply(live, event, files)
        except ReplayError as exc:
            self._skipped(live, event, str(exc))
        except OSError:
            raise  # a file of the store or of the session that cannot be read or written: retried
        except Exception as exc:  # noqa: BLE001 - the SDK's own checks (it asserts too): a retry fails alike
            # A Logger call only builds and queues events, online or offline: nothing in it is
            # transient but disk I/O, so any other error is the call's and would come back.
            self._skipped(live, event, f"{type(exc).__name__}: {exc}")

    def _skipped(self, live: LiveRun, event: protocol.Event, reason: str) -> None:
        self.counters.incr("reports_failed")
        what = _describe(event)
        log.warning("run %s: %s (seq %d) was not reported: %s", live.state.run, what, event.seq, reason)
        live.logger.report_text(
            f"clearml-relay: {what} (event {event.seq}) could not be reported: {reason}"[:4000],
            level=logging.WARNING,
            print_console=False,
        )

    def _apply(self, live: LiveRun, event: protocol.Event, files: FileStore) -> None:
        path = None
        ref = protocol.event_file(event)
        if ref is not None:
            path = files.path(live.state.run, ref.sha256)
        if isinstance(event, protocol.ImageArray):
            assert path is not None
            pixels = _array(reports.Array(dtype=event.dtype, shape=event.shape, data=path.read_bytes()))
            live.writers.report_image_array(
                event.title, event.series, iteration=event.iteration, image=pixels, name=self._name(event)
            )
        elif isinstance(event, protocol.Media):
            assert path is not None
            live.writers.report_media(
                event.title, event.series, iteration=event.iteration, path=path, name=self._name(event),
                ext=event.extension or ".bin",
            )  # fmt: skip
        elif isinstance(event, protocol.Figure):
            assert path is not None
            self._figure(live, event, path)
        elif isinstance(event, protocol.Report):
            self._report(live, event, path, files)

    def _report(self, live: LiveRun, event: protocol.Report, path: Path | None, files: FileStore) -> None:
        call = event.call
        if call is None:
            assert path is not None
            try:
                call = reports.decode_call(path.read_bytes())
            except (msgspec.MsgspecError, ValueError, RecursionError) as exc:
                raise ReplayError(f"its {event.method or 'call'} cannot be decoded: {exc}") from None
        if isinstance(call, reports.DRAWING_TYPES):
            self._drawing(live, event, call, files)
            return
        method = getattr(live.logger, reports.method(call))
        kwargs = _kwargs(call)
        if isinstance(call, reports.LinePlot):
            method(event.title, iteration=event.iteration, **kwargs)
        else:
            method(event.title, event.series, iteration=event.iteration, **kwargs)

    def _drawing(
        self, live: LiveRun, event: protocol.Report, call: reports.Drawing, files: FileStore
    ) -> None:
        """Draw an Ultralytics plot (``plots="collector"``) and report it as the trainer's PNG would be.

        The image is written beside the run's stored files (removed with them), under a name of
        the event's seq: a re-applied event draws and reports the same file again.
        """
        try:
            data, ext = drawings.draw(call, _array)
        except ValueError as exc:
            raise ReplayError(f"it cannot be drawn: {exc}") from None
        folder = paths.run_dir(files.directory, live.state.run)
        folder.mkdir(parents=True, exist_ok=True)
        image = folder / f"drawn-{event.seq}{ext}"
        partial = image.with_name(f".{image.name}.part")
        partial.write_bytes(data)
        partial.replace(image)
        live.writers.report_image_plot(
            event.title, event.series, iteration=event.iteration or 0, path=image, name=self._name(event),
            ext=ext, width=_PLOT_WIDTH,
        )  # fmt: skip

    def _figure(self, live: LiveRun, event: protocol.Figure, path: Path) -> None:
        if event.format == "png":
            # Drawn by the producer as ClearML draws a figure it does not convert: a PNG for the
            # plots section, a JPEG as a debug sample.
            name, series = self._name(event), event.series or "plot image"
            if event.report_image:
                ext = os.path.splitext(event.file.name)[1] or ".jpeg"
                live.writers.report_image(
                    event.title, series, iteration=event.iteration, path=path, name=name, ext=ext
                )
            else:
                live.writers.report_image_plot(
                    event.title, series, iteration=event.iteration, path=path, name=name, ext=".png",
                    width=_PLOT_WIDTH,
                )  # fmt: skip
            return
        if not self.allow_pickled_figures:
            raise ReplayError("pickled figures are not allowed (--allow-pickled-figures)")
        os.environ.setdefault("MPLBACKEND", "Agg")
        with _FIGURES:
            try:
                figure = pickle.loads(path.read_bytes())  # noqa: S301 - allowed: authenticated producers
            except Exception as exc:  # noqa: BLE001 - any error of a pickle is the sender's
                raise ReplayError(f"the figure cannot be unpickled: {type(exc).__name__}: {exc}") from None
            if not hasattr(figure, "savefig") or not hasattr(figure, "axes"):
                raise ReplayError(f"the pickle holds a {type(figure).__name__}, not a matplotlib figure")
            live.logger.report_matplotlib_figure(
                event.title,
                event.series,
                figure,
                iteration=event.iteration,
                report_image=event.report_image,
                report_interactive=event.report_interactive,
            )


def _describe(event: protocol.Event) -> str:
    if isinstance(event, protocol.Report):
        method = reports.method(event.call) if event.call is not None else event.method or "report"
        return f"{method} {event.title} / {event.series}"
    kind = {
        protocol.ImageArray: "report_image",
        protocol.Media: "report_media",
        protocol.Figure: "report_matplotlib_figure",
    }.get(type(event), type(event).__name__)
    return f"{kind} {getattr(event, 'title', '')} / {getattr(event, 'series', '')}"
