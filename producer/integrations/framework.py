"""What the framework integrations share: a run made on first use, guarded hooks, flat parameters.

:mod:`.lightning`, :mod:`.transformers` and :mod:`.tensorboard` are called by a framework on the
training thread. Each hook is wrapped by :func:`guarded`: it never raises into the trainer (a
failure is logged once per hook and the call does nothing). Each integration owns one
:class:`LazyRun`: the :class:`~producer.run.Run` is made when the first event needs it, on the
main process only, and ends without waiting (:meth:`LazyRun.end`) or, at the latest, when the
process exits, as a ClearML task does; the exit then waits at most the flush timeout for the
collector.
"""

from __future__ import annotations

import atexit
import functools
import logging
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ParamSpec

from producer.once import Once
from producer.run import Run

log = logging.getLogger(__name__)

_P = ParamSpec("_P")
_once = Once()


def guarded(hook: Callable[_P, Any]) -> Callable[_P, None]:
    """A framework hook that never raises: an error is logged once per hook, the call does nothing."""
    where = hook.__qualname__

    @functools.wraps(hook)
    def safe(*args: _P.args, **kwargs: _P.kwargs) -> None:
        try:
            hook(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - a logging hook must never stop training
            _once.log(
                log, logging.WARNING, (where, type(exc)), "clearml-relay: %s failed, skipped: %r", where, exc
            )

    return safe


class LazyRun:
    """An integration's run: made on first use, ended once (by the trainer, or at exit).

    Args:
        run_args: ``producer.Run``'s arguments (``project``, ``name``, ``run_id``...).

    """

    def __init__(self, **run_args: Any) -> None:
        self._args = run_args
        self._run: Run | None = None
        self._failed = False
        self._ended = False
        self._lock = threading.Lock()

    @property
    def started(self) -> Run | None:
        """The run if it has been made (None before the first event, or when it could not be)."""
        return self._run

    def get(self) -> Run | None:
        """The run, made now if it is not yet; None when it cannot be made (logged once) or has ended."""
        if self._run is not None or self._failed or self._ended:
            return self._run
        with self._lock:
            if self._run is None and not self._failed and not self._ended:
                try:
                    self._run = Run(**self._args)
                except ValueError as exc:  # a bad setting: the training goes on, unlogged
                    self._failed = True
                    log.error("clearml-relay: the run cannot be made, nothing is recorded: %s", exc)  # noqa: TRY400
                    return None
                atexit.register(self._at_exit)
        return self._run

    def end(self, status: str = "completed", error: str = "") -> None:
        """End the run without waiting for the collector (the process's exit waits, bounded)."""
        if self._close(status, error):
            atexit.unregister(self._at_exit)

    def _close(self, status: str, error: str) -> bool:
        with self._lock:
            run, ended, self._ended = self._run, self._ended, True
        if run is None or ended:
            return False
        run.close(status, error, wait=False)
        return True

    def _at_exit(self) -> None:
        """At exit, a run still open ends: failed if an uncaught exception is ending the process."""
        failure = getattr(sys, "last_value", None)
        self._close(
            "failed" if failure else "completed", f"{type(failure).__name__}: {failure}" if failure else ""
        )


def flatten(values: Mapping[str, Any], sep: str = "/") -> dict[str, Any]:
    """Nested mappings as one level, keys joined by ``sep`` (ClearML's ``flatten_dictionary``)."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, items: Iterable[tuple[Any, Any]]) -> None:
        for key, value in items:
            name = f"{prefix}{key}"
            if isinstance(value, Mapping):
                walk(f"{name}{sep}", value.items())
            else:
                flat[name] = value

    walk("", values.items())
    return flat


def number(value: object) -> float | None:
    """A metric's value as a float (a Python or NumPy number, a one-element tensor); None if it is not one."""
    if isinstance(value, str | bytes) or value is None:
        return None
    try:
        return float(value)  # type: ignore[arg-type]  # a tensor or NumPy scalar converts itself
    except (TypeError, ValueError, RuntimeError):
        return None


def split_tag(tag: str, sep: str = "/") -> tuple[str, str]:
    """``"a/b/c"``: title ``"a/b"``, series ``"c"``; a tag without ``sep`` is both (as ClearML splits)."""
    title, found, series = tag.rpartition(sep)
    return (title, series) if found and title and series else (tag, tag)
