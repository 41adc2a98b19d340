"""The final validation's raw results as interactive ClearML plots, beside Ultralytics' PNGs.

Ultralytics draws its curves and confusion matrices into PNG files (which the built-in callback
uploads as static images, and so do the hooks, for parity). The validator holds the data behind
them; the worker sends it through ``run.logger`` as plots ClearML renders itself:

- every curve of ``metrics.curves`` / ``metrics.curves_results`` (``Precision-Recall(B)``,
  ``F1-Confidence(B)``, ``Precision-Confidence(B)``, ``Recall-Confidence(B)``, and the ``(M)``
  mask or ``(P)`` pose curves of segment and pose trainings) as one line plot titled by the
  curve's name: one series per class and ``all classes``, the curve Ultralytics draws thick
  (the mean over classes; for the confidence curves smoothed as Ultralytics smooths it);
- the confusion matrix (``Confusion Matrix``, series ``Counts`` and ``Normalized``, columns
  normalized as in Ultralytics' plot), labelled with the class names (and ``background`` where
  the task has one), predicted classes in rows and true classes in columns as in the validator;
- ``metrics.summary()`` (per-class precision, recall, mAP; top-1/top-5 for classify) as a
  table, ``Per-Class Metrics``.

All at iteration 0, as the PNG plots. Larger than :data:`MAX_CLASSES` classes, a curve keeps its
``all classes`` series only and the matrix is left to its PNG (a ClearML plot of that size is
megabytes of JSON).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from producer.logger import SeriesInfo, snapshot
from producer.logger.base import report_call
from producer.logger.logger import Logger
from producer.wire import reports

log = logging.getLogger(__name__)

ALL_CLASSES: Final = "all classes"
CONFUSION_TITLE: Final = "Confusion Matrix"
CONFUSION_SERIES: Final = ("Counts", "Normalized")
TABLE_TITLE: Final = "Per-Class Metrics"
TABLE_SERIES: Final = "final validation"
MAX_CLASSES: Final = 256
#: A curve name's suffix: the metrics' part that holds its classes, and the prefix of its PNG.
_PARTS: Final = {"(B)": ("box", "Box"), "(M)": ("seg", "Mask"), "(P)": ("pose", "Pose")}
#: The file names Ultralytics gives the curves, after the prefix.
_CURVE_FILES: Final = {
    "Precision-Recall": "PR", "F1-Confidence": "F1", "Precision-Confidence": "P", "Recall-Confidence": "R",
}  # fmt: skip
#: What ClearML names a matplotlib figure reported with series="": the series of every plot PNG.
PLOT_SERIES: Final = "plot image"


@dataclass(frozen=True)
class Curve:
    """One curve of the final validation: ``y`` holds a row per class with labels (``names``)."""

    title: str
    x: Any
    y: Any
    xlabel: str
    ylabel: str
    names: list[str]  # one per row of y; empty when the rows cannot be named
    ap: Any  # each row's AP@0.5 for a precision-recall curve, else None

    @property
    def pr(self) -> bool:
        return self.title.startswith("Precision-Recall")

    @property
    def file(self) -> str:
        """``Precision-Recall(B)`` -> ``BoxPR_curve``: the stem Ultralytics saves the curve under."""
        base, _, suffix = self.title.partition("(")
        part, name = _PARTS.get(f"({suffix}"), _CURVE_FILES.get(base)
        return f"{part[1]}{name}_curve" if part and name else self.title


def curves(metrics: Any) -> list[Curve]:
    """The curves of ``metrics.curves_results``, each with its classes' names (malformed ones left out)."""
    import numpy as np  # noqa: PLC0415 - the training's own dependency

    names = _names(getattr(metrics, "names", None))
    out = []
    for title, (xs, ys, xlabel, ylabel) in zip(metrics.curves, metrics.curves_results, strict=False):
        x, y = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
        if y.ndim != 2 or y.shape[1] != x.shape[0] or not len(y):
            continue
        part = _part(metrics, str(title))
        index = getattr(part, "ap_class_index", None)
        classes = [int(c) for c in index] if index is not None else []
        ap = None
        if str(title).startswith("Precision-Recall") and part is not None:
            ap = np.asarray(part.all_ap, dtype=np.float64)[:, 0]
        out.append(
            Curve(
                title=str(title),
                x=x,
                y=y,
                xlabel=str(xlabel),
                ylabel=str(ylabel),
                names=[names.get(c, str(c)) for c in classes] if len(classes) == len(y) else [],
                ap=ap if ap is not None and ap.shape == (len(y),) else None,
            )
        )
    return out


def confusion_labels(confusion: Any) -> tuple[list[str], bool]:
    """A confusion matrix's class names and whether it has a ``background`` row and column."""
    background = getattr(confusion, "task", "detect") not in ("classify", "semantic")
    return list(_names(getattr(confusion, "names", None)).values()), background


def report(logger: Logger, metrics: Any) -> None:
    """Report the curves, the confusion matrix and the per-class table of ``metrics``."""
    for curve in curves(metrics):
        report_curve(logger, curve)
    matrix = getattr(metrics, "confusion_matrix", None)
    if matrix is not None:
        report_confusion(logger, matrix)
    rows = metrics.summary()
    if rows:
        header = list(rows[0])
        logger.report_table(
            TABLE_TITLE, TABLE_SERIES, 0, table_plot=[header, *([r.get(k) for k in header] for r in rows)]
        )


def report_curve(logger: Logger, curve: Curve) -> None:
    """One curve as a line plot: each class (up to :data:`MAX_CLASSES`), and all classes."""
    import numpy as np  # noqa: PLC0415

    x, series = curve.x, []
    if curve.names and len(curve.names) <= MAX_CLASSES:
        series = [
            SeriesInfo(n, np.column_stack([x, row])) for n, row in zip(curve.names, curve.y, strict=True)
        ]
    mean = curve.y.mean(0)
    if not curve.pr:
        from ultralytics.utils.metrics import smooth  # noqa: PLC0415 - as Ultralytics draws it

        mean = smooth(mean, 0.1)
    series.append(SeriesInfo(ALL_CLASSES, np.column_stack([x, mean])))
    logger.report_line_plot(
        curve.title, series, xaxis=curve.xlabel, yaxis=curve.ylabel, mode="lines", iteration=0
    )


def report_confusion(logger: Logger, confusion: Any) -> None:
    """The validator's confusion matrix, as counted and column-normalized."""
    import numpy as np  # noqa: PLC0415

    counts = np.asarray(confusion.matrix, dtype=np.float64)
    names, background = confusion_labels(confusion)
    labels = [*names, "background"] if background else names
    if counts.ndim != 2 or counts.shape != (len(labels), len(labels)):
        log.info(
            "clearml-relay: confusion matrix of shape %s and %d labels: left to its PNG",
            counts.shape,
            len(labels),
        )
        return
    if len(labels) > MAX_CLASSES:
        return
    normalized = counts / (counts.sum(0).reshape(1, -1) + 1e-9)
    for series, matrix in zip(CONFUSION_SERIES, (counts, normalized), strict=True):
        logger.report_confusion_matrix(
            CONFUSION_TITLE, series, matrix, iteration=0, xaxis="True", yaxis="Predicted",
            xlabels=labels, ylabels=labels, yaxis_reversed=True,
        )  # fmt: skip


def draw_final(logger: Logger, metrics: Any, *, with_curves: bool, confusion: bool) -> None:
    """``plots="collector"``: the final validation's curves and confusion matrices, to be drawn."""
    import numpy as np  # noqa: PLC0415

    for curve in curves(metrics) if with_curves else ():
        call = reports.YoloCurve(
            x=snapshot.array("x", curve.x, dims=(1,)),
            y=snapshot.array("y", curve.y, dims=(2,)),
            names=curve.names,
            xlabel=curve.xlabel,
            ylabel=curve.ylabel,
            ap=None if curve.ap is None else snapshot.array("ap", curve.ap, dims=(1,)),
        )
        report_call(logger, curve.file, PLOT_SERIES, 0, call)
    matrix = getattr(metrics, "confusion_matrix", None)
    if confusion and matrix is not None:
        labels, background = confusion_labels(matrix)
        counts = snapshot.array("matrix", np.asarray(matrix.matrix, dtype=np.float64), dims=(2,))
        for normalize in (True, False):  # Ultralytics' order
            drawing = reports.YoloConfusion(
                matrix=counts, names=labels, normalize=normalize, background=background
            )
            stem = "confusion_matrix_normalized" if normalize else "confusion_matrix"
            report_call(logger, stem, PLOT_SERIES, 0, drawing)


def draw_labels(logger: Logger, labels: Sequence[dict[str, Any]], names: dict[int, str]) -> None:
    """``plots="collector"``: the training set's boxes and classes, for ``labels.jpg``."""
    import numpy as np  # noqa: PLC0415

    boxes = np.concatenate([label["bboxes"] for label in labels], 0).astype(np.float32).reshape(-1, 4)
    classes = np.concatenate([label["cls"] for label in labels], 0).astype(np.int32).reshape(-1)
    if not len(boxes):
        return
    call = reports.YoloLabels(
        boxes=snapshot.array("boxes", boxes, dims=(2,)),
        classes=snapshot.array("classes", classes, dims=(1,)),
        names=[str(names[k]) for k in sorted(names)],
    )
    report_call(logger, "labels", PLOT_SERIES, 0, call)


def draw_results(logger: Logger, csv: Path) -> None:
    """``plots="collector"``: ``results.csv`` as it is, for ``results.png``."""
    report_call(logger, "results", PLOT_SERIES, 0, reports.YoloResults(csv=csv.read_text(encoding="utf-8")))


def _part(metrics: Any, title: str) -> Any:
    part = next(
        (getattr(metrics, p, None) for suffix, (p, _) in _PARTS.items() if title.endswith(suffix)), None
    )
    return part if part is not None else getattr(metrics, "box", None)


def _names(names: Any) -> dict[int, str]:
    if isinstance(names, dict):
        return {int(k): str(v) for k, v in names.items()}
    if isinstance(names, list | tuple):
        return {i: str(v) for i, v in enumerate(names)}
    return {}
