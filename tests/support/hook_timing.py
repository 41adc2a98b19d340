"""Timing a framework's hooks where the framework calls them (the training scripts, the benchmark)."""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable, Iterable
from typing import Any


def time_methods(owner: Any, names: Iterable[str], record: Callable[[str, float], None]) -> None:
    """Replace each method ``names`` of ``owner`` with one that hands its call's seconds to ``record``."""
    for name in names:
        original = getattr(owner, name)

        def timed(
            *args: Any, __name: str = name, __original: Callable[..., Any] = original, **kwargs: Any
        ) -> Any:
            start = time.perf_counter()
            try:
                return __original(*args, **kwargs)
            finally:
                record(__name, time.perf_counter() - start)

        setattr(owner, name, functools.wraps(original)(timed))


def own_methods(cls: type) -> list[str]:
    """The methods ``cls`` defines itself (its hooks), not those it inherits."""
    return [
        name for name, member in vars(cls).items() if not name.startswith("__") and inspect.isfunction(member)
    ]


def slowest_into(slowest: dict[str, float]) -> Callable[[str, float], None]:
    """A ``record`` that keeps each hook's slowest call in ``slowest``."""

    def record(name: str, seconds: float) -> None:
        slowest[name] = max(slowest.get(name, 0.0), seconds)

    return record
