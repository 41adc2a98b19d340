"""The Ultralytics plots a collector draws for a training with ``plots="collector"``.

The trainer sends the data behind each plot (``producer.wire.reports.Drawing``); this module
draws it with matplotlib as Ultralytics 8.x draws it (sizes, dpi, layout, colours, titles, the
smoothing of its lines), so that the task's plots look as the trainer's would have: ``results.png``
(``plot_results``), ``labels.jpg`` (``plot_labels``), the PR and F1/P/R curves (``plot_pr_curve``,
``plot_mc_curve``) and the confusion matrices (``ConfusionMatrix.plot``). No pyplot: each figure
is its own ``Figure`` on the Agg canvas; matplotlib's global state (rc parameters) is not
thread-safe, so one drawing at a time.

A drawing's arrays were checked against their dtype and byte size at decode; their shapes are
checked here, and a bad one raises :class:`ValueError` naming it (the replay skips that event).
"""

from __future__ import annotations

import csv
import io
import threading
from collections.abc import Sequence
from typing import Any, Final

from producer.wire import reports

#: One drawing at a time (matplotlib's rc parameters are process-global).
LOCK: Final = threading.Lock()
#: Ultralytics' colour palette (``ultralytics.utils.plotting.Colors``).
PALETTE: Final = (
    "#042AFF", "#0BDBEB", "#F3F3F3", "#00DFB7", "#111F68", "#FF6FDD", "#FF444F", "#CCED00", "#00F344",
    "#BD00FF", "#00B4FF", "#DD00BA", "#00FFFF", "#26C000", "#01FFB3", "#7D24FF", "#7B0068", "#FF1B6C",
    "#FC6D2F", "#A2FF0B",
)  # fmt: skip
_LEGEND_CLASSES: Final = 21  # Ultralytics names each class in a curve's legend below this many


def draw(call: reports.Drawing, array: Any) -> tuple[bytes, str]:
    """The image of ``call`` as file bytes and their extension; ``array`` decodes a wire array."""
    from matplotlib import rc_context  # noqa: PLC0415 - only a collector that draws needs it

    with LOCK, rc_context({"font.size": 11}):
        if isinstance(call, reports.YoloResults):
            return _results(call.csv), ".png"
        if isinstance(call, reports.YoloLabels):
            return _labels(array(call.boxes), array(call.classes), call.names), ".jpg"
        if isinstance(call, reports.YoloCurve):
            ap = None if call.ap is None else array(call.ap)
            return _curve(
                array(call.x), array(call.y), call.names, ap, xlabel=call.xlabel, ylabel=call.ylabel
            ), ".png"
        return _confusion(array(call.matrix), call.names, call.normalize, call.background), ".png"


def _figure(**kwargs: Any) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    figure = Figure(**kwargs)
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Any, dpi: int, fmt: str = "png") -> bytes:
    out = io.BytesIO()
    figure.savefig(out, dpi=dpi, format=fmt)
    return out.getvalue()


def _gaussian(y: Any, sigma: float = 3, truncate: float = 4.0) -> Any:
    """Ultralytics' ``_gaussian_filter1d`` (scipy's, boundary ``reflect``)."""
    import numpy as np  # noqa: PLC0415

    radius = int(truncate * sigma + 0.5)
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    return np.convolve(
        np.pad(np.asarray(y, dtype=float), radius, mode="symmetric"), kernel / kernel.sum(), "valid"
    )


def _smooth(y: Any, f: float) -> Any:
    """Ultralytics' ``smooth``: a box filter a fraction ``f`` of the length wide."""
    import numpy as np  # noqa: PLC0415

    nf = round(len(y) * f * 2) // 2 + 1
    nf += 1 - nf % 2  # odd, so that the result is as long as y (Ultralytics' 1000 points give 101)
    pad = np.ones(nf // 2)
    return np.convolve(np.concatenate((pad * y[0], y, pad * y[-1])), np.ones(nf) / nf, mode="valid")


def _results(text: str) -> bytes:
    import numpy as np  # noqa: PLC0415

    rows = [[cell.strip() for cell in row] for row in csv.reader(io.StringIO(text)) if row]
    if len(rows) < 2:
        raise ValueError("results csv has no rows")
    header, body = rows[0], rows[1:]
    loss = [c for c in header if "loss" in c]
    metric = [c for c in header if "loss" not in c and "metric" in c]
    loss_mid, metric_mid = len(loss) // 2, (len(metric) + 1) // 2
    columns = loss[:loss_mid] + metric[:metric_mid] + loss[loss_mid:] + metric[metric_mid:]
    if not columns:
        raise ValueError(f"results csv has no loss or metric columns: {header}")
    values = np.array([[float(cell or "nan") for cell in row] for row in body], dtype=float)
    if values.shape[1] != len(header):
        raise ValueError(f"results csv rows have {values.shape[1]} cells, its header {len(header)}")
    figure = _figure(figsize=(len(columns) + 2, 6), tight_layout=True)
    axes = figure.subplots(2, (len(columns) + 1) // 2).ravel()
    axes[-1].set_visible(len(columns) % 2 == 0)
    x = values[:, 0]
    for ax, column in zip(axes, columns, strict=False):
        y = values[:, header.index(column)]
        ax.plot(x, y, marker=".", label="results", linewidth=2, markersize=8)
        ax.plot(x, _gaussian(y), ":", label="smooth", linewidth=2)
        ax.set_title(column, fontsize=12)
    axes[1].legend()
    return _save(figure, 200)


def _labels(boxes: Any, classes: Any, names: Sequence[str]) -> bytes:
    import numpy as np  # noqa: PLC0415
    from matplotlib.colors import LinearSegmentedColormap  # noqa: PLC0415
    from PIL import Image, ImageDraw  # noqa: PLC0415 - matplotlib's own dependency

    if boxes.ndim != 2 or boxes.shape[1] != 4 or classes.shape != (len(boxes),) or not len(boxes):
        raise ValueError(
            f"labels need boxes of shape (N, 4) and N classes, got {boxes.shape} and {classes.shape}"
        )
    classes = classes.astype(int)
    nc = int(classes.max() + 1)
    boxes = boxes[:1_000_000].astype(float)
    blue = LinearSegmentedColormap.from_list("white_blue", ["white", "blue"])
    figure = _figure(figsize=(8, 8), tight_layout=True)
    ax = figure.subplots(2, 2).ravel()
    counts = ax[0].hist(classes, bins=np.linspace(0, nc, nc + 1) - 0.5, rwidth=0.8)
    for i in range(nc):
        counts[2].patches[i].set_color(PALETTE[i % len(PALETTE)])
    ax[0].set_ylabel("instances")
    if names and len(names) < 30:
        ax[0].set_xticks(range(len(names)))
        ax[0].set_xticklabels(list(names), rotation=90, fontsize=10)
        ax[0].bar_label(counts[2])
    else:
        ax[0].set_xlabel("classes")
    corners = np.column_stack([0.5 - boxes[:, 2:4] / 2, 0.5 + boxes[:, 2:4] / 2]) * 1000
    canvas = Image.fromarray(np.full((1000, 1000, 3), 255, dtype=np.uint8))
    pen = ImageDraw.Draw(canvas)
    for cls, box in zip(classes[:500], corners[:500], strict=False):
        pen.rectangle(box.tolist(), width=1, outline=PALETTE[cls % len(PALETTE)])
    ax[1].imshow(canvas)
    ax[1].axis("off")
    ax[2].hist2d(boxes[:, 0], boxes[:, 1], bins=50, cmap=blue)
    ax[2].set_xlabel("x")
    ax[2].set_ylabel("y")
    ax[3].hist2d(boxes[:, 2], boxes[:, 3], bins=50, cmap=blue)
    ax[3].set_xlabel("width")
    ax[3].set_ylabel("height")
    for a in ax:
        for side in ("top", "right", "left", "bottom"):
            a.spines[side].set_visible(False)
    return _save(figure, 200, "jpg")


def _curve(x: Any, y: Any, names: Sequence[str], ap: Any, *, xlabel: str, ylabel: str) -> bytes:
    if x.ndim != 1 or y.ndim != 2 or y.shape[1] != x.shape[0] or not len(y):
        raise ValueError(f"a curve needs x of shape (K,) and y of shape (C, K), got {x.shape} and {y.shape}")
    if ap is not None and ap.shape != (len(y),):
        raise ValueError(f"a PR curve needs one AP per class ({len(y)}), got shape {ap.shape}")
    figure = _figure(figsize=(9, 6), tight_layout=True)
    ax = figure.subplots(1, 1)
    legend = 0 < len(names) < _LEGEND_CLASSES and len(names) == len(y)
    if legend:
        for i, row in enumerate(y):
            ax.plot(x, row, linewidth=1, label=f"{names[i]} {ap[i]:.3f}" if ap is not None else names[i])
    else:
        ax.plot(x, y.T, linewidth=1, color="gray")
    if ap is not None:  # precision-recall
        ax.plot(x, y.mean(0), linewidth=3, color="blue", label=f"all classes {ap.mean():.3f} mAP@0.5")
        title = "Precision-Recall Curve"
    else:
        mean = _smooth(y.mean(0), 0.1)
        label = f"all classes {mean.max():.2f} at {x[mean.argmax()]:.3f}"
        ax.plot(x, mean, linewidth=3, color="blue", label=label)
        title = f"{ylabel}-Confidence Curve"
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(bbox_to_anchor=(1.04, 1), loc="upper left")
    ax.set_title(title)
    return _save(figure, 250)


def _confusion(matrix: Any, names: Sequence[str], normalize: bool, background: bool) -> bytes:
    import numpy as np  # noqa: PLC0415

    nc = len(names) + (1 if background else 0)
    if matrix.shape != (nc, nc):
        raise ValueError(f"a confusion matrix of {nc} labels needs shape ({nc}, {nc}), got {matrix.shape}")
    array = matrix.astype(float) / ((matrix.sum(0).reshape(1, -1) + 1e-9) if normalize else 1)
    array[array < 0.005] = np.nan
    classes = len(names)
    if classes >= 100:  # every k-th class (and the background), as Ultralytics draws a large one
        step = max(2, classes // 60)
        keep = np.r_[0:classes:step, classes : len(array)]
        names, array = list(names)[::step], array[np.ix_(keep, keep)]
        nc = len(names) + (1 if background else 0)
    labels = [*names, "background"] if background else list(names)
    figure = _figure(figsize=(12, 9))
    ax = figure.subplots(1, 1)
    image = ax.imshow(array, cmap="Blues", vmin=0.0, interpolation="none")
    if nc < 30:
        threshold = 0.45 * (1 if normalize else np.nanmax(array) if np.isfinite(array).any() else 1)
        for (i, j), value in np.ndenumerate(array):
            if not np.isnan(value):
                text = f"{value:.2f}" if normalize else f"{int(value)}"
                ax.text(j, i, text, ha="center", va="center", fontsize=10,
                        color="white" if value > threshold else "black")  # fmt: skip
    colorbar = figure.colorbar(image, ax=ax, fraction=0.046, pad=0.05)
    size = max(6, 12 - 0.1 * nc)
    ax.set_xlabel("True", fontsize=size, labelpad=10)
    ax.set_ylabel("Predicted", fontsize=size, labelpad=10)
    ax.set_title("Confusion Matrix" + " Normalized" * normalize, fontsize=size, pad=20)
    ticks = np.arange(nc)
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    if nc < 99:
        ax.set_xticklabels(labels, fontsize=max(6, 15 - 0.1 * nc), rotation=90, ha="center")
        ax.set_yticklabels(labels, fontsize=max(6, 15 - 0.1 * nc))
    for side in ("left", "right", "bottom", "top"):
        ax.spines[side].set_visible(False)
        colorbar.ax.spines[side].set_visible(False)
    colorbar.ax.spines["outline"].set_visible(False)
    figure.subplots_adjust(left=0, right=0.84, top=0.94, bottom=max(0.1, 0.25 - 0.001 * nc))
    return _save(figure, 250)
