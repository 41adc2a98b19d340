"""The collector's drawings (``plots="collector"``) are Ultralytics' own plots, pixel for pixel.

Each plot is drawn twice from the same data: by the Ultralytics function the trainer would have
called, and by :mod:`collector.backends.clearml.drawings` from the wire call the hooks send. The
decoded pixels must be equal, so an Ultralytics release that draws differently fails here.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from collector.backends.clearml import drawings
from producer.logger import snapshot
from producer.wire import reports

NAMES = {0: "red", 1: "green", 2: "blue"}
RNG = np.random.default_rng(7)
X = np.linspace(0, 1, 1000)


def _decode(array: reports.Array) -> Any:
    return np.frombuffer(array.data, dtype=array.dtype).reshape(array.shape)


def _pixels(data: bytes | Path) -> Any:
    with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as image:
        return np.asarray(image.convert("RGB"))


def _assert_same(ultralytics_file: Path, call: reports.Drawing) -> None:
    data, ext = drawings.draw(call, _decode)
    assert ext == ultralytics_file.suffix
    ours, theirs = _pixels(data), _pixels(ultralytics_file)
    assert ours.shape == theirs.shape
    assert np.array_equal(ours, theirs), (
        f"{ultralytics_file.name}: {np.abs(ours - theirs.astype(int)).mean():.3f}"
    )


@pytest.mark.parametrize("classes", [3, 25])  # a legend of classes, and grey lines without one
def test_curves(tmp_path: Path, classes: int) -> None:
    from ultralytics.utils.metrics import plot_mc_curve, plot_pr_curve

    names = {i: NAMES.get(i, f"class{i}") for i in range(classes)}
    y = np.clip(
        1 - X[None, :] ** RNG.uniform(1, 4, (classes, 1)) + RNG.normal(0, 0.02, (classes, 1000)), 0, 1
    )
    ap = np.repeat(RNG.uniform(0.3, 0.9, (classes, 1)), 10, axis=1)
    plot_pr_curve(X, y, ap, tmp_path / "PR_curve.png", names)
    _assert_same(
        tmp_path / "PR_curve.png",
        reports.YoloCurve(x=snapshot.array("x", X), y=snapshot.array("y", y), names=list(names.values()),
                          xlabel="Recall", ylabel="Precision", ap=snapshot.array("ap", ap[:, 0])),
    )  # fmt: skip
    plot_mc_curve(X, y, tmp_path / "F1_curve.png", names, ylabel="F1")
    _assert_same(
        tmp_path / "F1_curve.png",
        reports.YoloCurve(x=snapshot.array("x", X), y=snapshot.array("y", y), names=list(names.values()),
                          xlabel="Confidence", ylabel="F1"),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("task", "normalize", "classes"),
    [
        ("detect", True, 3),
        ("detect", False, 3),
        ("classify", False, 3),
        ("detect", True, 40),
        ("detect", True, 130),
    ],
)
def test_confusion_matrices(tmp_path: Path, task: str, normalize: bool, classes: int) -> None:
    """Small (every cell annotated), middling (tick labels only) and large (every k-th class)."""
    from ultralytics.utils.metrics import ConfusionMatrix

    names = {i: NAMES.get(i, f"class{i}") for i in range(classes)}
    matrix = ConfusionMatrix(names=names, task=task)
    size = classes + (task != "classify")
    matrix.matrix = RNG.integers(0, 20, (size, size)).astype(float)
    matrix.plot(normalize=normalize, save_dir=tmp_path)
    stem = "confusion_matrix_normalized" if normalize else "confusion_matrix"
    _assert_same(
        tmp_path / f"{stem}.png",
        reports.YoloConfusion(matrix=snapshot.array("m", matrix.matrix), names=list(names.values()),
                              normalize=normalize, background=task != "classify"),
    )  # fmt: skip


def test_labels(tmp_path: Path) -> None:
    from ultralytics.utils.plotting import plot_labels

    boxes = RNG.uniform(0.05, 0.6, (700, 4)).astype(np.float32)
    classes = RNG.integers(0, 3, 700)
    plot_labels(boxes, classes, names=NAMES, save_dir=tmp_path)
    _assert_same(
        tmp_path / "labels.jpg",
        reports.YoloLabels(boxes=snapshot.array("b", boxes), names=list(NAMES.values()),
                           classes=snapshot.array("c", classes.astype(np.int32))),
    )  # fmt: skip


def test_results(tmp_path: Path) -> None:
    from ultralytics.utils.plotting import plot_results

    columns = ["train/box_loss", "train/cls_loss", "metrics/precision(B)", "metrics/mAP50(B)",
               "val/box_loss", "val/cls_loss", "lr/pg0"]  # fmt: skip
    rows = [[e, 10.0 * e, *RNG.uniform(0, 1, len(columns))] for e in range(1, 9)]
    text = ",".join(["epoch", "time", *columns]) + "\n"
    text += "".join(",".join(f"{v:.6g}" for v in row) + "\n" for row in rows)
    (tmp_path / "results.csv").write_text(text)
    plot_results(file=tmp_path / "results.csv")
    _assert_same(tmp_path / "results.png", reports.YoloResults(csv=text))


@pytest.mark.parametrize(
    ("call", "problem"),
    [
        (reports.YoloCurve(x=snapshot.array("x", X), y=snapshot.array("y", np.ones((2, 10))), names=[],
                           xlabel="a", ylabel="b"), r"x of shape \(K,\) and y of shape \(C, K\)"),
        (reports.YoloConfusion(matrix=snapshot.array("m", np.eye(2)), names=["a", "b"]),
         r"needs shape \(3, 3\)"),
        (reports.YoloLabels(boxes=snapshot.array("b", np.ones((2, 3))), classes=snapshot.array("c", [0, 1]),
                            names=["a"]), r"boxes of shape \(N, 4\)"),
        (reports.YoloResults(csv="epoch,time\n"), "no rows"),
        (reports.YoloResults(csv="epoch,time,x\n1,2,3\n"), "no loss or metric columns"),
    ],
)  # fmt: skip
def test_a_drawing_of_bad_data_says_what_is_wrong(call: reports.Drawing, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        drawings.draw(call, _decode)
