"""What appliers take from the latest commits (Recent) and how they cut batches."""

from __future__ import annotations

from collector.pipeline import records
from collector.pipeline.records import Recent
from collector.storage.journal import Entry
from producer.wire import protocol


def entries(first: int, last: int, body: bytes = b"x" * 10) -> list[Entry]:
    return [
        Entry(seq, body, protocol.Scalar(run="r", seq=seq, title="t", series="s", value=1.0, iteration=seq))
        for seq in range(first, last + 1)
    ]


def seqs(events: list[protocol.Event]) -> list[int]:
    return [event.seq for event in events]


def test_a_contiguous_stretch_is_kept_and_taken_from_the_applied_position() -> None:
    recent = Recent()
    recent.add(entries(1, 5), applied=0)
    recent.add(entries(6, 8), applied=0)
    assert recent.first() == 1
    assert seqs(recent.take(1, 4)) == [1, 2, 3, 4]
    assert seqs(recent.take(4, 100)) == [4, 5, 6, 7, 8]  # what is below the start is dropped
    assert recent.first() == 4
    assert recent.take(9, 10) == []


def test_a_commit_that_does_not_follow_is_not_kept() -> None:
    recent = Recent()
    recent.add(entries(1, 3), applied=0)
    recent.add(entries(5, 6), applied=0)  # 4 is missing: only the journal can say what it is
    assert seqs(recent.take(1, 10)) == [1, 2, 3]


def test_a_stretch_ahead_of_the_applier_waits_for_it() -> None:
    recent = Recent()
    recent.add(entries(50, 60), applied=10)  # 11..49 are only in the journal
    assert recent.first() == 50
    assert recent.take(11, 10) == []  # the applier reads 11..49 from the journal
    assert recent.first() == 50
    assert seqs(recent.take(50, 3)) == [50, 51, 52]


def test_what_is_applied_is_dropped_when_a_commit_comes() -> None:
    recent = Recent()
    recent.add(entries(1, records.RECENT_EVENTS), applied=0)
    recent.add(entries(records.RECENT_EVENTS + 1, records.RECENT_EVENTS + 1), applied=0)  # full
    assert recent.take(records.RECENT_EVENTS + 1, 1) == []
    recent.add(entries(records.RECENT_EVENTS + 2, records.RECENT_EVENTS + 2), applied=records.RECENT_EVENTS)
    # Applied through the cap: everything dropped, and a new stretch starts at the commit.
    assert recent.first() == records.RECENT_EVENTS + 2


def test_the_kept_bytes_are_bounded() -> None:
    recent = Recent()
    big = records.RECENT_BYTES // 2 + 1
    recent.add(entries(1, 1, b"x" * big), applied=0)
    recent.add(entries(2, 2, b"x" * big), applied=0)  # would pass the cap: not kept
    assert seqs(recent.take(1, 10)) == [1]
    recent.add(entries(3, 3, b"x" * big), applied=1)  # 1 is applied: its bytes are free again
    assert recent.first() == 3  # a new stretch, ahead: the applier reads 2 from the journal
    assert recent.take(2, 10) == []


def test_batches_cut_at_a_change_of_kind_and_at_the_batch_size() -> None:
    events: list[protocol.Event] = [e.event for e in entries(1, records.BATCH_EVENTS + 2)]
    events.append(protocol.RunClose(run="r", seq=records.BATCH_EVENTS + 3))
    cut = [(name, len(batch)) for name, batch in records.batches(events)]
    assert cut == [("scalar", records.BATCH_EVENTS), ("scalar", 2), ("close", 1)]
