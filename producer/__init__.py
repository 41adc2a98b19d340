"""clearml-relay's producer: the light library a training process logs through.

Importing it loads only the standard library, pyzmq and msgspec: never clearml, torch,
matplotlib or ultralytics. ``attach`` and ``callbacks`` are the Ultralytics hooks
(:mod:`producer.integrations.ultralytics`); ``capture_tensorboard`` forwards TensorBoard's
``SummaryWriter`` (:mod:`producer.integrations.tensorboard`). Lightning's logger and
Transformers' callback import their framework, so they are imported from their own modules:
:mod:`producer.integrations.lightning`, :mod:`producer.integrations.transformers`.
"""

from collections.abc import Callable
from typing import Any

from producer.config import ConfigError, ProducerConfig
from producer.integrations import ultralytics as hooks
from producer.integrations.tensorboard import capture_tensorboard, release_tensorboard
from producer.integrations.ultralytics import RelayHooks, attach
from producer.run import Run
from producer.transport.client import Client, get_client
from producer.transport.sync import SyncProgress, SyncResult


def __getattr__(name: str) -> dict[str, Callable[[Any], None]]:
    """``callbacks``, made on access: taking them starts their starter thread (see hooks)."""
    if name == "callbacks":
        return hooks.callbacks  # producer.integrations.ultralytics makes it (and its starter thread)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ``sync`` (the function) is imported from ``producer.transport.sync``: re-exporting it here would shadow
# the submodule of the same name.

__all__ = [
    "Client",
    "ConfigError",
    "ProducerConfig",
    "RelayHooks",
    "Run",
    "SyncProgress",
    "SyncResult",
    "attach",
    "callbacks",
    "capture_tensorboard",
    "get_client",
    "release_tensorboard",
]
