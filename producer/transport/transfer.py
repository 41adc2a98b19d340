"""One file on its way to the collector: a pure state machine, no sockets, no files, no clock.

A file goes as a ``FileOffer``, whose ``FileStatus`` answer says how much the collector already
has, then as ``FileChunk`` messages, at most ``credit`` of them ahead of their answers. An
answer that does not match what was sent (a lost chunk, a rejected file) makes the transfer
resume where the collector is; answers still due for chunks sent before that only return
credit. Silence (no answer for ``resend_after``) offers the file again: after a reconnect or a
collector restart its answer tells where to resume. The sender reads the chunks and sends the
messages; :class:`FileTransfer` says which to send.
"""

from __future__ import annotations

import collections
import enum
from typing import Final, Literal

from producer.transport.window import RESEND_AFTER
from producer.wire import protocol

#: File chunks sent ahead of their FileStatus answers: 4 MiB in flight per file keeps a file
#: moving as fast at 8 did here, and 10 files at once hold 40 MiB in the collector, not 80.
CREDIT: Final = 4


class StatusOutcome(enum.Enum):
    """What a ``FileStatus`` answer did to the transfer."""

    COMPLETE = "complete"  # the collector holds the whole file: the transfer is over
    OFFER_ANSWERED = "offer-answered"  # chunks go from where the collector is
    ACCEPTED = "accepted"  # the chunk arrived as sent; its credit returns
    STALE = "stale"  # an answer to a chunk sent before a resume: it only returns credit
    RESUMED = "resumed"  # the collector is not where we are: chunks go from where it is
    REJECTED = "rejected"  # the collector rejected the file: it is sent again from where it is
    IGNORED = "ignored"  # no offer awaits an answer (a late answer from before a restart)


class FileTransfer:
    """The file of the event at ``seq``: what was offered, sent and answered.

    Args:
        seq: the event the file belongs to.
        ref: the file (its sha256 names it on the wire, its size says when it is all sent).
        now: when the transfer starts (the silence clock).
        credit: chunks in flight at most.
        resend_after: silence (no answer while answers are due) after which the file is offered again.

    """

    def __init__(
        self,
        seq: int,
        ref: protocol.FileRef,
        now: float,
        *,
        credit: int = CREDIT,
        resend_after: float = RESEND_AFTER,
    ) -> None:
        self.seq = seq
        self.ref = ref
        self.credit = credit
        self.resend_after = resend_after
        self.offer: Literal["due", "sent", "answered"] = "due"
        #: The offset of the next chunk to send.
        self.next_offset = 0
        #: End offsets of the chunks sent and not yet answered, oldest first.
        self.inflight: collections.deque[int] = collections.deque()
        #: Answers due for chunks sent before a resume: they only return credit.
        self.stale = 0
        self.last_activity = now

    # --------------------------------------------------------------------------- sending

    def offer_due(self) -> bool:
        return self.offer == "due"

    def offer_sent(self, now: float) -> None:
        self.offer, self.last_activity = "sent", now

    def next_chunk(self) -> int | None:
        """The offset of the chunk to send now, or None (no answer to the offer, no credit, all sent)."""
        if self.offer != "answered" or len(self.inflight) + self.stale >= self.credit:
            return None
        return self.next_offset if self.next_offset < self.ref.size else None

    def chunk_sent(self, length: int, now: float) -> None:
        """The chunk at :attr:`next_offset` went out with ``length`` bytes."""
        if not self.inflight and not self.stale:
            self.last_activity = now  # answers are due from now on
        self.next_offset += length
        self.inflight.append(self.next_offset)

    # ------------------------------------------------------------------------- answers

    def on_status(self, have: int, *, complete: bool, error: str, now: float) -> StatusOutcome:
        """The collector's ``FileStatus``: it holds ``have`` bytes (all of them if ``complete``).

        ``error``: why the collector rejected the file ("" if it did not).
        """
        self.last_activity = now
        if complete:
            return StatusOutcome.COMPLETE
        if self.offer != "answered":
            if self.offer == "sent":  # the answer to our offer: resume where the collector is
                self.offer, self.next_offset = "answered", have
                return StatusOutcome.OFFER_ANSWERED
            return StatusOutcome.IGNORED
        if self.stale:
            self.stale -= 1
            return StatusOutcome.STALE
        expected = self.inflight.popleft() if self.inflight else None
        if error or (expected is not None and have != expected):
            # Resume where the collector is; answers to chunks already sent only return credit.
            self.next_offset = have
            self.stale = len(self.inflight)
            self.inflight.clear()
            return StatusOutcome.REJECTED if error else StatusOutcome.RESUMED
        return StatusOutcome.ACCEPTED

    def waiting(self) -> bool:
        """Whether an answer is due (to the offer or to chunks in flight)."""
        return self.offer == "sent" or bool(self.inflight) or bool(self.stale)

    def check_silence(self, now: float) -> bool:
        """True (and the file is offered again) after ``resend_after`` without a due answer."""
        if self.waiting() and now - self.last_activity > self.resend_after:
            self.restart()
            return True
        return False

    def restart(self) -> None:
        """Offer the file again: the collector's answer tells where to resume."""
        self.offer, self.next_offset, self.stale = "due", 0, 0
        self.inflight.clear()
