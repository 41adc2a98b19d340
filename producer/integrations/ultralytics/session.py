"""One YOLO training: what each hook records on the training thread, and what the worker reports.

The ``on_*`` methods of :class:`Session` run on the training thread: they read trainer attributes
and append requests, nothing else. :class:`YoloReporter` carries the requests out on the worker
(turning loss tensors into floats, counting FLOPs, reading ``results_dict``).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

from producer.config import ENV_PROJECT, ENV_TASK_NAME, setting
from producer.integrations.console import Console
from producer.integrations.process import current_clearml_task
from producer.integrations.reporter import Reporter, Training
from producer.integrations.ultralytics import charts, offload
from producer.integrations.ultralytics.trainer import Trainer, model_info
from producer.run import Run

log = logging.getLogger(__name__)

#: The logger whose lines become the run's console output.
ULTRALYTICS_LOGGER: Final = "ultralytics"


class Session(Training):
    """A YOLO training as its thread records it, from ``on_pretrain_routine_start`` to its end."""

    __slots__ = (
        "_model_info_sent", "_validation_dirs", "hyperparams", "offloaded", "removed", "save_dir", "trained",
    )  # fmt: skip

    def __init__(self, options: Mapping[str, Any], console: Console, refill: Callable[[], None]) -> None:
        super().__init__(options, console, refill)
        self.save_dir: Any = None
        self.hyperparams: dict[str, Any] = {}
        self.removed = 0  # how many of Ultralytics' ClearML callbacks the start removed
        self.trained = False
        self._validation_dirs: set[object] = set()  # validation dirs other than save_dir, as given
        self._model_info_sent = False
        self.offloaded: offload.Offloaded | None = None  # plots="collector": what the trainer skips

    def start(self, trainer: Trainer, wake: Callable[[], None]) -> None:
        self.save_dir, self.hyperparams = trainer.save_dir, dict(vars(trainer.args))
        super().start(trainer, wake)
        if self.options.get("plots") == "collector":
            self._offload(trainer)

    def _offload(self, trainer: Trainer) -> None:
        try:
            self.offloaded = offload.install(trainer, labels=self._draw_labels, results=self._draw_results)
        except Exception as exc:  # noqa: BLE001 - then Ultralytics draws, as by default
            log.warning("clearml-relay: plots='collector' is not possible here, the trainer draws: %r", exc)

    def _draw_labels(self, trainer: Trainer) -> None:
        """(Training thread, instead of Ultralytics' ``plot_training_labels``.) Queued, never raises."""
        try:
            labels, names = trainer.train_loader.dataset.labels, dict(trainer.data["names"])
        except Exception as exc:  # noqa: BLE001 - called by the trainer: must not stop it
            log.warning("clearml-relay: the training's labels cannot be read, labels.jpg is missing: %r", exc)
            return
        self.inbox.append((YoloReporter.draw_labels, (labels, names)))

    def _draw_results(self, trainer: Trainer) -> None:
        """(Training thread, instead of Ultralytics' ``plot_metrics``.) Queued, never raises."""
        self.inbox.append((YoloReporter.draw_results, (getattr(trainer, "csv", None),)))

    def reporter(self) -> YoloReporter:
        return YoloReporter(self)

    def on_train_epoch_end(self, trainer: Trainer) -> None:
        # The trainer rebinds tloss and lr each epoch; the copies guard against one that would not.
        tloss, lr = trainer.tloss, dict(trainer.lr)
        tloss = dict(tloss) if isinstance(tloss, dict) else tloss
        self.inbox.append((YoloReporter.train_epoch, (trainer, tloss, lr, trainer.epoch)))

    def on_val_end(self, validator: Trainer) -> None:
        save_dir = getattr(validator, "save_dir", None)
        if save_dir is None or save_dir is self.save_dir or save_dir in self._validation_dirs:
            return  # cheap when seen before (the training's own validator uses its save_dir)
        self._validation_dirs.add(save_dir)
        if Path(save_dir) != Path(self.save_dir):  # the worker watches save_dir already
            self.inbox.append((YoloReporter.watch_validation, (Path(save_dir),)))

    def on_fit_epoch_end(self, trainer: Trainer) -> None:
        epoch, metrics = trainer.epoch, dict(trainer.metrics)
        self.inbox.append((YoloReporter.fit_epoch, (trainer.epoch_time, metrics, epoch)))
        if epoch == 0 and not self._model_info_sent:
            self._model_info_sent = True
            model = getattr(getattr(trainer, "ema", None), "ema", None) or trainer.model
            speed = trainer.validator.speed["inference"]
            self.inbox.append((YoloReporter.model_info, (trainer, model, speed)))

    def on_train_end(self, trainer: Trainer) -> None:
        plots = [*trainer.plots, *trainer.validator.plots]
        best, name, metrics = trainer.best, str(trainer.args.name), trainer.validator.metrics
        self.inbox.append((YoloReporter.train_end, (best, name, plots, metrics)))
        self.trained = True
        if getattr(trainer.args, "plots", False):  # apart: a failure costs the charts only
            self.inbox.append((YoloReporter.charts, (metrics, self.offloaded)))

    def teardown(self, _: Trainer) -> None:
        exc = sys.exc_info()[1]
        if exc is self.outer_exc:
            exc = None
        if isinstance(exc, KeyboardInterrupt):
            self.end("aborted", "KeyboardInterrupt")
        elif exc is not None:
            self.end("failed", f"{type(exc).__name__}: {exc}")
        elif self.trained:
            self.end("completed", "")
        else:
            self.end("failed", "the training stopped before on_train_end")


class YoloReporter(Reporter):
    """A YOLO training's run as the worker reports it."""

    late_threads = "(plot_images)"  # Ultralytics' @threaded mosaic writer

    def __init__(self, training: Session) -> None:
        super().__init__(training, training.save_dir)
        self.yolo = training

    def resuming(self) -> bool:
        return bool(self.yolo.hyperparams.get("resume", False))

    def open(self) -> bool:
        if self.yolo.removed:
            log.info("clearml-relay: switched off Ultralytics' ClearML callback for this training")
        if not super().open():
            return False
        save_dir = Path(self.save_dir)
        self.watcher.watch(save_dir, "train_batch*.jpg", "Mosaic")
        self.watch_validation(save_dir)
        return True

    def open_run(self, resume_run: str | None) -> Run:
        options, hyperparams = self.options, self.yolo.hyperparams
        project = (
            options["project"]
            or setting(ENV_PROJECT).raw()
            or str(hyperparams.get("project") or "Ultralytics").lstrip("/")
            or "Ultralytics"
        )
        name = options["name"] or setting(ENV_TASK_NAME).raw() or str(hyperparams.get("name"))
        return Run(
            project,
            name,
            tags=options["tags"] if options["tags"] is not None else ["Ultralytics"],
            task_type="training",
            hyperparams={"General": hyperparams},
            endpoint=options["endpoint"],
            spool_dir=options["spool_dir"],
            flush_timeout=options["flush_timeout"],
            task_id=current_clearml_task(),
            resume_run=resume_run,
        )

    def watch_validation(self, directory: Path) -> None:
        self.watcher.watch(directory, "val*.jpg", "Validation")

    def train_epoch(self, trainer: Trainer, tloss: Any, lr: Mapping[str, float], epoch: int) -> None:
        self.opened.scalars("lr", lr, epoch)  # first: a failing label_loss_items costs only losses
        if tloss is not None:
            self.opened.scalars("train", trainer.label_loss_items(tloss, prefix="train"), epoch)

    def fit_epoch(self, epoch_time: float | None, metrics: Mapping[str, float], epoch: int) -> None:
        if epoch_time is not None:
            self.opened.scalar("Epoch Time", "Epoch Time", epoch_time, epoch)
        by_title: dict[str, dict[str, float]] = {}
        for key, value in metrics.items():
            by_title.setdefault(key.split("/")[0], {})[key] = value
        for title, values in by_title.items():
            self.opened.scalars(title, values, epoch)

    def model_info(self, trainer: Trainer, model: Any, speed: float) -> None:
        for key, value in model_info(trainer, model, speed).items():
            self.opened.single_value(key, value)

    def train_end(self, best: Any, name: str, plots: list[Path], metrics: Any) -> None:
        self.opened.model(best, name=name)
        for path in map(Path, plots):
            if "batch" not in path.name:
                self.watcher.add(path, "plot", path.stem, charts.PLOT_SERIES, 0)
        for key, value in metrics.results_dict.items():
            self.opened.single_value(key, value)

    def charts(self, metrics: Any, offloaded: offload.Offloaded | None) -> None:
        charts.report(self.opened.logger, metrics)
        if offloaded is not None:
            charts.draw_final(
                self.opened.logger, metrics, with_curves=offloaded.curves, confusion=offloaded.confusion
            )

    def draw_labels(self, labels: list[dict[str, Any]], names: dict[int, str]) -> None:
        charts.draw_labels(self.opened.logger, labels, names)

    def draw_results(self, csv: Path | None) -> None:
        if csv is not None:
            charts.draw_results(self.opened.logger, Path(csv))
