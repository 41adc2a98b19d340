"""What ``Run``'s methods take from a caller, checked and converted into protocol values.

Each check raises :class:`CallError`, whose ``key`` groups repeats of one mistake (a ``Run``
logs each once) and whose message names the argument and what it expected.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Mapping
from typing import Any, Final

from producer.transport.outbox import valid_run_dir
from producer.wire import protocol

MAX_NAME: Final = 255
MIN_ITERATION: Final = -(2**31)
MAX_ITERATION: Final = 2**62


class CallError(Exception):
    """An argument that cannot become (part of) an event; ``key`` groups repeats of the same mistake."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def run_id(value: str) -> str:
    # The run id names a directory in the spool: "..", "." or ".x" must not pass.
    if not valid_run_dir(value):
        raise CallError(
            "run_id", f"run_id must be 1-64 of [A-Za-z0-9_.-], not starting with '.', got {value!r:.80}"
        )
    return value


def name(arg: str, value: object) -> str:
    if not isinstance(value, str):
        raise CallError(f"{arg}-type", f"{arg} must be a string, got {type(value).__name__} {value!r:.80}")
    if not value:
        raise CallError(f"{arg}-empty", f"{arg} must not be empty")
    return value[:MAX_NAME]


def number(arg: str, value: object) -> float:
    if type(value) is float:
        return value
    if isinstance(value, (str, bytes)):
        raise CallError(f"{arg}-type", f"{arg} must be a real number, got the string {value!r:.80}")
    try:
        return float(value)  # type: ignore[arg-type]  # numpy/torch scalars convert too
    except Exception:  # noqa: BLE001 - torch raises RuntimeError for multi-element tensors
        raise CallError(
            f"{arg}-type", f"{arg} must be a real number, got {type(value).__name__} {value!r:.80}"
        ) from None


def iteration(value: object) -> int:
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        if isinstance(value, float) and value.is_integer():
            number = int(value)
        else:
            raise CallError(
                "iteration-type", f"iteration must be an integer, got {type(value).__name__} {value!r:.80}"
            ) from None
    if not MIN_ITERATION <= number <= MAX_ITERATION:
        raise CallError("iteration-range", f"iteration must be in [-2**31, 2**62], got {number}")
    return number


def path(value: object) -> str:
    try:
        return os.fspath(value)  # type: ignore[call-overload,no-any-return]
    except TypeError:
        raise CallError(
            "path-type", f"path must be a str or os.PathLike, got {type(value).__name__}"
        ) from None


def param(value: object) -> protocol.ParamValue:
    if value is None or isinstance(value, (str, bool, float)):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**64 else str(value)  # msgpack's integer range
    return str(value)


def params(values: object) -> dict[str, protocol.ParamValue]:
    if not isinstance(values, Mapping):
        raise CallError("values-type", f"values must be a mapping, got {type(values).__name__}")
    return {str(k)[:MAX_NAME] or "_": param(v) for k, v in values.items()}


def sections(hyperparams: Mapping[str, Any]) -> dict[str, dict[str, protocol.ParamValue]]:
    sections: dict[str, dict[str, protocol.ParamValue]] = {}
    for key, value in hyperparams.items():
        if isinstance(value, Mapping):
            sections.setdefault(str(key)[:MAX_NAME] or "_", {}).update(params(value))
        else:
            sections.setdefault("General", {})[str(key)[:MAX_NAME] or "_"] = param(value)
    return sections
