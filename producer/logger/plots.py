"""``run.logger``'s plot calls: each one's arrays are copied now and replayed by the collector."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from producer import arguments as check
from producer.arguments import CallError
from producer.logger import snapshot
from producer.logger.base import LoggerBase, text_or_none
from producer.logger.base import logger_call as _call
from producer.wire import protocol, reports

_text = text_or_none


class PlotCalls(LoggerBase):
    """``report_histogram``, ``report_vector``, line plots, scatters, matrices and surfaces."""

    @_call
    def report_histogram(
        self,
        title: str,
        series: str,
        values: Sequence[int | float],
        iteration: int | None = None,
        labels: list[str] | None = None,
        xlabels: list[str] | None = None,
        xaxis: str | None = None,
        yaxis: str | None = None,
        mode: str | None = None,
        data_args: dict[str, Any] | None = None,
        extra_layout: dict[str, Any] | None = None,
    ) -> None:
        """A histogram (bar chart) of ``values``."""
        call = reports.Histogram(
            values=snapshot.array("values", values, dims=(1, 2)),
            labels=snapshot.labels("labels", labels),
            xlabels=snapshot.labels("xlabels", xlabels),
            xaxis=_text(xaxis),
            yaxis=_text(yaxis),
            mode=_text(mode),
            data_args=snapshot.plain("data_args", data_args),
            extra_layout=snapshot.plain("extra_layout", extra_layout),
        )
        self._report(title, series, iteration, call)

    @_call
    def report_vector(
        self,
        title: str,
        series: str,
        values: Sequence[int | float],
        iteration: int | None = None,
        labels: list[str] | None = None,
        xlabels: list[str] | None = None,
        xaxis: str | None = None,
        yaxis: str | None = None,
        mode: str | None = None,
        extra_layout: dict[str, Any] | None = None,
    ) -> None:
        """A vector as a bar chart (ClearML's ``report_vector``)."""
        call = reports.Vector(
            values=snapshot.array("values", values, dims=(1, 2)),
            labels=snapshot.labels("labels", labels),
            xlabels=snapshot.labels("xlabels", xlabels),
            xaxis=_text(xaxis),
            yaxis=_text(yaxis),
            mode=_text(mode),
            extra_layout=snapshot.plain("extra_layout", extra_layout),
        )
        self._report(title, series, iteration, call)

    @_call
    def report_line_plot(
        self,
        title: str,
        series: Sequence[Any],
        xaxis: str,
        yaxis: str,
        mode: str = "lines",
        iteration: int | None = None,
        reverse_xaxis: bool = False,
        comment: str | None = None,
        extra_layout: dict[str, Any] | None = None,
    ) -> None:
        """One or more series (``Logger.SeriesInfo``) as lines; ``series`` is the list, as in ClearML."""
        if isinstance(series, str) or not isinstance(series, Sequence):
            raise CallError(
                "series-type", f"series must be a list of Logger.SeriesInfo, got {type(series).__name__}"
            )
        data = [
            reports.SeriesData(
                name=str(getattr(one, "name", "")),
                data=snapshot.array("series data", getattr(one, "data", None), dims=(2,)),
                labels=snapshot.labels("series labels", getattr(one, "labels", None)),
            )
            for one in series
        ]
        call = reports.LinePlot(
            series=data,
            xaxis=str(xaxis),
            yaxis=str(yaxis),
            mode=str(mode),
            reverse_xaxis=bool(reverse_xaxis),
            comment=_text(comment),
            extra_layout=snapshot.plain("extra_layout", extra_layout),
        )
        where = self._where(title, "plot", iteration)  # a line plot's series are in the call
        self._emit(protocol.Report(**self._event_base(), **where, call=call))

    @_call
    def report_scatter2d(
        self,
        title: str,
        series: str,
        scatter: Any,
        iteration: int | None = None,
        xaxis: str | None = None,
        yaxis: str | None = None,
        labels: list[str] | None = None,
        mode: str = "lines",
        comment: str | None = None,
        extra_layout: dict[str, Any] | None = None,
    ) -> None:
        """A 2D scatter of (x, y) points."""
        call = reports.Scatter2d(
            scatter=snapshot.array("scatter", scatter, dims=(2,)),
            xaxis=_text(xaxis),
            yaxis=_text(yaxis),
            labels=snapshot.labels("labels", labels),
            mode=str(mode),
            comment=_text(comment),
            extra_layout=snapshot.plain("extra_layout", extra_layout),
        )
        self._report(title, series, iteration, call)

    @_call
    def report_scatter3d(
        self,
        title: str,
        series: str,
        scatter: Any,
        iteration: int | None = None,
        xaxis: str | None = None,
        yaxis: str | None = None,
        zaxis: str | None = None,
        labels: list[str] | None = None,
        mode: str = "markers",
        fill: bool = False,
        comment: str | None = None,
        extra_layout: dict[str, Any] | None = None,
    ) -> None:
        """A 3D scatter of (x, y, z) points."""
        call = reports.Scatter3d(
            scatter=snapshot.array("scatter", scatter, dims=(2, 3)),
            xaxis=_text(xaxis),
            yaxis=_text(yaxis),
            zaxis=_text(zaxis),
            labels=snapshot.labels("labels", labels),
            mode=str(mode),
            fill=bool(fill),
            comment=_text(comment),
            extra_layout=snapshot.plain("extra_layout", extra_layout),
        )
        self._report(title, series, iteration, call)

    @_call
    def report_confusion_matrix(
        self,
        title: str,
        series: str,
        matrix: Any,
        iteration: int | None = None,
        xaxis: str | None = None,
        yaxis: str | None = None,
        xlabels: list[str] | None = None,
        ylabels: list[str] | None = None,
        yaxis_reversed: bool = False,
        comment: str | None = None,
        extra_layout: dict[str, Any] | None = None,
    ) -> None:
        """A confusion matrix (a heat map with labels)."""
        call = reports.ConfusionMatrix(
            matrix=snapshot.array("matrix", matrix, dims=(2,)),
            xaxis=_text(xaxis),
            yaxis=_text(yaxis),
            xlabels=snapshot.labels("xlabels", xlabels),
            ylabels=snapshot.labels("ylabels", ylabels),
            yaxis_reversed=bool(yaxis_reversed),
            comment=_text(comment),
            extra_layout=snapshot.plain("extra_layout", extra_layout),
        )
        self._report(title, series, iteration, call)

    @_call
    def report_matrix(
        self,
        title: str,
        series: str,
        matrix: Any,
        iteration: int | None = None,
        xaxis: str | None = None,
        yaxis: str | None = None,
        xlabels: list[str] | None = None,
        ylabels: list[str] | None = None,
        yaxis_reversed: bool = False,
        extra_layout: dict[str, Any] | None = None,
    ) -> None:
        """Deprecated in ClearML (use :meth:`report_confusion_matrix`); kept for old scripts."""
        call = reports.Matrix(
            matrix=snapshot.array("matrix", matrix, dims=(2,)),
            xaxis=_text(xaxis),
            yaxis=_text(yaxis),
            xlabels=snapshot.labels("xlabels", xlabels),
            ylabels=snapshot.labels("ylabels", ylabels),
            yaxis_reversed=bool(yaxis_reversed),
            extra_layout=snapshot.plain("extra_layout", extra_layout),
        )
        self._report(title, series, iteration, call)

    @_call
    def report_surface(
        self,
        title: str,
        series: str,
        matrix: Any,
        iteration: int | None = None,
        xaxis: str | None = None,
        yaxis: str | None = None,
        zaxis: str | None = None,
        xlabels: list[str] | None = None,
        ylabels: list[str] | None = None,
        camera: Sequence[float] | None = None,
        comment: str | None = None,
        extra_layout: dict[str, Any] | None = None,
    ) -> None:
        """A 3D surface of a matrix."""
        call = reports.Surface(
            matrix=snapshot.array("matrix", matrix, dims=(2,)),
            xaxis=_text(xaxis),
            yaxis=_text(yaxis),
            zaxis=_text(zaxis),
            xlabels=snapshot.labels("xlabels", xlabels),
            ylabels=snapshot.labels("ylabels", ylabels),
            camera=None if camera is None else [check.number("camera", c) for c in camera],
            comment=_text(comment),
            extra_layout=snapshot.plain("extra_layout", extra_layout),
        )
        self._report(title, series, iteration, call)
