"""What the training process tells an integration: its rank, and the ClearML task it reports to."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

log = logging.getLogger(__name__)


def main_rank() -> bool:
    """Whether this process is rank 0 (or not distributed): ``RANK``, else ``LOCAL_RANK``, in {-1, 0}."""
    for variable in ("RANK", "LOCAL_RANK"):
        raw = os.environ.get(variable, "").strip()
        if raw:
            try:
                return int(raw) in (-1, 0)
            except ValueError:
                return False
    return True


def current_clearml_task() -> str | None:
    """The ClearML task this process already reports to (``Task.init`` or ``CLEARML_TASK_ID``).

    clearml is consulted only if the process imported it. As in Ultralytics' ClearML callback,
    ClearML's own PyTorch and matplotlib logging into that task is switched off: the run
    reports the models and plots.
    """
    clearml: Any = sys.modules.get("clearml")
    if clearml is not None:
        try:
            task = clearml.Task.current_task()
        except Exception as exc:  # noqa: BLE001 - an odd clearml must not stop the run
            log.debug("clearml-relay: Task.current_task() failed: %r", exc)
            task = None
        if task is not None:
            for module, name in (
                ("clearml.binding.frameworks.pytorch_bind", "PatchPyTorchModelIO"),
                ("clearml.binding.matplotlib_bind", "PatchedMatplotlib"),
            ):
                binding: Any = getattr(sys.modules.get(module), name, None)
                if binding is not None:
                    binding.update_current_task(None)
            return str(task.id)
    return os.environ.get("CLEARML_TASK_ID", "").strip() or None
