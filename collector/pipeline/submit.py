"""The events of a ``Submit``: who may write a run, and each event accepted once, in seq order.

Events are accepted strictly in seq order per run (see :mod:`producer.wire.protocol`) against
the journaled position plus what this batch already accepted: a duplicate is acked again, a gap
is answered with a ``Nack`` naming the next expected seq, and an event that cannot be decoded or
is invalid still consumes its seq as a journaled ``Gap`` (the run never stalls behind it).

A run belongs to the writer (producer outbox) that opened it: another writer's events are
refused with ``conflict``. With CURVE (see :mod:`collector.pipeline.security`) every message
carries its producer's public key: a run belongs to the first key that writes to it, other keys
are refused with ``denied``, and a key's open runs are capped (``limit``).
"""

from __future__ import annotations

import logging

import msgspec

from collector.counters import Counters
from collector.pipeline.batch import BACKOFF_SECONDS, REASON_CHARS, Batch
from collector.pipeline.files import FileStore
from collector.pipeline.security import Owners
from collector.storage import paths
from collector.storage.journal import Entry, Journal, kind
from producer.wire import protocol

log = logging.getLogger("collector.pipeline.ingest")  # split out of ingest: log lines keep its name

#: Why a pickled figure is refused (the producer logs it; the run's task shows the gap).
PICKLE_REFUSED = (
    "this collector does not accept pickled figures (unpickling runs the sender's code): start it "
    "with --allow-pickled-figures, or set CLEARML_RELAY_FIGURES=render on the producer"
)


class Submits:
    """Takes each event of a Submit into a :class:`Batch`, or answers why not.

    Args:
        journal: Where the runs' positions and writers are read.
        files: Where the files events refer to are checked.
        counters: Where duplicates, gaps and missing files are counted.
        owners: Run ownership by producer key (CURVE); None: any peer writes any run.
        max_runs_per_key: Open runs one key may own; beyond, new runs are refused (``limit``).
        allow_pickled_figures: Accept figures sent as pickles (else each one is refused).

    """

    def __init__(
        self,
        journal: Journal,
        files: FileStore,
        *,
        counters: Counters,
        owners: Owners | None,
        max_runs_per_key: int,
        allow_pickled_figures: bool = False,
    ) -> None:
        self.journal = journal
        self.files = files
        self.counters = counters
        self.owners = owners
        self.max_runs_per_key = max_runs_per_key
        self.allow_pickled_figures = allow_pickled_figures
        #: (run, writer) pairs refused as conflicting, logged once each.
        self._conflicts: set[tuple[str, str]] = set()

    def event(self, peer: bytes, raw: msgspec.Raw, batch: Batch, writer: str | None = None) -> None:
        """Dedup, order and validate one event of a Submit; journal it or its Gap, or refuse."""
        body = bytes(raw)
        event: protocol.Event | None
        error: protocol.ProtocolError | None = None
        try:
            event = protocol.decode_event(body)
            run, seq = event.run, event.seq
            batch.counts[f"received.{kind(event)}"] += 1
        except protocol.ProtocolError as exc:
            batch.counts["received.undecodable"] += 1
            event, error = None, exc
            ident = protocol.peek_event_id(body)
            if ident is None:
                batch.refuse(peer, exc.code, exc.reason)
                return
            run, seq = ident
        if not paths.is_safe_run(run):
            batch.refuse(peer, "invalid", f"run id {run!r} is reserved", seq=seq)
            return
        conflict = self.conflict(run, writer, batch)
        if conflict:
            # Checked before dedup: the other writer's seqs would pass for duplicates and be lost.
            if (peer, run) not in batch.stalled:
                batch.stalled.add((peer, run))
                batch.refuse(peer, "conflict", conflict, run=run, seq=seq)
            return
        if self._authorized(peer, run, seq, batch) and self._next_in_order(peer, run, seq, batch):
            if isinstance(event, protocol.RunOpen) and writer is not None:
                batch.writers[run] = writer  # seq 1 of a new run: this writer owns it from now on
            self._accept(batch, peer, run=run, seq=seq, body=body, event=event, error=error)
            if self.owners is not None:
                if isinstance(event, protocol.RunClose):
                    self.owners.closed(run)
                else:  # an aborted run that goes on holds a slot again (saved before the ack)
                    self.owners.reopened(run)

    def conflict(self, run: str, writer: str | None, batch: Batch) -> str:
        """Why ``writer`` may not write to ``run`` ("" if it may): another writer opened it."""
        owner = batch.writers.get(run) or self.journal.meta(run).writer
        if not owner or writer is None or writer == owner:
            return ""
        if (run, writer) not in self._conflicts:
            self._conflicts.add((run, writer))
            log.warning(
                "run %s: refusing events of writer %s, the run was opened by writer %s (run id reused)",
                run,
                writer,
                owner,
                extra={"run": run},
            )
        return (
            f"run id {run} is already used by another producer (writer {owner[:8]}, this outbox is "
            f"writer {writer[:8]}): its events are not accepted; give every run its own run id "
            f"(to continue that run's ClearML task, start a new run id with resume_run={run!r})"
        )

    def _authorized(self, peer: bytes, run: str, seq: int, batch: Batch) -> bool:
        """Whether the message's key may write to ``run``; the first key to write claims it."""
        owners, key = self.owners, batch.key
        if owners is None:
            return True
        owner = owners.owner(run)
        if owner is not None and owner == key:
            return True
        if owner is None and key is not None:
            held = owners.open_runs(key)
            if held < self.max_runs_per_key:
                owners.claim(run, key)
                return True
            reason = (
                f"this producer key has {held} open runs, the collector's limit "
                "(CLEARML_RELAY_MAX_RUNS_PER_KEY): close runs first"
            )
            batch.refuse(peer, "limit", reason, run=run, seq=seq)
            return False
        batch.refuse(peer, "denied", f"run {run} belongs to another producer key", run=run, seq=seq)
        return False

    def _next_in_order(self, peer: bytes, run: str, seq: int, batch: Batch) -> bool:
        """Whether the event is the run's next; answers duplicates, gaps and backoff itself.

        The run id was checked by the caller.
        """
        position = batch.position(run)
        if seq <= position:
            self.counters.incr("duplicates")
            batch.ack(peer, run)
            return False
        if (peer, run) in batch.stalled:
            return False
        if seq > position + 1:
            batch.nack(peer, run, position + 1)
            return False
        if batch.over_quota:
            batch.stalled.add((peer, run))
            batch.refuse(
                peer,
                "backoff",
                "the collector's journal is full: keep spooling",
                run=run,
                seq=seq,
                retry_after=BACKOFF_SECONDS,
            )
            return False
        return True

    def _accept(
        self,
        batch: Batch,
        peer: bytes,
        *,
        run: str,
        seq: int,
        body: bytes,
        event: protocol.Event | None,
        error: protocol.ProtocolError | None,
    ) -> None:
        """Accept the run's next event into the batch, or a Gap in place of a refused one."""
        if isinstance(event, protocol.Gap) and event.last < event.seq:
            error = protocol.ProtocolError("invalid", f"gap ends at {event.last}, before {seq}")
            event = None
        if isinstance(event, protocol.Figure) and event.format == "pickle" and not self.allow_pickled_figures:
            error, event = protocol.ProtocolError("invalid", PICKLE_REFUSED), None
        if event is None:
            assert error is not None
            # A refused event still consumes its seq, so the run never stalls behind it.
            gap = protocol.Gap(
                run=run, seq=seq, last=seq, reason=f"refused ({error.code}): {error.reason}"[:REASON_CHARS]
            )
            batch.accept(peer, run, Entry(seq, protocol.encode(gap), gap))
            self.counters.incr("gaps_journaled")
            batch.refuse(peer, error.code, error.reason, run=run, seq=seq)
            return
        ref = protocol.event_file(event)
        if ref is not None and not self.files.is_complete(run, ref.sha256):
            # The producer keeps the file until the event is acked: have it offered again.
            self.counters.incr("file_missing")
            batch.nack(peer, run, seq)
            return
        batch.accept(peer, run, Entry(seq, body, event))
