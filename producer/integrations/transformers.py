"""Hugging Face Transformers: a ``TrainerCallback`` that reports a ``Trainer`` through clearml-relay.

Use::

    from producer.integrations.transformers import RelayCallback
    trainer = Trainer(model, args, ..., callbacks=[RelayCallback(log_model=True)])

Transformers finds its ``report_to=[...]`` integrations in a table of its own
(``INTEGRATION_TO_CALLBACK``) that only a patch could extend, so the callback is passed
explicitly; keep ``report_to="none"`` (Transformers' default) or leave ``"clearml"`` out, or the
in-process ClearML callback runs too. Importing this module imports Transformers;
``import producer`` does not. Only the main process (``state.is_world_process_zero``) reports.

What lands where is what Transformers' own ``ClearMLCallback`` writes, so that a task looks the
same either way:

- ``on_train_begin``: ``args.to_dict()`` in the ``Transformers`` hyperparameter section (nested
  keys joined by ``/``), the model's ``config.to_dict()`` as the ``Model Configuration``
  configuration object;
- ``on_log``: each number at iteration ``state.global_step``: ``eval_*`` under title ``eval``,
  ``test_*`` under ``test``, the rest under ``train``; the run's totals (``train_runtime``,
  ``train_loss``, ``total_flos``, ``epoch``...) as single values;
- ``on_evaluate``: nothing of its own: the Trainer hands every evaluation's metrics to
  ``on_log`` as well, and reporting them twice would double them;
- ``on_save`` (with ``log_model=True``): the checkpoint folder ``checkpoint-<step>`` as an
  output model of that name at that iteration, packed into a zip by the producer's writer
  thread (as ``OutputModel.update_weights_package`` packs it). Models are never deleted here:
  ``save_total_limit`` prunes the folders, not the task's models;
- ``on_train_end``: nothing is waited for. The run stays open for a later ``evaluate`` or
  ``predict`` and ends when the process exits (failed if an exception ends it), or at
  :meth:`RelayCallback.close`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from transformers import TrainerCallback

from producer.integrations import framework
from producer.integrations.framework import guarded
from producer.run import Run

#: ``ClearMLCallback``'s names.
HPARAMS_SECTION = "Transformers"
MODEL_CONFIG = "Model Configuration"
#: The keys of a training's totals, reported as single values (``ClearMLCallback``'s list).
SINGLE_VALUES = frozenset(
    (
        "train_runtime",
        "train_samples_per_second",
        "train_steps_per_second",
        "train_loss",
        "total_flos",
        "epoch",
    )
)
_PREFIXES = (("eval_", "eval"), ("test_", "test"))


class RelayCallback(TrainerCallback):
    """A ``TrainerCallback`` onto a clearml-relay run.

    Args:
        project: ClearML project (default: ``CLEARML_PROJECT``, else ``HuggingFace Transformers``).
        name: ClearML task name (default: ``CLEARML_TASK``, else ``Trainer``).
        log_model: report each saved checkpoint folder as an output model.
        run_args: more ``producer.Run`` arguments (``tags``, ``run_id``, ``endpoint``...).

    """

    def __init__(
        self, project: str | None = None, name: str | None = None, *, log_model: bool = False, **run_args: Any
    ) -> None:
        self._run = framework.LazyRun(
            project=project or os.environ.get("CLEARML_PROJECT") or "HuggingFace Transformers",
            name=name or os.environ.get("CLEARML_TASK") or "Trainer",
            **run_args,
        )
        self.log_model = log_model

    @property
    def run(self) -> Run | None:
        """The run, once training has begun on the main process (None before, or elsewhere)."""
        return self._run.started

    def _main(self, state: Any) -> Run | None:
        return self._run.get() if state.is_world_process_zero else None

    @guarded
    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        run = self._main(state)
        if run is None:
            return
        run.hyperparams(HPARAMS_SECTION, framework.flatten(args.to_dict()))
        config = getattr(model, "config", None)
        if config is not None:
            run.connect_configuration(
                config.to_dict(), name=MODEL_CONFIG, description="The configuration of the trained model."
            )

    @guarded
    def on_log(
        self, args: Any, state: Any, control: Any, logs: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> None:
        run = self._main(state)
        if run is None or not logs:
            return
        step = int(state.global_step)
        for key, value in logs.items():
            number = framework.number(value)
            if number is None:
                continue
            if key in SINGLE_VALUES:
                run.single_value(key, number)
                continue
            title, series = "train", key
            for prefix, name in _PREFIXES:
                if key.startswith(prefix):
                    title, series = name, key[len(prefix) :]
                    break
            run.scalar(title, series, number, step)

    @guarded
    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Any = None, **kwargs: Any) -> None:
        """Nothing: the metrics reach ``on_log`` too (see the module)."""

    @guarded
    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        run = self._main(state) if self.log_model else None
        if run is None:
            return
        folder = f"checkpoint-{state.global_step}"
        run.update_output_model(
            os.path.join(args.output_dir, folder), name=folder, iteration=int(state.global_step)
        )

    @guarded
    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Nothing is waited for: the run ends at exit or at :meth:`close` (see the module)."""

    def close(self, status: str = "completed", error: str = "") -> None:
        """End the run now (``completed``, ``failed`` or ``aborted``), without waiting."""
        self._run.end(status, error)
