"""``run.logger``: the ``clearml.Logger`` API, whose calls the collector replays into ClearML.

Every method has the signature of ``clearml.Logger``'s (clearml 2.1: keyword names, defaults
and order), so a script written against ClearML works unchanged. Like every ``Run`` method, a
call only snapshots its arguments and hands one event to the writer thread; it never raises:
a bad argument is logged once per (method, reason) and counted, and the call does nothing. What
each method does differently from ClearML, and what it does not carry, is in docs/logger.md.
"""

from __future__ import annotations

import io
import logging
import os
from typing import Any, Final, NamedTuple

import msgspec

from producer import arguments as check
from producer.arguments import CallError
from producer.logger import base, snapshot
from producer.logger.base import level_of, one_of
from producer.logger.base import logger_call as _call
from producer.logger.plots import PlotCalls
from producer.transport.payload import Payload
from producer.wire import protocol, reports

log = logging.getLogger("producer.run")

_PENDING_FILE: Final = protocol.FileRef(sha256="0" * 64, size=0, name="pending")
#: Stands in for a call the writer thread makes from a snapshot (a table, a plotly figure).


class SeriesInfo(NamedTuple):
    """One series of :meth:`Logger.report_line_plot` (as ``clearml.Logger.SeriesInfo``)."""

    name: str
    data: Any
    labels: Any = None


class Logger(PlotCalls):
    """The ``clearml.Logger`` of one run (``run.logger``), or of the current run (:meth:`current_logger`)."""

    SeriesInfo = SeriesInfo

    @classmethod
    def current_logger(cls) -> Logger:
        """The logger of the newest open run of this process (ClearML: of ``Task.current_task()``).

        With no open run, a logger whose calls are ignored, each kind logged once.
        """
        run = base.newest_run()
        logger: Logger | None = getattr(run, "logger", None)
        return logger if logger is not None else _NO_RUN_LOGGER

    # ------------------------------------------------------------------------ scalars, text

    @_call
    def report_scalar(self, title: str, series: str, value: float, iteration: int) -> None:
        """Plot a scalar series (``clearml.Logger.report_scalar``)."""
        self._run.scalar(title, series, value, iteration)

    @_call
    def report_single_value(self, name: str, value: float) -> None:
        """Report a single value (the task's summary table)."""
        self._run.single_value(name, value)

    @_call
    def report_text(
        self, msg: str, level: int = logging.INFO, print_console: bool = True, *args: Any, **_: Any
    ) -> None:
        """Report console text; printed here too unless ``print_console=False``, as ClearML does."""
        text = str(msg) % args if args else str(msg)
        event = protocol.ConsoleText(**self._event_base(), text=text[: 1024 * 1024], level=level_of(level))
        self._emit(event)
        if print_console:
            print(text)

    # -------------------------------------------------------------------------- debug samples

    @_call
    def report_image(
        self,
        title: str,
        series: str,
        iteration: int | None = None,
        local_path: str | None = None,
        image: Any = None,
        matrix: Any = None,
        max_image_history: int | None = None,
        delete_after_upload: bool = False,
        url: str | None = None,
    ) -> None:
        """A debug image from a file, an array or PIL image (encoded by the collector), or a URL."""
        given = one_of("report_image", local_path=local_path, url=url, image=image, matrix=matrix)
        where = self._where(title, series, iteration)
        if given == "url":
            self._report(title, series, iteration, reports.ImageUrl(url=str(url)))
            return
        slot = self._slot(where["title"], where["series"], max_image_history)
        if given == "local_path":
            path = check.path(local_path)
            sample = protocol.DebugImage(**self._event_base(), **where, file=_PENDING_FILE, slot=slot)
            self._emit(sample, _taken(path) if delete_after_upload else path)
            return
        pixels, dtype, shape = snapshot.image(image if image is not None else matrix)
        pending = protocol.FileRef(sha256=_PENDING_FILE.sha256, size=len(pixels), name="image.raw")
        event = protocol.ImageArray(
            **self._event_base(), **where, file=pending, dtype=dtype, shape=shape, slot=slot
        )
        self._emit(event, Payload("image.raw", len(pixels), lambda _: pixels))

    @_call
    def report_media(
        self,
        title: str,
        series: str,
        iteration: int | None = None,
        local_path: str | None = None,
        stream: io.BytesIO | io.StringIO | None = None,
        file_extension: str | None = None,
        max_history: int | None = None,
        delete_after_upload: bool = False,
        url: str | None = None,
    ) -> None:
        """A media file (audio, video, html...) from a file, a stream (copied now) or a URL."""
        given = one_of("report_media", local_path=local_path, url=url, stream=stream)
        where = self._where(title, series, iteration)
        if given == "url":
            self._report(title, series, iteration, reports.MediaUrl(url=str(url)))
            return
        slot = self._slot(where["title"], where["series"], max_history)
        if given == "local_path":
            path = check.path(local_path)
            extension = file_extension or os.path.splitext(path)[1]
            event = protocol.Media(
                **self._event_base(), **where, file=_PENDING_FILE, extension=extension, slot=slot
            )
            self._emit(event, _taken(path) if delete_after_upload else path)
            return
        data = _stream_bytes(stream)
        event = protocol.Media(
            **self._event_base(), **where, file=_PENDING_FILE, extension=file_extension or "", slot=slot
        )
        self._emit(event, Payload(f"media{file_extension or ''}", len(data), lambda _: data))

    # ------------------------------------------------------------------------------- figures

    @_call
    def report_matplotlib_figure(
        self,
        title: str,
        series: str,
        figure: Any,
        iteration: int | None = None,
        report_image: bool = False,
        report_interactive: bool = True,
    ) -> None:
        """A matplotlib figure, pickled now; drawn by the writer thread or the collector (see docs)."""
        where = self._where(title, series, iteration)
        pickled = snapshot.figure_pickle(figure)
        render = self._run._figures == "render"
        event = protocol.Figure(
            **self._event_base(),
            **where,
            file=_PENDING_FILE,
            format="png" if render else "pickle",
            report_image=bool(report_image),
            report_interactive=bool(report_interactive),
        )
        if render:
            image = bool(report_image)
            payload = Payload(
                "figure.jpeg" if image else "figure.png",
                len(pickled),
                lambda _: snapshot.render_figure(pickled, report_image=image),
            )
        else:
            payload = Payload("figure.pickle", len(pickled), lambda _: pickled)
        self._emit(event, payload)

    @_call
    def report_plotly(self, title: str, series: str, figure: Any, iteration: int | None = None) -> None:
        """A plotly figure (a dict, or a ``plotly`` Figure), copied now."""
        if not isinstance(figure, dict) and callable(getattr(figure, "to_plotly_json", None)):
            figure = figure.to_plotly_json()
        encoded = snapshot.plain_bytes("figure", figure)
        where = self._where(title, series, iteration)
        event = protocol.Report(**self._event_base(), **where, call=base.LATER)

        def make(event: protocol.Event) -> None:
            assert isinstance(event, protocol.Report)
            event.call = reports.Plotly(figure=msgspec.msgpack.decode(encoded))

        self._emit(event, Payload("plotly", len(encoded), make))

    @_call
    def report_table(
        self,
        title: str,
        series: str,
        iteration: int | None = None,
        table_plot: Any = None,
        csv: str | None = None,
        url: str | None = None,
        extra_layout: dict[str, Any] | None = None,
        extra_data: dict[str, Any] | None = None,
    ) -> None:
        """A table: a pandas DataFrame or a list of rows (copied now), a csv file or a URL (read later)."""
        given = one_of("report_table", table_plot=table_plot, csv=csv, url=url)
        where = self._where(title, series, iteration)
        layout, data = snapshot.plain("extra_layout", extra_layout), snapshot.plain("extra_data", extra_data)
        event = protocol.Report(**self._event_base(), **where, call=base.LATER)
        size, later = 0, None
        if given == "table_plot" and isinstance(table_plot, (list, tuple)):
            event.call = reports.Table(rows=snapshot.rows(table_plot), extra_layout=layout, extra_data=data)
        elif given == "table_plot":
            if not callable(getattr(table_plot, "copy", None)) or not hasattr(table_plot, "columns"):
                raise CallError(
                    "table_plot-type",
                    "table_plot must be a pandas DataFrame or a list of rows, "
                    f"got {type(table_plot).__name__}",
                )
            later = snapshot.frame_snapshot(table_plot)
            size = int(table_plot.memory_usage(deep=False).sum())
        path = check.path(csv) if given == "csv" else str(url)

        def make(event: protocol.Event) -> None:
            """(writer thread) The table's columns, or the csv text read from the file or URL."""
            assert isinstance(event, protocol.Report)
            if later is not None:
                event.call = reports.Table(frame=later(), extra_layout=layout, extra_data=data)
            elif given != "table_plot":
                text = snapshot.csv_text(path) if given == "csv" else snapshot.url_text(path)
                event.call = reports.Table(csv=text, extra_layout=layout, extra_data=data)

        self._emit(event, Payload("table", size, make))

    # --------------------------------------------------------------------------- settings

    def flush(self, wait: bool = False) -> bool:
        """``wait=True``: wait (at most the flush timeout) until the collector holds every event."""
        return self._run.flush() if wait else True

    def set_default_debug_sample_history(self, max_history: int) -> None:
        """How many files each image/media series keeps (``max_image_history`` when not given)."""
        try:
            self._history = check.iteration(max_history)
        except CallError as exc:
            self._run._reject("Logger.set_default_debug_sample_history", exc.key, str(exc))

    def get_default_debug_sample_history(self) -> int:
        """The file history of image/media series; -1: every sample keeps its file (the default)."""
        return self._history if self._history is not None else -1

    def get_flush_period(self) -> float | None:
        """None: the writer thread writes within milliseconds, there is no period to set."""
        return None

    def set_flush_period(self, period: float) -> None:
        """Accepted and ignored: events are written within milliseconds (no flush period)."""

    def get_default_upload_destination(self) -> str:
        """The collector decides where files go (its ClearML configuration): "" here."""
        return ""

    def set_default_upload_destination(self, uri: str) -> None:
        """Not carried: the collector's ClearML configuration decides where files are uploaded."""
        self._unsupported("set_default_upload_destination", "the collector's ClearML configuration decides")

    def capture_logging(self) -> Any:
        """Not carried: console capture is the hooks' (see docs/logger.md); a no-op context manager."""
        self._unsupported("capture_logging", "use Run.text or report_text")
        import contextlib  # noqa: PLC0415

        return contextlib.nullcontext()

    def report_image_and_upload(
        self,
        title: str,
        series: str,
        iteration: int | None = None,
        path: str | None = None,
        matrix: Any = None,
        max_image_history: int | None = None,
        delete_after_upload: bool = False,
    ) -> None:
        """Deprecated in ClearML: :meth:`report_image`; ``path`` is ``local_path``, ``matrix`` ``image``."""
        self.report_image(
            title,
            series,
            iteration,
            local_path=path,
            image=matrix,
            max_image_history=max_image_history,
            delete_after_upload=delete_after_upload,
        )

    @staticmethod
    def set_reporting_nan_value(value: float, warn_period: int = 1000) -> None:
        """Not carried: the collector's ``CLEARML_RELAY_NONFINITE`` decides what a NaN becomes."""
        _unsupported_static("set_reporting_nan_value", "the collector's CLEARML_RELAY_NONFINITE decides")

    @staticmethod
    def set_reporting_inf_value(value: float, warn_period: int = 1000) -> None:
        """Not carried: the collector's ``CLEARML_RELAY_NONFINITE`` decides what an infinity becomes."""
        _unsupported_static("set_reporting_inf_value", "the collector's CLEARML_RELAY_NONFINITE decides")

    @staticmethod
    def matplotlib_force_report_non_interactive(force: bool) -> None:
        """Not carried: pass ``report_interactive=False`` to :meth:`report_matplotlib_figure`."""
        _unsupported_static("matplotlib_force_report_non_interactive", "pass report_interactive=False")

    @staticmethod
    def tensorboard_auto_group_scalars(group_scalars: bool = False) -> None:
        """Not carried: clearml-relay does not capture TensorBoard."""
        _unsupported_static("tensorboard_auto_group_scalars", "TensorBoard is not captured")

    @staticmethod
    def tensorboard_single_series_per_graph(single_series: bool = False) -> None:
        """Not carried: clearml-relay does not capture TensorBoard."""
        _unsupported_static("tensorboard_single_series_per_graph", "TensorBoard is not captured")

    def _unsupported(self, method: str, why: str) -> None:
        self._run._reject(f"Logger.{method}", "unsupported", f"not supported by clearml-relay ({why})")


_told: set[str] = set()


def _unsupported_static(method: str, why: str) -> None:
    if method not in _told:
        _told.add(method)
        log.warning("clearml-relay: Logger.%s ignored: not supported by clearml-relay (%s)", method, why)


def _stream_bytes(stream: object) -> bytes:
    getvalue = getattr(stream, "getvalue", None)
    data = getvalue() if callable(getvalue) else getattr(stream, "read", lambda: None)()
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise CallError("stream-type", f"stream must be a BytesIO or StringIO, got {type(stream).__name__}")


def _taken(path: str) -> Payload:
    """A file read by the writer thread and then deleted (``delete_after_upload=True``)."""

    def make(_: protocol.Event) -> bytes:
        with open(path, "rb") as file:
            data = file.read()
        os.unlink(path)
        return data

    return Payload(os.path.basename(path), 0, make)


_NO_RUN_LOGGER: Final = Logger(base.NoRun())
