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
#: Which of the metrics' parts a curve name's suffix belongs to (for its classes' order).
_PARTS: Final = {"(B)": "box", "(M)": "seg", "(P)": "pose"}
#: The file names Ultralytics gives the curves: a prefix per part, a name per curve.
_PREFIXES: Final = {"(B)": "Box", "(M)": "Mask", "(P)": "Pose"}
_CURVE_FILES: Final = {
    "Precision-Recall": "PR", "F1-Confidence": "F1", "Precision-Confidence": "P", "Recall-Confidence": "R",
}  # fmt: skip
#: What ClearML names a matplotlib figure reported with series="": the series of every plot PNG.
PLOT_SERIES: Final = "plot image"


def report(logger: Logger, metrics: Any) -> None:
    """Report the curves, the confusion matrix and the per-class table of ``metrics``."""
    names = _names(getattr(metrics, "names", None))
    for title, curve in zip(metrics.curves, metrics.curves_results, strict=False):
        report_curve(logger, str(title), curve, _classes(metrics, str(title)), names)
    matrix = getattr(metrics, "confusion_matrix", None)
    if matrix is not None:
        report_confusion(logger, matrix)
    rows = metrics.summary()
    if rows:
        header = list(rows[0])
        logger.report_table(
            TABLE_TITLE, TABLE_SERIES, 0, table_plot=[header, *([r.get(k) for k in header] for r in rows)]
        )


def report_curve(
    logger: Logger, title: str, curve: Sequence[Any], classes: Sequence[int], names: dict[int, str]
) -> None:
    """One curve (``[x, y per class, xlabel, ylabel]``) as a line plot: each class, and all."""
    import numpy as np  # noqa: PLC0415 - the training's own dependency

    x, y, xlabel, ylabel = curve
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if y.ndim != 2 or y.shape[1] != x.shape[0] or not len(y):
        return
    series = []
    if len(y) == len(classes) and len(y) <= MAX_CLASSES:
        series = [
            SeriesInfo(names.get(c, str(c)), np.column_stack([x, row]))
            for c, row in zip(classes, y, strict=True)
        ]
    mean = y.mean(0)
    if not title.startswith("Precision-Recall"):
        from ultralytics.utils.metrics import smooth  # noqa: PLC0415 - as Ultralytics draws it

        mean = smooth(mean, 0.1)
    series.append(SeriesInfo(ALL_CLASSES, np.column_stack([x, mean])))
    logger.report_line_plot(title, series, xaxis=str(xlabel), yaxis=str(ylabel), mode="lines", iteration=0)


def report_confusion(logger: Logger, confusion: Any) -> None:
    """The validator's confusion matrix, as counted and column-normalized."""
    import numpy as np  # noqa: PLC0415

    counts = np.asarray(confusion.matrix, dtype=np.float64)
    labels = list(_names(getattr(confusion, "names", None)).values())
    if getattr(confusion, "task", "detect") not in ("classify", "semantic"):
        labels.append("background")
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


def draw_final(logger: Logger, metrics: Any, *, curves: bool, confusion: bool) -> None:
    """``plots="collector"``: the final validation's curves and confusion matrices, to be drawn."""
    import numpy as np  # noqa: PLC0415

    names = _names(getattr(metrics, "names", None))
    for title, curve in zip(metrics.curves, metrics.curves_results, strict=False) if curves else ():
        x, y, xlabel, ylabel = curve
        classes = _classes(metrics, str(title))
        y = np.asarray(y, dtype=np.float64)
        pr = str(title).startswith("Precision-Recall")
        part = _part(metrics, str(title))
        ap = np.asarray(part.all_ap, dtype=np.float64)[:, 0] if pr and part is not None else None
        call = reports.YoloCurve(
            x=snapshot.array("x", np.asarray(x, dtype=np.float64), dims=(1,)),
            y=snapshot.array("y", y, dims=(2,)),
            names=[names.get(c, str(c)) for c in classes] if len(classes) == len(y) else [],
            xlabel=str(xlabel),
            ylabel=str(ylabel),
            ap=None if ap is None or ap.shape != (len(y),) else snapshot.array("ap", ap, dims=(1,)),
        )
        report_call(logger, _curve_file(str(title)), PLOT_SERIES, 0, call)
    matrix = getattr(metrics, "confusion_matrix", None)
    if confusion and matrix is not None:
        labels = list(_names(getattr(matrix, "names", None)).values())
        background = getattr(matrix, "task", "detect") not in ("classify", "semantic")
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


def _curve_file(title: str) -> str:
    """``Precision-Recall(B)`` -> ``BoxPR_curve``: the stem Ultralytics saves the curve under."""
    base, _, suffix = title.partition("(")
    prefix, name = _PREFIXES.get(f"({suffix}"), _CURVE_FILES.get(base)
    return f"{prefix}{name}_curve" if prefix and name else title


def _part(metrics: Any, title: str) -> Any:
    part = next((getattr(metrics, p, None) for suffix, p in _PARTS.items() if title.endswith(suffix)), None)
    return part if part is not None else getattr(metrics, "box", None)


def _names(names: Any) -> dict[int, str]:
    if isinstance(names, dict):
        return {int(k): str(v) for k, v in names.items()}
    if isinstance(names, list | tuple):
        return {i: str(v) for i, v in enumerate(names)}
    return {}


def _classes(metrics: Any, title: str) -> list[int]:
    """The class of each row of a curve: its part's ``ap_class_index`` (classes with labels)."""
    index = getattr(_part(metrics, title), "ap_class_index", None)
    return [int(c) for c in index] if index is not None else []
