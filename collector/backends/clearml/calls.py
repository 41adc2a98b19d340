"""ClearML calls with our own timeout: each runs in a helper thread that its caller stops waiting for.

Every call for a run happens in that run's applier thread; no lock is held across a ClearML
call. Calls that can block on the network (open/create the task, drain events to disk or the
server, model registration, status changes, close) run in a helper thread that the applier
waits on for at most ``timeout`` seconds; then :class:`TimeoutError` goes back to the applier,
which retries later. A timed-out call cannot be killed: its thread is abandoned and may finish
(or never finish) later. A retry of the same step therefore re-joins that call instead of
starting a second one, so at most one abandoned thread exists per run, and a step whose first
attempt completes late is not repeated.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class _Call:
    """A ClearML call running in its own thread, so that its caller can stop waiting."""

    def __init__(self, step: str, fn: Callable[[], Any]) -> None:
        self.step = step
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self._fn = fn
        threading.Thread(target=self._run, name=f"clearml-{step}", daemon=True).start()

    def _run(self) -> None:
        try:
            self.result = self._fn()
        except BaseException as exc:  # noqa: BLE001  (re-raised in the waiting caller's thread)
            self.error = exc
        finally:
            self.done.set()


class TimedCalls:
    """Runs each run's ClearML calls in helper threads, waiting at most ``timeout`` seconds each."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        # Guards the dict only; never held across a ClearML call.
        self._lock = threading.Lock()
        self._calls: dict[str, _Call] = {}

    def __call__(self, run: str, step: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` in a helper thread; TimeoutError after ``timeout`` (see the module doc).

        A call of the same step left over from an earlier timeout is waited for instead of
        starting ``fn`` again; a left-over call of another step is waited for first.
        """
        with self._lock:
            call = self._calls.get(run)
        if call is not None and call.step != step:
            if not call.done.wait(self.timeout):
                raise TimeoutError(f"run {run}: ClearML call {call.step!r} is still running")
            call = None  # its outcome went to nobody: the step that timed out is retried on its own
        if call is None:
            call = _Call(step, fn)
            with self._lock:
                self._calls[run] = call
        if not call.done.wait(self.timeout):
            raise TimeoutError(f"run {run}: ClearML call {step!r} took over {self.timeout} s")
        with self._lock:
            if self._calls.get(run) is call:
                del self._calls[run]
        if call.error is not None:
            raise call.error
        result: T = call.result
        return result
