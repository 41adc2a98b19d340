"""What the collector's refusals do to the sender (sender thread only).

A ``Refuse`` names a code: ``too_large`` turns the file in transfer into a gap; ``denied`` and
``limit`` pause one run (:data:`REFUSED_RETRY`, or as long as the collector says); ``conflict``
ends a run's delivery for good (another outbox owns its run id); ``backoff`` and a protocol
version mismatch pause all sending. Each is counted (``refused_<code>``) and said once.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Final

from producer.config import ProducerConfig
from producer.transport.stream import Stream
from producer.transport.tally import Tally
from producer.wire import protocol

# The name the sender's messages have always been logged under.
log = logging.getLogger("producer.transport.sender")

VERSION_RETRY: Final = 10.0
#: A run the collector refused (another key owns it, or this key's open-run limit): try again
#: this much later (an allow-list or a limit may change), sending nothing for it meanwhile.
REFUSED_RETRY: Final = 30.0


class Refusals:
    """Acts on the collector's refusals for the sender that owns ``streams``.

    Args:
        config: endpoint and spool directory, for the messages.
        tally: the client's counters and once-only messages.
        streams: the sender's streams by run id (shared with it, on its thread).
        wake_waiters: called when a run will get no further (flushes stop waiting for it).

    """

    def __init__(
        self,
        config: ProducerConfig,
        tally: Tally,
        streams: dict[str, Stream],
        *,
        wake_waiters: Callable[[], None],
    ) -> None:
        self._config = config
        self._tally = tally
        self._streams = streams
        self._wake_waiters = wake_waiters
        #: Nothing at all is sent before this time (backoff, protocol version).
        self.paused_until = 0.0

    def on_refuse(self, refuse: protocol.Refuse, now: float) -> None:
        """A ``Refuse``: count it by code, act on it, say so once."""
        self._tally.count(f"refused_{refuse.code}")
        if refuse.code == "too_large" and self._refused_file(refuse):
            return  # that file's event is a gap now (logged once)
        if refuse.code == "version":
            self.version_mismatch(b"", refuse.reason, now)
        elif refuse.code == "invalid":
            self._tally.log_once(
                log,
                logging.WARNING,
                ("invalid", refuse.run),
                "clearml-relay: collector refused event %s of run %s as invalid (%s); it stands as a gap",
                refuse.seq,
                refuse.run,
                refuse.reason,
            )
        elif refuse.code in ("denied", "limit") and refuse.run is not None:
            self._refused_run(refuse, now)
        elif refuse.code == "conflict" and refuse.run is not None:
            self._conflicting_run(refuse)
        elif refuse.code == "backoff":
            self.paused_until = now + (refuse.retry_after if refuse.retry_after is not None else 1.0)
            self._tally.log_once(
                log,
                logging.WARNING,
                "backoff",
                "clearml-relay: collector at %s asks producers to back off (%s); events keep spooling",
                self._config.endpoint,
                refuse.reason,
            )
        else:
            self._tally.log_once(
                log,
                logging.WARNING,
                ("refuse", refuse.code),
                "clearml-relay: collector at %s refused a message (%s): %s",
                self._config.endpoint,
                refuse.code,
                refuse.reason,
            )

    def _refused_run(self, refuse: protocol.Refuse, now: float) -> None:
        """The collector will not take this run's events from us: pause it, say so once."""
        stream = self._streams.get(refuse.run or "")
        if stream is not None:
            # Resent from the acknowledged position when the pause ends.
            stream.window.pause(now + (refuse.retry_after or REFUSED_RETRY))
        self._tally.log_once(
            log,
            logging.ERROR,
            (refuse.code, refuse.run),
            "clearml-relay: collector at %s refused run %s (%s): %s; its events stay in the outbox at %s",
            self._config.endpoint,
            refuse.run,
            refuse.code,
            refuse.reason,
            Path(self._config.spool_dir),
        )

    def _conflicting_run(self, refuse: protocol.Refuse) -> None:
        """Another outbox owns this run id at the collector: stop sending the run, say so once.

        Waiting does not help, so the run counts as finished and not delivered: ``close()`` and
        flushes return False at once, and the events stay in the outbox.
        """
        stream = self._streams.get(refuse.run or "")
        if stream is None or stream.state.refused:
            return
        stream.window.pause(float("inf"))
        stream.end_transfer()
        stream.state.problem = f"refused by the collector: {refuse.reason}"
        stream.state.refused = True
        log.error(
            "clearml-relay: collector at %s refused run %s: %s; its %d events stay in the outbox %s",
            self._config.endpoint,
            refuse.run,
            refuse.reason,
            stream.state.unacked(),
            stream.outbox.directory,
        )
        self._wake_waiters()  # this run will not get further

    def _refused_file(self, refuse: protocol.Refuse) -> bool:
        """A file above the collector's size limit: its event becomes a Gap (logged once)."""
        stream = self._streams.get(refuse.run or "")
        t = stream.transfer if stream is not None else None
        if stream is None or t is None:
            return False
        entry = stream.window.find(t.seq)
        if entry is None:
            return False
        stream.replace_with_gap(entry, f"refused by the collector: {refuse.reason}")
        return True

    def version_mismatch(self, header: bytes, reason: str, now: float) -> None:
        """The collector speaks another protocol version: pause all sending, say so once."""
        self.paused_until = now + VERSION_RETRY
        if header.startswith(protocol.MAGIC) and len(header) == len(protocol.HEADER):
            (theirs,) = struct.unpack(">H", header[len(protocol.MAGIC) :])
            what = f"speaks protocol {theirs}"
        else:
            what = f"refused this producer's protocol ({reason})"
        self._tally.log_once(
            log,
            logging.ERROR,
            "version",
            "clearml-relay: collector at %s %s, this producer speaks %d; events stay in the outbox at %s",
            self._config.endpoint,
            what,
            protocol.PROTOCOL_VERSION,
            Path(self._config.spool_dir),
        )
