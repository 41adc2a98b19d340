"""Preemption: on SIGTERM (SLURM, Kubernetes), end this process's open runs as aborted, then die.

A scheduler that preempts a job sends SIGTERM and, a grace period later, SIGKILL. Python's
default action for SIGTERM ends the process at once: no ``atexit``, no flush, and the run stays
``open`` at the collector until its heartbeat times out. The handler installed here hands a
``RunClose(status="aborted", error="SIGTERM")`` to every open run of the process, waits for the
collector's acknowledgement at most the flush timeout, then does what would have happened
without it: it calls the handler that was installed before (chaining), or restores the default
action and sends itself SIGTERM again, so that the job dies the way its scheduler expects.

It is installed once per process, from the main thread only (Python runs signal handlers
there, and only the main thread may install them), when a :class:`~producer.run.Run` is made or
trainer hooks are attached. A handler the user installed before is chained, never dropped; an
ignored SIGTERM (``SIG_IGN``) or a handler not installed from Python is left alone. A handler the
user installs later replaces this one, as they asked.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

#: Called with the signal's name on SIGTERM, before the chained handler (producer.run's).
_on_term: Callable[[str], None] | None = None
_previous: Any = None
_installed_pid = 0
_lock = threading.Lock()


def install(on_term: Callable[[str], None]) -> bool:
    """Install the SIGTERM handler (once per process, main thread only); True if it is ours now."""
    global _on_term, _previous, _installed_pid  # noqa: PLW0603 - one handler per process
    if threading.current_thread() is not threading.main_thread():
        return False
    with _lock:
        if _installed_pid == os.getpid():
            return signal.getsignal(signal.SIGTERM) is _handle
        _installed_pid = os.getpid()
        try:
            previous = signal.getsignal(signal.SIGTERM)
            if previous is signal.SIG_IGN or previous is None or previous is _handle:
                return previous is _handle  # ignored on purpose, or not Python's to chain
            signal.signal(signal.SIGTERM, _handle)
        except (ValueError, OSError):  # not the main interpreter, or no signals here
            return False
        _on_term, _previous = on_term, previous
        return True


def _handle(signum: int, frame: FrameType | None) -> None:
    try:
        if _on_term is not None:
            _on_term(signal.Signals(signum).name)
    except Exception:  # the job must still die as its scheduler expects
        log.debug("clearml-relay: ending the runs on SIGTERM failed", exc_info=True)
    _chain(signum, frame)


def _chain(signum: int, frame: FrameType | None) -> None:
    """Do what SIGTERM would have done without us."""
    previous = _previous
    if callable(previous):
        previous(signum, frame)
        return
    # The default action: terminate, with the exit status a scheduler expects of SIGTERM.
    with contextlib.suppress(ValueError, OSError):
        signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
