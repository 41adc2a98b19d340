"""What the hooks read from Ultralytics' objects (Ultralytics and torch as the trainer loaded them)."""

from __future__ import annotations

import copy
import importlib
import itertools
import sys
from collections.abc import Mapping
from typing import Any, Final

#: Ultralytics' own ClearML integration, switched off for the trainings the hooks handle.
BUILTIN_MODULE: Final = "ultralytics.utils.callbacks.clearml"

# Ultralytics' trainer and validator: typed loosely on purpose, ultralytics is optional here.
Trainer = Any


def remove_builtin_callbacks(trainer: Trainer, caller: object = None) -> int:
    """Remove Ultralytics' ClearML callbacks from a trainer's callback lists, in place.

    They are the built-in module's ``callbacks`` dict, which the trainer appended after the
    model's callbacks (ours) when it loaded that module. Called from inside
    ``on_pretrain_routine_start`` (``caller`` is the running callback): in a list that holds
    ``caller`` only the entries after it go, so the trainer's loop over that list neither skips
    nor repeats a callback.

    Returns:
        How many callbacks were removed.

    """
    builtin: Mapping[str, Any] = getattr(sys.modules.get(BUILTIN_MODULE), "callbacks", None) or {}
    lists = trainer.callbacks
    removed = 0
    for event, fn in builtin.items():
        entries = lists.get(event)
        if not entries or fn not in entries:
            continue
        first = entries.index(caller) + 1 if caller is not None and caller in entries else 0
        while fn in entries[first:]:
            del entries[entries.index(fn, first)]  # in place: the trainer iterates over this list
            removed += 1
    return removed


def model_info(trainer: Trainer, model: Any, speed: float) -> dict[str, float]:
    """The single values of ``model_info_for_loggers``, the FLOPs counted on a copy of ``model``.

    ``thop.profile`` switches every module it is given to eval mode and hooks its forward pass:
    on the live model, while the training thread trains it, that would change the training.
    """
    torch_utils: Any = importlib.import_module("ultralytics.utils.torch_utils")  # loaded by the trainer
    if trainer.args.profile:  # ONNX and TensorRT timings: exports from the saved last.pt
        info: dict[str, float] = dict(torch_utils.model_info_for_loggers(trainer))
    else:
        info = {
            "model/parameters": torch_utils.get_num_params(model),
            "model/GFLOPs": round(torch_utils.get_flops(_shape_copy(model), trainer.args.imgsz), 3),
        }
    info["model/speed_PyTorch(ms)"] = round(speed, 3)
    return info


def _shape_copy(model: Any) -> Any:
    """A deep copy of a torch module with new zero CPU tensors: its layers and shapes, no weights."""
    torch: Any = sys.modules["torch"]
    memo: dict[int, Any] = {}
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        zeros = torch.zeros(tensor.shape, dtype=tensor.dtype)
        is_parameter = isinstance(tensor, torch.nn.Parameter)
        memo[id(tensor)] = torch.nn.Parameter(zeros, requires_grad=False) if is_parameter else zeros
    return copy.deepcopy(model, memo)
