"""Ultralytics trainer hooks: each YOLO training becomes one clearml-relay run.

Use either::

    hooks = producer.attach(model)          # a handle: hooks.run, hooks.wait(), hooks.detach()
    for event, fn in producer.callbacks.items():
        model.add_callback(event, fn)       # Ultralytics' convention, a module-level dict

A run holds what Ultralytics' built-in ClearML callback (switched off for these trainings) logs,
and more (docs/user-guide.md). :mod:`.hooks` runs on the training thread, :mod:`.session` is a
training's run, :mod:`.trainer` reads Ultralytics' objects; the slow work runs on the process's
worker (:mod:`producer.integrations.worker`). Nothing imports Ultralytics here.
"""

from __future__ import annotations

from collections.abc import Callable

from producer.integrations.reporter import STATE_FILE
from producer.integrations.ultralytics.hooks import EVENTS, RelayHooks, attach, default_hooks
from producer.integrations.ultralytics.trainer import BUILTIN_MODULE, Trainer, remove_builtin_callbacks


def __getattr__(name: str) -> dict[str, Callable[[Trainer], None]]:
    """``callbacks``, made on access (PEP 562): taking them starts the hooks' worker thread."""
    if name == "callbacks":
        return default_hooks().callbacks
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BUILTIN_MODULE",
    "EVENTS",
    "STATE_FILE",
    "RelayHooks",
    "attach",
    "callbacks",
    "default_hooks",
    "remove_builtin_callbacks",
]
