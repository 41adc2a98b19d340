"""Console capture: each line goes to the console of the training that logged it.

Threads that log on cue (each stays alive between its calls, so its ident is its own for the
whole test) into a private logger and router.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator

import pytest

from producer.integrations import console
from producer.integrations.console import Console, Router

DEADLINE = 10.0
LEFT_OUT = (
    "clearml-relay: 1 console lines of threads that run no training were left out"
    " (several trainings ran in this process)"
)


class _Thread:
    """A thread that runs the calls it is given, one at a time, until closed."""

    def __init__(self) -> None:
        self._calls: queue.Queue[tuple[Callable[[], object], threading.Event] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while (call := self._calls.get()) is not None:
            function, done = call
            function()
            done.set()

    def run(self, function: Callable[[], object]) -> None:
        done = threading.Event()
        self._calls.put((function, done))
        assert done.wait(DEADLINE), "the call did not return in time"

    def close(self) -> None:
        self._calls.put(None)
        self._thread.join(DEADLINE)
        assert not self._thread.is_alive()


def _log_on_a_new_thread(logger: logging.Logger, message: str) -> None:
    """What Ultralytics' plotting threads do: log from a thread that runs no training."""
    helper = threading.Thread(target=logger.info, args=(message,))
    helper.start()
    helper.join(DEADLINE)
    assert not helper.is_alive()


@pytest.fixture
def routed() -> Iterator[tuple[Router, logging.Logger]]:
    logger = logging.getLogger("test_console.routed")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    router = Router()
    logger.addHandler(router)
    yield router, logger
    logger.removeHandler(router)


def test_each_line_goes_to_the_console_of_the_training_that_logged_it(
    routed: tuple[Router, logging.Logger], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A console keeps its thread's lines from its start, none of another training's and none of
    a thread whose training ended; a line of any other thread goes to the console on while it is
    the only one (unless that thread starts a training within ``HOLD``: its lines before the
    training's first hook), to none (counted) while two are."""
    monkeypatch.setattr(console, "HOLD", 0.0)  # held lines are released by the next drain
    router, logger = routed
    first, second, third = _Thread(), _Thread(), _Thread()
    consoles: dict[str, Console] = {}

    def start(name: str) -> None:
        consoles[name] = Console(router)
        consoles[name].start(threading.current_thread())

    try:
        _log_on_a_new_thread(logger, "a plotting thread's line before any training")
        first.run(lambda: start("first"))
        second.run(lambda: start("second"))
        first.run(lambda: logger.info("first training's line"))
        second.run(lambda: logger.info("second training's line"))
        _log_on_a_new_thread(logger, "a plotting thread's line, two trainings on")
        second.run(consoles["second"].stop)
        _log_on_a_new_thread(logger, "a plotting thread's line, one training on")
        second.run(lambda: logger.info("second thread's line after its training"))
        second.close()  # its ident may be the next thread's
        _log_on_a_new_thread(logger, "a plotting thread's line, the second thread gone")
        third.run(lambda: logger.info("third thread's line before its training"))
        third.run(lambda: start("third"))
        third.run(lambda: logger.info("third training's line"))
        third.run(consoles["third"].stop)
    finally:
        for thread in (first, second, third):
            thread.close()
    assert consoles["first"].drain() == [
        (
            "info",
            "first training's line\na plotting thread's line, one training on\n"
            "a plotting thread's line, the second thread gone",
        ),
        ("warning", LEFT_OUT),
    ]
    assert consoles["second"].drain() == [("info", "second training's line"), ("warning", LEFT_OUT)]
    assert consoles["third"].drain() == [("info", "third training's line")]


def test_another_threads_line_is_held_until_the_console_stops(
    routed: tuple[Router, logging.Logger], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A line of a thread that runs no training waits ``HOLD`` seconds (long here): not in the
    next drain, but in the one after the console stopped, in order."""
    monkeypatch.setattr(console, "HOLD", 3600.0)
    router, logger = routed
    capture = Console(router)
    capture.start(threading.current_thread())
    logger.info("the training's line")
    _log_on_a_new_thread(logger, "a plotting thread's line")
    _log_on_a_new_thread(logger, "another plotting thread's line")
    assert capture.drain() == [("info", "the training's line")]
    capture.stop()
    assert capture.drain() == [("info", "a plotting thread's line\nanother plotting thread's line")]


def test_a_console_batches_lines_by_level_and_counts_what_it_dropped(
    routed: tuple[Router, logging.Logger],
) -> None:
    router, logger = routed
    capture = Console(router, max_lines=4)
    capture.start(threading.current_thread())
    for message, level in [("a", logging.INFO), ("b", logging.INFO), ("c", logging.WARNING)]:
        logger.log(level, message)
    logger.error("d")
    logger.error("dropped")
    assert capture.drain() == [
        ("info", "a\nb"),
        ("warning", "c"),
        ("error", "d"),
        ("warning", "clearml-relay: 1 console lines were dropped"),
    ]
    assert capture.drain() == []


def test_a_console_keeps_its_threads_lines_from_its_start_to_its_stop_at_every_level(
    routed: tuple[Router, logging.Logger],
) -> None:
    router, logger = routed
    logger.critical("before")
    capture = Console(router)
    capture.start(threading.current_thread())
    logger.debug("during")
    logger.critical("also during")
    capture.stop()
    logger.critical("after")
    assert capture.drain() == [("debug", "during"), ("error", "also during")]
