"""``run.logger`` end to end: each ``clearml.Logger`` call as the events a collector receives.

A real :class:`~producer.Run` delivers to a :class:`FakeCollector`; each test checks the event
types, their title/series/iteration, the bytes of their files and the arrays of their calls,
and that what the caller changes after a call never reaches the collector. Bad input, image
history, the task calls and the memory bound are in ``test_logger_inputs.py``.
"""

from __future__ import annotations

import io
import logging
import pickle
import threading
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import pandas as pd
import pytest
from matplotlib.artist import Artist
from matplotlib.figure import Figure
from PIL import Image
from producer_helpers import FakeCollector

from producer import Run
from producer.logger import Logger, SeriesInfo, snapshot
from producer.wire import protocol, reports

C = TypeVar("C")


#: Stop the producer clients after each test (some drop events on purpose), before the
#: suite's leak check (tests/integration/conftest.py).
pytestmark = pytest.mark.usefixtures("clients_stopped")


def _delivered(fake: FakeCollector, run: Run, *, complete: bool = True) -> list[protocol.Event]:
    """Close the run; the events between its RunOpen and RunClose, in order."""
    assert run.close() is complete
    events = fake.events[run.id]
    assert isinstance(events[0], protocol.RunOpen)
    assert isinstance(events[-1], protocol.RunClose)
    assert [e.seq for e in events] == list(range(1, len(events) + 1)), "a hole in the run"
    assert fake.violations == []
    return events[1:-1]


def _file(fake: FakeCollector, event: protocol.Event) -> bytes:
    ref = protocol.event_file(event)
    assert ref is not None
    held = fake.files[ref.sha256]
    assert held.complete
    return bytes(held.data)


def _call(event: protocol.Event, kind: type[C]) -> C:
    assert isinstance(event, protocol.Report)
    assert isinstance(event.call, kind), event.call
    return event.call


def _where(event: protocol.Event) -> tuple[str, str, int | None]:
    assert isinstance(event, (protocol.Report, protocol.ImageArray, protocol.DebugImage, protocol.Media))
    return event.title, event.series, event.iteration


def _array(array: reports.Array) -> npt.NDArray[Any]:
    dtype = np.dtype(array.dtype).newbyteorder("<")
    return np.frombuffer(array.data, dtype=dtype).reshape(array.shape)


def _columns(frame: reports.Frame) -> dict[Any, list[Any]]:
    return {
        c.name: _array(c.array).tolist() if c.array is not None else list(c.cells or [])
        for c in frame.columns
    }


def test_report_image_arrays_travel_as_their_pixels_copied_at_call_time(fake: FakeCollector) -> None:
    run = Run("proj", "images", endpoint=fake.endpoint)
    rgb = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    gray = np.linspace(0, 1, 6 * 7, dtype=np.float32).reshape(6, 7)
    big_endian = np.arange(6, dtype=">u2").reshape(2, 3)
    pil = Image.fromarray(rgb[::-1].copy(), mode="RGB")
    sent = [rgb.copy(), gray.copy(), np.array(pil), big_endian.astype("<u2")]
    run.logger.report_image("img", "rgb", iteration=3, image=rgb)
    rgb[:] = 255  # after the call: not what was reported
    run.logger.report_image("img", "gray", 4, image=gray)
    gray *= 0
    run.logger.report_image(title="img", series="pil", iteration=5, image=pil)
    run.logger.report_image("img", "matrix", 6, matrix=big_endian)
    events = _delivered(fake, run)
    assert [type(e) for e in events] == [protocol.ImageArray] * 4
    assert [_where(e) for e in events] == [
        ("img", s, i) for s, i in zip(("rgb", "gray", "pil", "matrix"), range(3, 7), strict=True)
    ]
    for event, pixels in zip(events, sent, strict=True):
        assert isinstance(event, protocol.ImageArray)
        assert (event.dtype, event.shape, event.slot) == (pixels.dtype.name, list(pixels.shape), None)
        assert _file(fake, event) == pixels.tobytes()


def test_report_image_from_a_file_or_a_url(fake: FakeCollector, tmp_path: Path) -> None:
    png = tmp_path / "sample.png"
    Image.fromarray(np.zeros((3, 3, 3), dtype=np.uint8)).save(png)
    run = Run("proj", "image-files", endpoint=fake.endpoint)
    run.logger.report_image("files", "png", iteration=1, local_path=str(png))
    run.logger.report_image("links", "remote", iteration=2, url="https://example.com/x.png")
    run.logger.report_image_and_upload("files", "old api", 3, path=str(png))
    events = _delivered(fake, run)
    assert [type(e) for e in events] == [protocol.DebugImage, protocol.Report, protocol.DebugImage]
    assert [_where(e) for e in events] == [
        ("files", "png", 1),
        ("links", "remote", 2),
        ("files", "old api", 3),
    ]
    assert _file(fake, events[0]) == _file(fake, events[2]) == png.read_bytes()
    assert _call(events[1], reports.ImageUrl) == reports.ImageUrl(url="https://example.com/x.png")
    assert png.exists(), "kept without delete_after_upload"


def test_report_media_from_a_stream_a_file_or_a_url(fake: FakeCollector, tmp_path: Path) -> None:
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(bytes(range(256)) * 3)
    stream = io.BytesIO(b"RIFF fake wav")
    run = Run("proj", "media", endpoint=fake.endpoint)
    run.logger.report_media("media", "stream", iteration=1, stream=stream, file_extension=".wav")
    stream.write(b" changed later")  # after the call: not what was reported
    run.logger.report_media("media", "text", 2, stream=io.StringIO("<b>héllo</b>"), file_extension=".html")
    run.logger.report_media("media", "file", 3, local_path=str(clip))
    run.logger.report_media("media", "remote", 4, url="https://example.com/clip.mp4")
    events = _delivered(fake, run)
    assert [type(e) for e in events] == [protocol.Media] * 3 + [protocol.Report]
    assert [_where(e) for e in events] == [
        ("media", s, i + 1) for i, s in enumerate(("stream", "text", "file", "remote"))
    ]
    files = [(e.extension, _file(fake, e)) for e in events[:3] if isinstance(e, protocol.Media)]
    assert files == [
        (".wav", b"RIFF fake wav"),
        (".html", "<b>héllo</b>".encode()),
        (".mp4", clip.read_bytes()),
    ]
    assert _call(events[3], reports.MediaUrl) == reports.MediaUrl(url="https://example.com/clip.mp4")


def test_report_plotly_sends_the_figure_dict_as_it_was_at_call_time(fake: FakeCollector) -> None:
    figure: dict[str, Any] = {
        "data": [{"type": "scatter", "x": np.arange(3), "y": (2.5, np.float32(0.5), 1)}],
        "layout": {"title": "dict figure"},
    }
    run = Run("proj", "plotly", endpoint=fake.endpoint)
    run.logger.report_plotly("plotly", "dict", figure, iteration=2)
    figure["layout"]["title"] = "changed later"
    figure["data"].append({"type": "bar"})
    go = pytest.importorskip("plotly.graph_objects")
    fig = go.Figure(data=[go.Bar(x=["a", "b"], y=[1, 3], name="bars")], layout={"title": {"text": "T"}})
    run.logger.report_plotly("plotly", "graph object", fig, iteration=3)
    events = _delivered(fake, run)
    assert [_where(e) for e in events] == [("plotly", "dict", 2), ("plotly", "graph object", 3)]
    assert _call(events[0], reports.Plotly).figure == {
        "data": [{"type": "scatter", "x": [0, 1, 2], "y": [2.5, 0.5, 1]}],
        "layout": {"title": "dict figure"},
    }
    sent = _call(events[1], reports.Plotly).figure
    assert sent["data"] == [{"type": "bar", "x": ["a", "b"], "y": [1, 3], "name": "bars"}]
    assert sent["layout"]["title"] == {"text": "T"}
    assert set(sent) == set(fig.to_plotly_json())


def test_report_table_from_a_dataframe_rows_or_a_csv_copied_at_call_time(
    fake: FakeCollector, tmp_path: Path
) -> None:
    df = pd.DataFrame(
        {"count": [3, 1, 4], "score": [0.5, 1.5, 2.5], "name": ["ant", "bee", "cat"]},
        index=pd.Index(["r0", "r1", "r2"], name="id"),
    )
    plain = pd.DataFrame({"a": [1, 2]})
    rows: list[list[Any]] = [["name", "value"], ["alpha", 1], ["beta", 2.5]]
    csv = tmp_path / "table.csv"
    csv.write_text("city,population\nParis,2100000\n")
    run = Run("proj", "tables", endpoint=fake.endpoint)
    run.logger.report_table("tables", "frame", iteration=1, table_plot=df, extra_layout={"height": 600})
    df.iloc[0, 0] = 99  # after the call: none of this is what was reported
    df["late"] = 0
    df.index = pd.Index(["x", "y", "z"], name="other")
    run.logger.report_table("tables", "range", 2, table_plot=plain)
    run.logger.report_table("tables", "rows", 3, table_plot=rows)
    rows[1][0] = "changed"
    rows.append(["gamma", 3])
    run.logger.report_table("tables", "csv", 4, csv=str(csv))
    events = _delivered(fake, run)
    assert [_where(e) for e in events] == [
        ("tables", s, i + 1) for i, s in enumerate(("frame", "range", "rows", "csv"))
    ]
    table = _call(events[0], reports.Table)
    assert table.frame is not None
    assert table.extra_layout == {"height": 600}
    assert _columns(table.frame) == {
        "count": [3, 1, 4],
        "score": [0.5, 1.5, 2.5],
        "name": ["ant", "bee", "cat"],
    }
    assert [c.array.dtype if c.array else None for c in table.frame.columns] == ["int64", "float64", None]
    assert table.frame.index == reports.Column(name="id", cells=["r0", "r1", "r2"])
    ranged = _call(events[1], reports.Table).frame
    assert ranged is not None
    assert (_columns(ranged), ranged.index) == ({"a": [1, 2]}, None)
    assert _call(events[2], reports.Table).rows == [["name", "value"], ["alpha", 1], ["beta", 2.5]]
    assert _call(events[3], reports.Table).csv == "city,population\nParis,2100000\n"


def test_numpy_scalars_in_table_rows_are_delivered_as_plain_cells(fake: FakeCollector) -> None:
    run = Run("proj", "numpy-cells", endpoint=fake.endpoint)
    run.logger.report_table(
        "tables", "rows", 1, table_plot=[["name", "value"], [np.str_("beta"), np.float64(2.5)]]
    )
    assert run.close() is True
    reported = [e for e in fake.events[run.id] if isinstance(e, protocol.Report)]
    assert [_call(e, reports.Table).rows for e in reported] == [[["name", "value"], ["beta", 2.5]]]


def test_plot_calls_carry_their_arrays_copied_at_call_time(fake: FakeCollector) -> None:
    hist: Any = np.array([3, 5, 2, 7])  # clearml's annotation says Sequence: arrays are what users pass
    vector: Any = np.array([0.5, 1.5])
    line = np.array([[0, 1], [1, 3], [2, 2]])
    points = np.arange(10, dtype=np.float32).reshape(5, 2)
    cloud = np.arange(12.0).reshape(4, 3)
    confusion = np.array([[5, 1], [2, 7]], dtype=np.int32)
    matrix = np.eye(3)
    surface = np.arange(9.0).reshape(3, 3)
    sources: list[npt.NDArray[Any]] = [hist, vector, line, points, cloud, confusion, matrix, surface]
    given = [a.copy() for a in sources]
    run = Run("proj", "plots", endpoint=fake.endpoint)
    log = run.logger
    log.report_histogram("hist", "h", hist, iteration=1, xlabels=list("abcd"), mode="stack",
                         data_args={"opacity": np.float32(0.5)}, extra_layout={"bargap": 0})  # fmt: skip
    log.report_vector("vector", "v", vector, 2, labels=["l"], xaxis="i", yaxis="value")
    log.report_line_plot(
        "lines", [SeriesInfo("first", line, labels=["p0", "p1", "p2"])], "x", "y", iteration=3
    )
    log.report_scatter2d("scatter", "s2", points, 4, labels=list("abcde"), mode="markers", comment="c")
    log.report_scatter3d("scatter", "s3", cloud, 5, zaxis="z", fill=True)
    log.report_confusion_matrix("cm", "classes", confusion, 6, xlabels=["cat", "dog"], ylabels=["cat", "dog"],
                                yaxis_reversed=True)  # fmt: skip
    log.report_matrix("matrix", "m", matrix, 7, xaxis="col")
    log.report_surface("surface", "hill", surface, 8, camera=(1, 1.5, 2))
    for source in sources:
        source.fill(0)  # after the calls: not what was reported
    events = _delivered(fake, run)
    # A line plot's series are in its call: its event's series is "plot".
    assert [_where(e) for e in events] == [
        ("hist", "h", 1), ("vector", "v", 2), ("lines", "plot", 3), ("scatter", "s2", 4),
        ("scatter", "s3", 5), ("cm", "classes", 6), ("matrix", "m", 7), ("surface", "hill", 8),
    ]  # fmt: skip
    h = _call(events[0], reports.Histogram)
    assert (h.xlabels, h.mode, h.data_args, h.extra_layout) == (
        list("abcd"),
        "stack",
        {"opacity": 0.5},
        {"bargap": 0},
    )
    v = _call(events[1], reports.Vector)
    assert (v.labels, v.xaxis, v.yaxis) == (["l"], "i", "value")
    lp = _call(events[2], reports.LinePlot)
    assert [(s.name, s.labels) for s in lp.series] == [("first", ["p0", "p1", "p2"])]
    assert (lp.xaxis, lp.yaxis, lp.mode) == ("x", "y", "lines")
    s2 = _call(events[3], reports.Scatter2d)
    assert (s2.labels, s2.mode, s2.comment) == (list("abcde"), "markers", "c")
    s3 = _call(events[4], reports.Scatter3d)
    assert (s3.zaxis, s3.fill, s3.mode) == ("z", True, "markers")
    cm = _call(events[5], reports.ConfusionMatrix)
    assert (cm.xlabels, cm.ylabels, cm.yaxis_reversed) == (["cat", "dog"], ["cat", "dog"], True)
    m = _call(events[6], reports.Matrix)
    assert m.xaxis == "col"
    sf = _call(events[7], reports.Surface)
    assert sf.camera == [1.0, 1.5, 2.0]
    arrays = [h.values, v.values, lp.series[0].data, s2.scatter, s3.scatter, cm.matrix, m.matrix, sf.matrix]
    for array, original in zip(arrays, given, strict=True):
        assert (array.dtype, array.shape) == (original.dtype.name, list(original.shape))
        np.testing.assert_array_equal(_array(array), original)


def test_report_text_maps_levels_and_prints_only_when_asked(
    fake: FakeCollector, capsys: pytest.CaptureFixture[str]
) -> None:
    run = Run("proj", "text", endpoint=fake.endpoint)
    log = run.logger
    log.report_text("quiet debug", logging.DEBUG, print_console=False)
    log.report_text("shown info")
    log.report_text("quiet warning", level=logging.WARNING, print_console=False)
    log.report_text("between", 25, False)
    log.report_text("quiet error", logging.ERROR, False)
    log.report_text("quiet critical", logging.CRITICAL, False)
    log.report_text("quiet named", "warning", False)  # type: ignore[arg-type]
    printed = capsys.readouterr().out
    events = _delivered(fake, run)
    assert [(e.text, e.level) for e in events if isinstance(e, protocol.ConsoleText)] == [
        ("quiet debug", "debug"), ("shown info", "info"), ("quiet warning", "warning"), ("between", "info"),
        ("quiet error", "error"), ("quiet critical", "error"), ("quiet named", "warning"),
    ]  # fmt: skip
    assert printed.splitlines() == ["shown info"]


def test_report_scalar_and_single_value(fake: FakeCollector) -> None:
    run = Run("proj", "scalars", endpoint=fake.endpoint)
    assert run.get_logger() is run.logger
    assert Logger.current_logger() is run.logger
    run.logger.report_scalar("loss", "train", 0.25, 3)
    run.logger.report_scalar(title="loss", series="val", value=np.float32(0.5), iteration=np.int64(4))
    run.logger.report_single_value("mAP", 0.7)
    events = _delivered(fake, run)
    assert [(e.title, e.series, e.value, e.iteration) for e in events if isinstance(e, protocol.Scalar)] == [
        ("loss", "train", 0.25, 3), ("loss", "val", 0.5, 4),
    ]  # fmt: skip
    assert [(e.name, e.value) for e in events if isinstance(e, protocol.SingleValue)] == [("mAP", 0.7)]


# ------------------------------------------------------------------------------------ figures


def _figure() -> Figure:
    fig = Figure(figsize=(2, 1.5), dpi=50)
    ax = fig.add_subplot()
    ax.plot([0, 1, 2], [2, 0, 1], label="line")
    ax.set_title("figure")
    return fig


class BrokenArtist(Artist):
    """An artist that pickles but cannot be drawn (module level: pickled by reference)."""

    def draw(self, renderer: Any) -> None:
        raise RuntimeError("cannot draw this artist")


def _pixels(data: bytes, kind: str) -> npt.NDArray[Any]:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == kind
        return np.asarray(image.convert("RGB"))


def test_a_figure_is_drawn_by_the_writer_as_png_or_as_jpeg_from_its_state_at_call_time(
    fake: FakeCollector,
) -> None:
    fig = _figure()
    run = Run("proj", "figures", endpoint=fake.endpoint)
    run.logger.report_matplotlib_figure("mpl", "plot", fig, iteration=1)
    fig.clf()  # after the call: the drawing is of the figure as it was
    run.logger.report_matplotlib_figure(
        "mpl", "image", _figure(), 2, report_image=True, report_interactive=False
    )
    events = _delivered(fake, run)
    assert [type(e) for e in events] == [protocol.Figure] * 2
    plot, image = events
    assert isinstance(plot, protocol.Figure)
    assert isinstance(image, protocol.Figure)
    assert (plot.title, plot.series, plot.iteration, plot.format, plot.report_image) == (
        "mpl",
        "plot",
        1,
        "png",
        False,
    )
    assert (image.iteration, image.format, image.report_image, image.report_interactive) == (
        2,
        "png",
        True,
        False,
    )
    assert (plot.file.name, image.file.name) == ("figure.png", "figure.jpeg")
    reference = snapshot.render_figure(snapshot.figure_pickle(_figure()), report_image=False)
    np.testing.assert_array_equal(_pixels(_file(fake, plot), "PNG"), _pixels(reference, "PNG"))
    assert _pixels(_file(fake, image), "JPEG").shape[2] == 3


def test_pickle_mode_sends_the_figure_pickle_as_it_was_at_call_time(
    fake: FakeCollector, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLEARML_RELAY_FIGURES", "pickle")
    fig = _figure()
    run = Run("proj", "pickled", endpoint=fake.endpoint)
    run.logger.report_matplotlib_figure("mpl", "pickled", fig, iteration=4)
    fig.axes[0].lines[0].set_data([9, 9], [9, 9])  # after the call: not what was reported
    (event,) = _delivered(fake, run)
    assert isinstance(event, protocol.Figure)
    assert (event.format, event.iteration, event.file.name) == ("pickle", 4, "figure.pickle")
    restored = pickle.loads(_file(fake, event))
    assert isinstance(restored, Figure)
    (ax,) = restored.axes
    assert ax.get_title() == "figure"
    np.testing.assert_array_equal(ax.lines[0].get_xydata(), [[0, 2], [1, 0], [2, 1]])


def test_a_figure_that_cannot_be_drawn_or_pickled_is_dropped_logged_once_and_the_run_goes_on(
    fake: FakeCollector, caplog: pytest.LogCaptureFixture
) -> None:
    broken = _figure()
    broken.axes[0].add_artist(BrokenArtist())
    unpicklable = _figure()
    unpicklable.lock = threading.Lock()  # type: ignore[attr-defined]
    run = Run("proj", "bad-figures", endpoint=fake.endpoint)
    with caplog.at_level(logging.WARNING):
        run.logger.report_scalar("s", "s", 1.0, 1)
        for _ in range(2):
            run.logger.report_matplotlib_figure("mpl", "broken", broken, iteration=1)
            run.logger.report_matplotlib_figure("mpl", "unpicklable", unpicklable, iteration=1)
        run.logger.report_matplotlib_figure("mpl", "fine", _figure(), iteration=2)
        run.logger.report_scalar("s", "s", 2.0, 2)
        events = _delivered(fake, run, complete=False)  # the drawing failed on this side: lost
    assert [type(e).__name__ for e in events] == ["Scalar", "Figure", "Scalar"]
    assert isinstance(events[1], protocol.Figure)
    assert events[1].series == "fine"
    messages = [r.getMessage() for r in caplog.records]
    assert (
        len([m for m in messages if "dropping a Figure event" in m and "cannot draw this artist" in m]) == 1
    )
    assert (
        len([m for m in messages if "report_matplotlib_figure ignored: figure cannot be pickled" in m]) == 1
    )
    assert run.client is not None
    assert run.client.stats()["dropped_invalid"] == 2


def test_a_report_over_256_kib_travels_in_a_file_and_decodes_to_the_same_call(fake: FakeCollector) -> None:
    points = np.random.default_rng(7).random((50_000, 2))
    run = Run("proj", "large", endpoint=fake.endpoint)
    run.logger.report_scatter2d("scatter", "large", points, iteration=9, xaxis="x", mode="markers")
    run.logger.report_scatter2d("scatter", "small", points[:10], iteration=9)
    large, small = _delivered(fake, run)
    assert isinstance(large, protocol.Report)
    assert (large.call, large.method, large.iteration) == (None, "report_scatter2d", 9)
    data = _file(fake, large)
    assert len(data) > 256 * 1024
    expected = reports.Scatter2d(
        scatter=reports.Array(dtype="float64", shape=[50_000, 2], data=points.tobytes()),
        xaxis="x",
        mode="markers",
    )
    assert reports.decode_call(data) == expected
    assert isinstance(small, protocol.Report)
    assert (small.file, small.method) == (None, "")
    np.testing.assert_array_equal(_array(_call(small, reports.Scatter2d).scatter), points[:10])
