"""One script that calls every ``clearml.Logger`` reporting method, for the logger parity test.

:func:`report_everything` takes any object with ``clearml.Logger``'s signatures: a real
``clearml.Logger`` (ClearML offline mode) or clearml-relay's ``run.logger``. It uses seeded,
generated data only, so two runs report identical content. Nothing here imports ClearML: the
relay side runs in a process that has only the producer installed (plus numpy, Pillow,
matplotlib, pandas and, when present, plotly). ``SeriesInfo`` comes from the logger's own class.

Every call passes ``iteration=`` (where the method takes one) so that no event depends on the
logger's implicit iteration counter; a few calls pass their leading arguments positionally, as
users do.
"""

from __future__ import annotations

import io
import logging
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: Debug images stay small: the parity test compares pixels, not sizes.
IMAGE_SHAPE = (48, 64)  # height, width
SEED = 20240611
URL_IMAGE = "https://example.com/x.png"
URL_MEDIA = "https://example.com/clip.mp4"


def report_everything(logger: Any, workdir: Path) -> None:
    """Call every reporting method of ``logger`` at least once, then ``flush()``.

    ``workdir`` receives the files some calls report by path (PNG, JPEG, WAV, MP4-named bytes,
    CSV); they are left in place because ClearML copies ``local_path`` files later, in a pool.
    """
    import numpy as np

    workdir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    steps: list[Callable[[Any, Path, Any], None]] = [
        _scalars,
        _text,
        _images,
        _media,
        _matplotlib,
        _plotly,
        _tables,
        _histograms,
        _lines_and_scatter,
        _matrices,
    ]
    for step in steps:
        step(logger, workdir, rng)
    logger.flush()


def _scalars(logger: Any, workdir: Path, rng: Any) -> None:
    """``report_scalar`` (two series, three iterations) and ``report_single_value``."""
    for it in range(3):
        logger.report_scalar("loss", "train", float(rng.random()), it)
        logger.report_scalar(title="loss", series="val", value=round(1.0 / (it + 1), 6), iteration=it)
    logger.report_scalar("lr", "pg0", value=0.01, iteration=0)
    logger.report_single_value("parameters", 3_151_904)
    logger.report_single_value(name="mAP50", value=0.625)


def _text(logger: Any, workdir: Path, rng: Any) -> None:
    """``report_text``: default level, WARNING without console echo, a multi-line message."""
    logger.report_text("hello from report_everything")
    logger.report_text("disk almost full", level=logging.WARNING, print_console=False)
    logger.report_text("line one\nline two", logging.ERROR)


def _images(logger: Any, workdir: Path, rng: Any) -> None:
    """``report_image`` with each kind of source, and ``max_image_history``."""
    import numpy as np
    from PIL import Image

    h, w = IMAGE_SHAPE
    rgb = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    png = workdir / "image.png"
    jpg = workdir / "image.jpg"
    Image.fromarray(rgb).save(png)
    Image.fromarray(rgb[::-1]).save(jpg, quality=90)
    logger.report_image("files", "png", iteration=0, local_path=str(png))
    logger.report_image(title="files", series="jpeg", iteration=0, local_path=str(jpg))
    logger.report_image("arrays", "uint8 rgb", iteration=0, image=rgb)
    gray = rng.random((h, w), dtype=np.float32)
    logger.report_image("arrays", "float gray", iteration=0, image=gray)
    pil = Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8), mode="RGB")
    logger.report_image("arrays", "pil rgb", iteration=0, image=pil)
    logger.report_image("links", "remote", iteration=0, url=URL_IMAGE)
    for it in range(3):
        frame = np.full((h, w, 3), 40 * (it + 1), dtype=np.uint8)
        logger.report_image("history", "cycled", iteration=it, image=frame, max_image_history=2)


def _media(logger: Any, workdir: Path, rng: Any) -> None:
    """``report_media`` from a file (``.mp4``-named bytes, a WAV), a stream and a URL."""
    mp4 = workdir / "clip.mp4"
    mp4.write_bytes(bytes(rng.integers(0, 256, size=512, dtype="uint8")))
    wav = workdir / "tone.wav"
    _write_wav(wav, rng)
    logger.report_media("media", "video file", iteration=0, local_path=str(mp4))
    logger.report_media(title="media", series="audio file", iteration=0, local_path=str(wav))
    stream = io.BytesIO(b"plain text media\n" * 4)
    logger.report_media("media", "text stream", iteration=0, stream=stream, file_extension=".txt")
    logger.report_media("media", "remote", iteration=0, url=URL_MEDIA)


def _write_wav(path: Path, rng: Any) -> None:
    """A 0.05 s mono 8 kHz WAV of seeded noise."""
    samples = rng.integers(-2000, 2000, size=400, dtype="int16")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(samples.tobytes())


def _matplotlib(logger: Any, workdir: Path, rng: Any) -> None:
    """``report_matplotlib_figure``: interactive, 2x2 subplots, as image, and not interactive."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.figure import Figure

    x = list(range(10))
    fig = Figure(figsize=(4, 3))
    ax = fig.add_subplot()
    ax.plot(x, [v * v for v in x], label="square")
    ax.plot(x, [3 * v for v in x], label="linear")
    ax.set_xlabel("x")
    ax.legend()
    logger.report_matplotlib_figure("mpl", "two lines", fig, iteration=0)

    grid, axes = plt.subplots(2, 2, figsize=(4, 3))
    for i, sub in enumerate(axes.flat):
        sub.plot(x, rng.random(10).round(4).tolist(), label=f"s{i}")
    logger.report_matplotlib_figure(title="mpl", series="subplots", figure=grid, iteration=0)
    plt.close(grid)

    bars = Figure(figsize=(3, 2))
    bars.add_subplot().bar(["a", "b", "c"], [3, 1, 2])
    logger.report_matplotlib_figure("mpl", "as image", bars, iteration=0, report_image=True)

    flat = plt.figure(figsize=(3, 2))
    plt.plot(x, x, label="identity")
    logger.report_matplotlib_figure("mpl", "static", flat, iteration=0, report_interactive=False)
    plt.close(flat)


def _plotly(logger: Any, workdir: Path, rng: Any) -> None:
    """``report_plotly`` with a plain dict and, when plotly imports, a ``go.Figure``."""
    figure = {
        "data": [{"type": "scatter", "x": [0, 1, 2], "y": [2, 0, 1], "name": "dict trace"}],
        "layout": {"title": "dict figure", "xaxis": {"title": "x"}},
    }
    logger.report_plotly("plotly", "dict", figure, iteration=0)
    try:
        import plotly.graph_objects as go
    except ImportError:
        return
    fig = go.Figure(data=[go.Bar(x=["a", "b", "c"], y=[1, 3, 2], name="bars")])
    fig.update_layout(title="graph object")
    logger.report_plotly(title="plotly", series="graph object", figure=fig, iteration=0)


def _tables(logger: Any, workdir: Path, rng: Any) -> None:
    """``report_table`` from DataFrames (string and range index), a list of rows and a CSV."""
    import pandas as pd

    df = pd.DataFrame(
        {
            "count": [3, 1, 4, 1, 5],
            "score": rng.random(5).round(4).tolist(),
            "name": ["ant", "bee", "cat", "dog", "eel"],
        },
        index=pd.Index([f"row{i}" for i in range(5)], name="id"),
    )
    logger.report_table("tables", "indexed frame", iteration=0, table_plot=df)
    plain = pd.DataFrame({"a": list(range(4)), "b": [0.5, 1.5, 2.5, 3.5]})
    logger.report_table(title="tables", series="range frame", iteration=0, table_plot=plain)
    rows = [["name", "value"], ["alpha", 1], ["beta", 2]]
    logger.report_table("tables", "rows", iteration=0, table_plot=rows)
    csv = workdir / "table.csv"
    csv.write_text("city,population\nParis,2100000\nLyon,520000\n")
    logger.report_table("tables", "csv", iteration=0, csv=str(csv), extra_layout={"height": 600})


def _histograms(logger: Any, workdir: Path, rng: Any) -> None:
    """``report_histogram`` (a list, a 2-D array for grouped bars) and ``report_vector``."""
    logger.report_histogram(
        "hist",
        "stacked",
        values=[3, 5, 2, 7],
        iteration=0,
        labels=["counts"],
        xlabels=["a", "b", "c", "d"],
        xaxis="letter",
        yaxis="count",
        mode="stack",
    )
    grouped = rng.integers(0, 10, size=(2, 4))  # one row per bar series
    logger.report_histogram(
        "hist", "grouped", grouped, iteration=0, labels=["left", "right"], xlabels=list("abcd"), mode="group"
    )
    logger.report_vector(title="vector", series="v", values=[0.5, 1.5, 1.0], iteration=0, xaxis="i")


def _lines_and_scatter(logger: Any, workdir: Path, rng: Any) -> None:
    """``report_line_plot``, ``report_scatter2d`` (tuples, array) and ``report_scatter3d``."""
    import numpy as np

    series_info = type(logger).SeriesInfo
    first = series_info(name="first", data=np.array([[0, 1], [1, 3], [2, 2]]), labels=["p0", "p1", "p2"])
    second = series_info(name="second", data=np.array([[0, 2.5], [1, 0.5], [2, 1.0]]))
    logger.report_line_plot("lines", [first, second], xaxis="x", yaxis="y", mode="lines+markers", iteration=0)
    logger.report_scatter2d(
        "scatter", "tuples", [(0, 1), (1, 0), (2, 2)], iteration=0, labels=["a", "b", "c"], mode="markers"
    )
    points = rng.random((5, 2)).round(4)
    logger.report_scatter2d(
        title="scatter", series="array", scatter=points, iteration=0, xaxis="u", yaxis="v"
    )
    cloud = rng.random((6, 3)).round(4)
    logger.report_scatter3d("scatter3d", "cloud", cloud, iteration=0, xaxis="x", yaxis="y", zaxis="z")


def _matrices(logger: Any, workdir: Path, rng: Any) -> None:
    """``report_confusion_matrix``, ``report_matrix`` and ``report_surface``."""
    confusion = rng.integers(0, 20, size=(3, 3))
    logger.report_confusion_matrix(
        "confusion",
        "classes",
        confusion,
        iteration=0,
        xaxis="predicted",
        yaxis="actual",
        xlabels=["cat", "dog", "eel"],
        ylabels=["cat", "dog", "eel"],
        yaxis_reversed=True,
    )
    logger.report_matrix(title="matrix", series="plain", matrix=rng.random((3, 4)).round(4), iteration=0)
    surface = rng.random((5, 5)).round(4)
    logger.report_surface(
        "surface", "hill", surface, iteration=0, xaxis="x", yaxis="y", zaxis="z", camera=(1.0, 1.5, 2.0)
    )
