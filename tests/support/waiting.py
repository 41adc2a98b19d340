"""The suite's one way to wait: poll a condition until it holds, fail naming it at the deadline."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

DEADLINE = 10.0


def wait_for(
    condition: Callable[[], Any], timeout: float = DEADLINE, what: str = "condition", interval: float = 0.01
) -> Any:
    """Poll ``condition`` until it returns something truthy, and return that.

    Raises:
        AssertionError: ``timeout`` seconds passed first; the message names ``what``.

    """
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        pause.wait(interval)
