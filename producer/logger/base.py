"""What every ``run.logger`` method shares: never raising, checks, and the hand-off of its event."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any, Concatenate, Final, ParamSpec, Protocol, TypeVar

from producer import arguments as check
from producer.arguments import CallError
from producer.once import Once
from producer.transport.payload import Payload
from producer.wire import protocol, reports

log = logging.getLogger("producer.run")

_P = ParamSpec("_P")
_R = TypeVar("_R")
_L = TypeVar("_L", bound="LoggerBase")
_LEVEL_NAMES: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
    "fatal": logging.CRITICAL,
}


def logger_call(
    method: Callable[Concatenate[_L, _P], _R],
) -> Callable[Concatenate[_L, _P], _R | None]:
    """A Logger method that never raises: a mistake is logged once and the call does nothing."""
    name = f"Logger.{method.__name__}"

    @functools.wraps(method)
    def safe(self: _L, /, *args: _P.args, **kwargs: _P.kwargs) -> _R | None:
        try:
            return method(self, *args, **kwargs)
        except CallError as exc:
            self._run._reject(name, exc.key, str(exc))
        except Exception as exc:  # noqa: BLE001 - a logging call must never stop training
            self._run._reject(name, type(exc).__name__, f"unexpected error: {exc!r}")
        return None

    return safe


def level_of(level: object) -> protocol.TextLevel:
    if isinstance(level, str):
        number = _LEVEL_NAMES.get(level.strip().lower())
        if number is None:
            raise CallError("level", f"level must be a logging level, got {level!r:.80}")
    else:
        number = check.iteration(level)  # any int: logging levels are ints
    if number >= logging.ERROR:
        return "error"
    if number >= logging.WARNING:
        return "warning"
    return "info" if number >= logging.INFO else "debug"


def one_of(method: str, **given: object) -> str:
    present = [
        name
        for name, value in given.items()
        if value is not None and not (isinstance(value, str) and not value)
    ]
    if len(present) != 1:
        names = ", ".join(given)
        raise CallError(
            "exclusive", f"{method} takes exactly one of {names}; got {', '.join(present) or 'none'}"
        )
    return present[0]


class RunLike(Protocol):
    """What a logger needs of its run (``producer.run.Run``)."""

    _figures: str

    @property
    def id(self) -> str: ...

    def _emit(self, event: protocol.Event, source: str | Payload | None = None) -> None: ...

    def _reject(self, method: str, key: str, message: str) -> None: ...

    def scalar(self, title: str, series: str, value: float, iteration: int) -> None: ...

    def single_value(self, name: str, value: float) -> None: ...

    def flush(self, timeout: float | None = None) -> bool: ...


class NoRun:
    """The run of ``Logger.current_logger()`` when no run is open: every call is ignored, said once."""

    _figures = "render"
    id = "none"
    _REASON: Final = "no producer.Run is open in this process (create one before logging)"

    def __init__(self) -> None:
        self._once = Once()

    def _emit(self, event: protocol.Event, source: str | Payload | None = None) -> None:
        raise CallError("no-run", self._REASON)

    def _reject(self, method: str, key: str, message: str) -> None:
        self._once.log(log, logging.WARNING, key, "clearml-relay: %s ignored: %s", method, message)

    def scalar(self, title: str, series: str, value: float, iteration: int) -> None:
        self._reject("Logger.report_scalar", "no-run", self._REASON)

    def single_value(self, name: str, value: float) -> None:
        self._reject("Logger.report_single_value", "no-run", self._REASON)

    def flush(self, timeout: float | None = None) -> bool:
        return False


#: The newest open run of the process, or None: ``producer.run`` installs it (it imports this module).
newest_run: Callable[[], RunLike | None] = lambda: None  # noqa: E731


class LoggerBase:
    """The state and hand-off of one run's logger (see :class:`producer.logger.Logger`)."""

    def __init__(self, run: RunLike) -> None:
        self._run = run
        self._history: int | None = None
        self._counts: dict[tuple[str, str], int] = {}

    def __repr__(self) -> str:
        return f"Logger(run={self._run.id!r})"

    # --------------------------------------------------------------------------- internals

    def _event_base(self) -> dict[str, Any]:
        return {"run": self._run.id, "seq": 1, "ts": time.time()}

    def _where(self, title: object, series: object, iteration: object) -> dict[str, Any]:
        return {
            "title": check.name("title", title),
            "series": check.name("series", series),
            "iteration": 0 if iteration is None else check.iteration(iteration),
        }

    def _slot(self, title: str, series: str, history: object) -> int | None:
        """Which file name a debug sample reuses: ``count % history`` (ClearML's file history)."""
        limit = self._history if history is None else check.iteration(history)
        key = (title, series)
        count = self._counts.get(key, 0)
        self._counts[key] = count + 1
        return count % limit if limit is not None and limit > 0 else None

    def _emit(self, event: protocol.Event, source: str | Payload | None = None) -> None:
        self._run._emit(event, source)

    def _report(self, title: str, series: str, iteration: int | None, call: reports.Call) -> None:
        where = self._where(title, series, iteration)
        self._emit(protocol.Report(**self._event_base(), **where, call=call))


def report_call(
    logger: LoggerBase, title: str, series: str, iteration: int | None, call: reports.Call
) -> None:
    """Send ``call`` as a Report event of the logger's run.

    For integrations: calls such as the drawings of ``producer.wire.reports``, which
    ``clearml.Logger`` has no method for.
    """
    logger._report(title, series, iteration, call)


#: Stands in for a call the writer thread makes (``Report.call`` until ``Payload.make`` sets it).
LATER: Final = reports.ImageUrl(url="pending")


def report_later(
    logger: LoggerBase,
    title: str,
    series: str,
    iteration: int | None,
    *,
    size: int,
    make_call: Callable[[], reports.Call],
) -> None:
    """Send a Report whose call ``make_call`` builds on the writer thread, from a snapshot it holds.

    For integrations whose arguments take work to become a call (TensorBoard's histogram
    buckets): the training thread only copies what ``make_call`` reads (``size`` bytes, counted
    against the producer's memory bound) and hands it off.
    """
    where = logger._where(title, series, iteration)
    event = protocol.Report(**logger._event_base(), **where, call=LATER)

    def make(event: protocol.Event) -> None:
        assert isinstance(event, protocol.Report)
        event.call = make_call()

    logger._emit(event, Payload("call", size, make))


def report_encoded_image(
    logger: LoggerBase, title: str, series: str, iteration: int | None, *, data: bytes, name: str
) -> None:
    """Send an image already encoded (``name``: ``image.png``...) as ``report_image`` sends a file.

    For integrations that hold the encoded picture (TensorBoard's PNG): no decoding, no copy of
    the pixels; the bytes go into the outbox as the debug image's file.
    """
    where = logger._where(title, series, iteration)
    slot = logger._slot(where["title"], where["series"], None)
    pending = protocol.FileRef(sha256="0" * 64, size=len(data), name=name)
    event = protocol.DebugImage(**logger._event_base(), **where, file=pending, slot=slot)
    logger._emit(event, Payload(name, len(data), lambda _: data))


def text_or_none(value: object) -> str | None:
    return None if value is None else str(value)[:255]
