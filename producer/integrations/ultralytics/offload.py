"""``plots="collector"``: the trainer skips the drawings the collector can make from raw data.

With ``plots=True`` Ultralytics draws on the training thread: ``labels.jpg`` before the first
epoch, and at the final validation the PR/F1/P/R curves, both confusion matrices and
``results.png`` (seconds per training; ``tests/benchmarks/bench_plots.py``). :func:`install`
replaces, on one trainer (and the validator it makes) and nothing else, the methods that draw
them:

- ``trainer.plot_training_labels`` and ``trainer.plot_metrics`` hand a request to the worker
  (the dataset's labels, the ``results.csv`` path) and return;
- the validator's ``metrics.process`` runs with ``plot=False`` (the curves are computed all the
  same) and its confusion matrix's ``plot`` does nothing (the matrix is counted all the same).

What needs the images (the ``train_batch``/``val_batch`` mosaics) stays with the trainer. A method
is replaced only where it is Ultralytics' own (a subclass that draws its own way keeps drawing);
:class:`Offloaded` says which plots the collector then draws. Everything else of the training is
untouched: ``args.plots`` stays true, so the validator still counts its confusion matrix.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class Offloaded:
    """Which of a training's plots its trainer no longer draws (set by :func:`install`)."""

    __slots__ = ("confusion", "curves", "labels", "results")

    def __init__(self) -> None:
        self.labels = self.results = self.curves = self.confusion = False


def install(trainer: Any, *, labels: Callable[[Any], None], results: Callable[[Any], None]) -> Offloaded:
    """(Training thread, at the training's start.) Take the drawing over from ``trainer``.

    ``labels(trainer)`` and ``results(trainer)`` are called where the trainer would draw
    ``labels.jpg`` and ``results.png``; they must only queue work.
    """
    from ultralytics.engine.trainer import BaseTrainer  # noqa: PLC0415 - the trainer's own modules
    from ultralytics.models.yolo.detect.train import DetectionTrainer  # noqa: PLC0415

    done = Offloaded()
    kind = type(trainer)
    if getattr(kind, "plot_training_labels", None) is DetectionTrainer.plot_training_labels:
        trainer.plot_training_labels = functools.partial(labels, trainer)
        done.labels = True
    if getattr(kind, "plot_metrics", None) is BaseTrainer.plot_metrics:
        trainer.plot_metrics = functools.partial(results, trainer)
        done.results = True
    make = getattr(trainer, "get_validator", None)
    if make is None:
        return done

    def get_validator() -> Any:
        validator = make()
        _quiet(validator, done)
        return validator

    trainer.get_validator = get_validator
    return done


def _quiet(validator: Any, done: Offloaded) -> None:
    """The validator computes its curves and confusion matrix, and draws neither."""
    metrics: Any = getattr(validator, "metrics", None)
    process = getattr(metrics, "process", None)
    if process is not None and "plot" in inspect.signature(process).parameters and metrics.curves:
        metrics.process = functools.partial(_without_plots, process)
        done.curves = True
    init_metrics = getattr(validator, "init_metrics", None)
    if init_metrics is None:
        return

    def init(model: Any) -> None:
        init_metrics(model)
        matrix = getattr(validator, "confusion_matrix", None)
        if matrix is not None and callable(getattr(matrix, "plot", None)):
            matrix.plot = _nothing
            done.confusion = True

    validator.init_metrics = init


def _without_plots(process: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    kwargs["plot"] = False
    return process(*args, **kwargs)


def _nothing(*_: Any, **__: Any) -> None:
    """A confusion matrix's ``plot``: the collector draws it."""
