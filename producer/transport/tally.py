"""The client's counters and once-only warnings: the one object all three threads write to."""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Hashable

from producer.once import Once
from producer.wire.recordlog import Damage

# The name the client's messages have always been logged under.
log = logging.getLogger("producer.transport.client")


class Tally:
    """Counters by name (``Client.stats``) and messages logged once per key; thread-safe.

    The lock is reentrant: the SIGTERM handler (producer.preemption) counts on the main
    thread, which it may have interrupted inside this lock.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._counters: collections.Counter[str] = collections.Counter()
        self.once = Once()

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counters[name] += n

    def counters(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counters)

    def log_once(self, logger: logging.Logger, level: int, key: Hashable, msg: str, *args: object) -> None:
        """Log ``msg % args`` to ``logger`` unless ``key`` was logged before."""
        self.once.log(logger, level, key, msg, *args)

    def on_damage(self, run_id: str) -> DamageCallback:
        """A RecordLog damage handler that counts and warns once per run."""
        return DamageCallback(self, run_id)


class DamageCallback:
    """Counts damaged stretches of an outbox log and warns once per run."""

    def __init__(self, tally: Tally, run_id: str) -> None:
        self._tally = tally
        self._run_id = run_id

    def __call__(self, damage: Damage) -> None:
        self._tally.count("damage")
        self._tally.log_once(
            log,
            logging.WARNING,
            ("damage", self._run_id),
            "clearml-relay: damaged outbox of run %s: %s at %s+%d (%d bytes); lost events become a gap",
            self._run_id,
            damage.reason,
            damage.path,
            damage.offset,
            damage.length,
        )
