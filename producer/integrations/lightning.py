"""PyTorch Lightning: a ``Logger`` that reports a training through clearml-relay.

Use::

    from producer.integrations.lightning import RelayLogger
    trainer = lightning.Trainer(logger=RelayLogger(project="vision", name="resnet", log_model=True))

It subclasses ``lightning.pytorch.loggers.Logger`` (``pytorch_lightning.loggers.Logger`` when only
``pytorch_lightning`` is installed; either Trainer takes it). Importing this module imports
Lightning; ``import producer`` does not. Like Lightning's own loggers, it reports from rank zero
only. What lands where:

- ``log_hyperparams``: the ``General`` hyperparameter section (nested keys joined by ``/``);
- ``log_metrics(metrics, step)``: scalars at iteration ``step``; a key ``val/acc`` becomes title
  ``val``, series ``acc``, a key without ``/`` is both title and series (as ClearML shows
  Lightning's default TensorBoard logger);
- checkpoints of ``ModelCheckpoint`` as output models, by ``log_model`` as ``WandbLogger`` and
  ``MLFlowLogger`` take it: ``False`` none, ``True`` the best and last once training ends (or
  each as it is saved when ``save_top_k == -1``), ``"all"`` each as it is saved; tagged ``best``,
  ``last`` or ``top-k``, the monitored score in the comment;
- ``experiment``: the :class:`~producer.run.Run`; ``experiment.logger`` is its
  ``clearml.Logger``-compatible API (``report_image``, ``report_matplotlib_figure``...);
- ``finalize("failed")`` ends the run as failed at once; a run that succeeds stays open for a
  later ``trainer.test`` and ends when the process exits (as a ClearML task does), or at
  :meth:`RelayLogger.close`. Nothing here waits for the collector.
"""

from __future__ import annotations

import os
import uuid
from argparse import Namespace
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

try:  # the unified package first, as Lightning's docs use it
    from lightning.fabric.loggers.logger import rank_zero_experiment
    from lightning.fabric.utilities.rank_zero import rank_zero_only
    from lightning.pytorch.loggers.logger import Logger
    from lightning.pytorch.loggers.utilities import _scan_checkpoints
except ImportError:  # pragma: no cover - where only pytorch_lightning is installed
    from lightning_fabric.loggers.logger import rank_zero_experiment  # type: ignore[no-redef,unused-ignore]
    from lightning_fabric.utilities.rank_zero import rank_zero_only  # type: ignore[no-redef,unused-ignore]
    from pytorch_lightning.loggers.logger import Logger  # type: ignore[assignment,no-redef,unused-ignore]
    from pytorch_lightning.loggers.utilities import (  # type: ignore[assignment,no-redef,unused-ignore]
        _scan_checkpoints,
    )

from producer.integrations import framework
from producer.integrations.framework import guarded
from producer.run import Run


class RelayLogger(Logger):
    """Lightning's ``Logger`` interface onto a clearml-relay run.

    Args:
        project: ClearML project name.
        name: ClearML task name (also the checkpoint folder's name, as for other loggers).
        tags: task tags.
        log_model: which ``ModelCheckpoint`` checkpoints become output models (see the module).
        save_dir: where Lightning puts checkpoints (``<save_dir>/<name>/<version>/checkpoints``);
            None: the trainer's ``default_root_dir``. The logger itself writes nothing there.
        run_id: the run's id, also the logger's ``version`` (default: a new uuid4 hex).
        run_args: more ``producer.Run`` arguments (``endpoint``, ``task_type``, ``resume_run``...).

    """

    def __init__(
        self,
        project: str = "Lightning",
        name: str = "lightning",
        *,
        tags: tuple[str, ...] | list[str] = (),
        log_model: Literal[True, False, "all"] = False,
        save_dir: str | os.PathLike[str] | None = None,
        run_id: str | None = None,
        **run_args: Any,
    ) -> None:
        super().__init__()
        self._name = name
        self._version = run_id or uuid.uuid4().hex  # fixed now: Lightning names folders by it early
        self._run = framework.LazyRun(project=project, name=name, tags=tags, run_id=self._version, **run_args)
        self._save_dir = None if save_dir is None else os.fspath(save_dir)
        self._log_model = log_model
        self._checkpoint_callback: Any = None
        self._logged: dict[str, float] = {}

    # ------------------------------------------------------------------- what Lightning reads

    @property
    def name(self) -> str:
        return self._name

    @property
    def version(self) -> str:
        """The run id."""
        return self._version

    @property
    def save_dir(self) -> str | None:
        return self._save_dir

    @property
    @rank_zero_experiment
    def experiment(self) -> Run | None:
        """The run (None when it cannot be made); a dummy on ranks other than zero."""
        return self._run.get()

    # --------------------------------------------------------------------------------- hooks

    @rank_zero_only
    @guarded
    def log_hyperparams(self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        run = self.experiment
        if run is None:
            return
        values = vars(params) if isinstance(params, Namespace) else dict(params or {})
        run.hyperparams("General", framework.flatten(values))  # keys become text as they are joined

    @rank_zero_only
    @guarded
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        run = self.experiment
        if run is None:
            return
        iteration = 0 if step is None else int(step)
        for key, value in metrics.items():
            number = framework.number(value)
            if number is None:
                continue
            title, series = framework.split_tag(str(key), self.group_separator)
            run.scalar(title, series, number, iteration)

    @rank_zero_only
    @guarded
    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        if self._log_model == "all" or (self._log_model is True and checkpoint_callback.save_top_k == -1):
            self._report_checkpoints(checkpoint_callback)
        elif self._log_model is True:
            self._checkpoint_callback = checkpoint_callback

    @rank_zero_only
    @guarded
    def finalize(self, status: str) -> None:
        if self._checkpoint_callback is not None:
            self._report_checkpoints(self._checkpoint_callback)
        if status == "failed":  # Lightning's other statuses, "success" and "finished", end nothing
            self._run.end("failed", "the Lightning trainer stopped on an exception")

    @rank_zero_only
    def close(self, status: str = "completed", error: str = "") -> None:
        """End the run now (``completed``, ``failed`` or ``aborted``), without waiting."""
        self._run.end(status, error)

    def _report_checkpoints(self, checkpoint_callback: Any) -> None:
        run = self.experiment
        if run is None:
            return
        best, last = checkpoint_callback.best_model_path, checkpoint_callback.last_model_path
        monitor = checkpoint_callback.monitor
        for mtime, path, score, _ in _scan_checkpoints(checkpoint_callback, self._logged):
            self._logged[path] = mtime
            tag = "best" if path == best else "last" if path == last else "top-k"
            value = framework.number(score)
            comment = f"{monitor}={value}" if monitor and value is not None else ""
            run.update_output_model(path, name=Path(path).name, tags=[tag], comment=comment)
