"""One drained batch of ingest: what it accepted and what it owes each peer.

All events accepted in a batch are journaled in one group commit, and only then does each peer
get its replies: its refusals and nacks first, then one cumulative ``Ack`` with the journaled
position of every run it touched, duplicates included. Replies are never sent ahead of the
journal. Every refusal names its reason and is counted as ``refused_<code>``.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Final

from collector.counters import Counters
from collector.storage.journal import Entry, Journal, through
from producer.wire import protocol

log = logging.getLogger("collector.pipeline.ingest")  # split out of ingest: log lines keep its name

#: What a producer is told to wait when the journal is full or failing.
BACKOFF_SECONDS: Final = 5.0
#: Longest reason sent in a Refuse or kept in a Gap.
REASON_CHARS: Final = 1000


class Batch:
    """What one drained batch accepted and owes each peer."""

    def __init__(self, journal: Journal, over_quota: bool, counters: Counters) -> None:
        self.journal = journal
        self.over_quota = over_quota
        self.counters = counters
        self.positions: dict[str, int] = {}
        #: Writer ids of the runs this batch opened (not journaled yet).
        self.writers: dict[str, str] = {}
        self.entries: dict[str, list[Entry]] = {}
        self.replies: list[tuple[bytes, protocol.Reply]] = []
        self.acks: dict[bytes, set[str]] = {}
        # (peer, run) pairs already told to resend or to back off: their later events in this
        # batch cannot be in order, and one answer per run is enough.
        self.stalled: set[tuple[bytes, str]] = set()
        #: Counts of this batch (events received per kind), added to the counters in one go.
        self.counts: Counter[str] = Counter()
        #: The producer key (CURVE) of the message being handled; None without CURVE.
        self.key: str | None = None

    def position(self, run: str) -> int:
        if run not in self.positions:
            self.positions[run] = self.journal.position(run)
        return self.positions[run]

    def accept(self, peer: bytes, run: str, entry: Entry) -> None:
        self.entries.setdefault(run, []).append(entry)
        self.positions[run] = through(entry.event)
        self.ack(peer, run)

    def ack(self, peer: bytes, run: str) -> None:
        self.acks.setdefault(peer, set()).add(run)

    def nack(self, peer: bytes, run: str, expect: int) -> None:
        """Tell ``peer`` to resend ``run`` from ``expect`` (its later events here are ignored)."""
        self.counters.incr("nacks")
        self.stalled.add((peer, run))
        self.replies.append((peer, protocol.Nack(run=run, expect=expect)))

    def refuse(
        self,
        peer: bytes,
        code: protocol.RefuseCode,
        reason: str,
        *,
        run: str | None = None,
        seq: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.counters.incr(f"refused_{code}")
        log.debug("refused %s from peer %s: %s", code, peer.hex(), reason)
        refuse = protocol.Refuse(
            code=code, reason=reason[:REASON_CHARS], run=run, seq=seq, retry_after=retry_after
        )
        self.replies.append((peer, refuse))
