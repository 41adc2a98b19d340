"""One run's delivery on the sender thread: its outbox reader, window and file in transfer.

:class:`Stream` joins the pure state machines (:class:`~producer.transport.window.StreamWindow`,
:class:`~producer.transport.transfer.FileTransfer`) to the run's outbox: it reads records into
the window, reads file chunks from the spooled blobs, moves the ack cursor and turns events that
cannot be sent into gaps. It never touches the socket; only the sender thread uses it.
"""

from __future__ import annotations

import logging
import os
import time

from producer.transport.outbox import Outbox
from producer.transport.runstate import RunState
from producer.transport.tally import Tally
from producer.transport.transfer import FileTransfer
from producer.transport.window import Entry, StreamWindow
from producer.wire import protocol
from producer.wire.recordlog import LogReader

# The name the sender's messages have always been logged under.
log = logging.getLogger("producer.transport.sender")


class Stream:
    """Sender-side state of one run's delivery (sender thread only)."""

    def __init__(self, state: RunState, outbox: Outbox, tally: Tally) -> None:
        self.state = state
        self.outbox = outbox
        self._tally = tally
        self.window = StreamWindow(outbox.acked)
        self.reader: LogReader = outbox.reader(outbox.acked + 1, on_damage=tally.on_damage(state.run_id))
        self.transfer: FileTransfer | None = None
        self._fd = -1  # the blob of the file in transfer

    # --------------------------------------------------------------------------- reading

    def fill(self) -> None:
        """Read events from the outbox into the window, up to its bounds."""
        window = self.window
        while room := window.room():
            records = self.reader.read(
                max_records=room,
                max_bytes=window.batch_bytes,
                max_seq=self.outbox.last_seq,  # only what the writer's appends committed
            )
            if not records:
                return
            for record in records:
                missing = window.missing_before(record.seq)
                if missing is not None:
                    # Damaged records: tell the collector, so the run does not wait for them.
                    window.push(self.gap(*missing, "outbox damage"))
                window.push(Entry(record.seq, record.seq, record.body, _file_of(record.body)))

    def gap(self, first: int, last: int, reason: str) -> Entry:
        """A Gap for seqs ``first`` .. ``last`` (counted as lost)."""
        self._tally.count("events_lost", last - first + 1)
        gap = protocol.Gap(run=self.state.run_id, seq=first, last=last, ts=time.time(), reason=reason)
        return Entry(first, last, protocol.encode(gap), None)

    def on_ack(self, acked_to: int, now: float) -> int:
        """The collector acked through ``acked_to``: release it; returns how many events it newly acks."""
        # A position beyond what we wrote would be another producer's run of the same id.
        position = min(acked_to, self.outbox.last_seq)
        before = self.window.acked
        reread = self.window.ack(position, now)
        if reread is None:
            return 0
        if reread:
            self.reader = self.outbox.reader(position + 1, self._tally.on_damage(self.state.run_id))
        if self.transfer is not None and self.transfer.seq <= position:
            self.end_transfer()  # the collector had that event already
        self.outbox.mark_acked(position)
        return position - before

    # ----------------------------------------------------------------------------- files

    def start_transfer(self, entry: Entry, now: float) -> FileTransfer | None:
        """Open the blob of ``entry``'s file; None when it is missing (the entry is a gap now)."""
        assert entry.file is not None
        self.end_transfer()
        try:
            fd = os.open(self.outbox.blob_path(entry.seq), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self.replace_with_gap(entry, "spooled file is missing")
            return None
        self._fd = fd
        self.transfer = FileTransfer(entry.seq, entry.file, now)
        return self.transfer

    def read_chunk(self, offset: int, buffer: bytearray) -> memoryview:
        """Read the chunk of the file in transfer at ``offset`` into ``buffer``: a view of what was read.

        Empty past the blob's end. ``buffer`` holds :data:`~producer.wire.protocol.CHUNK_BYTES`.
        """
        return memoryview(buffer)[: os.preadv(self._fd, [buffer], offset)]

    def end_transfer(self) -> None:
        if self.transfer is not None:
            os.close(self._fd)
            self._fd = -1
            self.transfer = None

    def replace_with_gap(self, entry: Entry, reason: str) -> None:
        """An event whose file cannot be sent becomes a Gap: the run must not stall on it."""
        self._tally.count("files_missing")
        self._tally.log_once(
            log,
            logging.WARNING,
            ("blob", self.state.run_id),
            "clearml-relay: run %s event %d: %s (%s); it is sent as a gap",
            self.state.run_id,
            entry.seq,
            reason,
            self.outbox.blob_path(entry.seq),
        )
        self.end_transfer()
        gap = self.gap(entry.seq, entry.last, f"{reason}: {entry.file.name if entry.file else ''}")
        self.window.replace(entry, gap)


def _file_of(body: bytes) -> protocol.FileRef | None:
    try:
        return protocol.event_file(protocol.decode_event(body))
    except protocol.ProtocolError:
        return None  # sent as written: the collector refuses it and journals a gap
