"""clearml-relay's producer: the light library a training process logs through.

Importing it loads only the standard library, pyzmq and msgspec: never clearml, torch,
matplotlib or ultralytics. ``attach`` and ``callbacks`` are the Ultralytics hooks
(:mod:`producer.hooks`).
"""

from collections.abc import Callable
from typing import Any

from producer import hooks
from producer.client import Client, get_client
from producer.config import ConfigError, ProducerConfig
from producer.hooks import RelayHooks, attach
from producer.run import Run
from producer.sync import SyncProgress, SyncResult


def __getattr__(name: str) -> dict[str, Callable[[Any], None]]:
    """``callbacks``, made on access: taking them starts their starter thread (see hooks)."""
    if name == "callbacks":
        return hooks.callbacks  # producer.hooks makes it (and its starter thread)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ``sync`` (the function) is imported from ``producer.sync``: re-exporting it here would shadow
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
    "get_client",
]
