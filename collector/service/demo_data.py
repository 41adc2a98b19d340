"""Tiny synthetic YOLO datasets (demo and tests): coloured rectangles on noise, made in milliseconds.

Each task gets the layout Ultralytics expects, with absolute paths so that a training run from
any working directory (or a subprocess) finds it:

- ``detect``, ``segment``, ``pose``, ``obb``: ``images/{train,val}/*.jpg`` with matching
  ``labels/{train,val}/*.txt`` and a ``data.yaml``; the labels are boxes (detect), rectangle
  polygons (segment), oriented corners (obb) or boxes with their four corners as keypoints (pose).
- ``classify``: ``{train,val}/<class>/*.jpg``, one large rectangle of the class's colour.

Two classes (red, green) are enough for every metric, curve and confusion matrix to exist.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import numpy as np
from PIL import Image

TASKS: Final = ("detect", "segment", "classify", "pose", "obb")
NAMES: Final = ("red", "green")
_COLOURS: Final = ((220, 40, 40), (40, 200, 60))


def _image(rng: np.random.Generator, size: int) -> np.ndarray:
    return rng.integers(0, 60, (size, size, 3), dtype=np.uint8)


def _boxes(rng: np.random.Generator, size: int, count: int) -> list[tuple[int, float, float, float, float]]:
    """``count`` random boxes ``(class, x0, y0, x1, y1)`` in pixels, at least a fifth of the side."""
    boxes = []
    for _ in range(count):
        w, h = rng.uniform(0.2, 0.5, 2) * size
        x0, y0 = rng.uniform(0, size - w), rng.uniform(0, size - h)
        boxes.append((int(rng.integers(0, len(NAMES))), x0, y0, x0 + w, y0 + h))
    return boxes


def _label(task: str, box: tuple[int, float, float, float, float], size: int) -> str:
    cls, x0, y0, x1, y1 = box
    a, b, c, d = x0 / size, y0 / size, x1 / size, y1 / size
    corners = [a, b, c, b, c, d, a, d]  # top-left, top-right, bottom-right, bottom-left
    if task == "detect":
        values = [(a + c) / 2, (b + d) / 2, c - a, d - b]
    elif task in ("segment", "obb"):
        values = corners
    else:  # pose: the box, then each corner as a visible keypoint
        values = [(a + c) / 2, (b + d) / 2, c - a, d - b]
        for i in range(0, 8, 2):
            values += [corners[i], corners[i + 1], 2.0]
    return " ".join([str(cls), *(f"{v:.6f}" for v in values)])


def _yaml(root: Path, task: str) -> Path:
    lines = [f"path: {root}", "train: images/train", "val: images/val", "names:"]
    lines += [f"  {i}: {name}" for i, name in enumerate(NAMES)]
    if task == "pose":
        lines += ["kpt_shape: [4, 3]", "flip_idx: [1, 0, 3, 2]"]
    path = root / "data.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _labelled(root: Path, task: str, counts: dict[str, int], size: int, rng: np.random.Generator) -> Path:
    for split, count in counts.items():
        images, labels = root / "images" / split, root / "labels" / split
        images.mkdir(parents=True, exist_ok=True)
        labels.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = _image(rng, size)
            boxes = _boxes(rng, size, int(rng.integers(1, 4)))
            for cls, x0, y0, x1, y1 in boxes:
                pixels[int(y0) : int(y1), int(x0) : int(x1)] = _COLOURS[cls]
            Image.fromarray(pixels).save(images / f"{i:03d}.jpg", quality=90)
            (labels / f"{i:03d}.txt").write_text("\n".join(_label(task, b, size) for b in boxes) + "\n")
    return _yaml(root, task)


def _classify(root: Path, counts: dict[str, int], size: int, rng: np.random.Generator) -> Path:
    for split, count in counts.items():
        for cls, name in enumerate(NAMES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count // len(NAMES)):
                pixels = _image(rng, size)
                _, x0, y0, x1, y1 = _boxes(rng, size, 1)[0]
                pixels[int(y0) : int(y1) + size // 3, int(x0) : int(x1) + size // 3] = _COLOURS[cls]
                Image.fromarray(pixels).save(folder / f"{i:03d}.jpg", quality=90)
    return root


def make_dataset(root: Path, task: str = "detect", *, train: int = 32, val: int = 8, size: int = 96) -> Path:
    """Write a dataset for ``task`` under ``root`` (created if missing; earlier files are rewritten).

    Args:
        root: directory to create the dataset in.
        task: one of :data:`TASKS`.
        train: number of training images.
        val: number of validation images.
        size: side of the square images in pixels.

    Returns:
        What ``model.train(data=...)`` takes: ``root/data.yaml``, or ``root`` itself for classify.

    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    root = Path(root).absolute()
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(sum(map(ord, task)))  # deterministic per task
    counts = {"train": train, "val": val}
    if task == "classify":
        return _classify(root, counts, size, rng)
    return _labelled(root, task, counts, size, rng)


#: Ultralytics' logger integrations other than ClearML's: switched off for the demo and tests.
OTHER_LOGGERS: Final = ("comet", "dvc", "mlflow", "raytune", "tensorboard", "wandb")


def only_clearml_integration() -> None:
    """Switch off Ultralytics' other logger integrations in this process's settings file.

    Installed and enabled by default, MLflow's would log every training into ``./mlflow.db``
    (the working directory) and Comet's would try the network. Call it before the first
    trainer is made: each integration reads the setting when the trainer imports it. The
    settings file is the one under ``YOLO_CONFIG_DIR``, private to the demo and to each test.
    """
    from ultralytics.utils import SETTINGS  # noqa: PLC0415

    settings: Any = SETTINGS  # untyped
    settings.update({key: False for key in OTHER_LOGGERS if settings.get(key)})


def tiny_training(task: str, project: Path, name: str, epochs: int) -> dict[str, Any]:
    """``model.train`` arguments for a seconds-long CPU training on a dataset made here.

    ``project`` must be absolute: Ultralytics puts a relative one under the git root of its own
    installation (a virtual environment inside a checkout would write into that checkout).
    """
    return {
        "epochs": epochs,
        "imgsz": 32 if task == "classify" else 64,
        "batch": 8,
        "workers": 0,
        "device": "cpu",
        "project": str(project),
        "name": name,
        "exist_ok": True,
        "plots": True,
        "verbose": False,
    }
