"""The journal: group commit before ack, positions and metadata across restarts, damage, reclaim."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from collector_helpers import (
    DEADLINE,
    Producer,
    close_event,
    open_event,
    records,
    run_events,
    running,
    scalar,
)
from waiting import wait_for

from collector.storage.journal import Entry, Journal
from producer.wire import protocol
from producer.wire.recordlog import LogReader, list_segments


def entries(events: list[protocol.Event]) -> list[Entry]:
    return [Entry(event.seq, protocol.encode(event), event) for event in events]


def test_positions_and_meta_survive_reopen(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    seen: list[tuple[str, int]] = []
    journal.add_listener(lambda run, position, _entries: seen.append((run, position)))
    assert journal.append_batch({"a": entries(run_events("a", 3)), "b": entries([open_event("b")])}) == set()
    assert seen == [("a", 3), ("b", 1)]
    journal.append_batch({"a": entries([close_event("a", 4)])})
    assert json.loads((tmp_path / "a" / "meta.json").read_text())["state"] == "completed"
    size = journal.size_bytes()
    journal.close()

    reopened = Journal(tmp_path)
    assert reopened.runs() == ["a", "b"]
    assert (reopened.position("a"), reopened.position("b"), reopened.position("c")) == (4, 1, 0)
    meta = reopened.meta("a")
    assert (meta.project, meta.name, meta.state) == ("proj", "train", "completed")
    assert reopened.meta("b").state == "open"
    assert reopened.size_bytes() == size
    # An ended run's log is closed; a late event still lands, in order, in a new segment.
    reopened.append_batch({"a": entries([scalar("a", 5)])})
    assert reopened.position("a") == 5
    assert [rec.seq for rec in reopened.reader("a", 1).read()] == [1, 2, 3, 4, 5]
    reopened.close()


def test_a_trailing_gap_keeps_its_last_seq_as_position(tmp_path: Path) -> None:
    journal = Journal(tmp_path, fsync=False)
    gap = protocol.Gap(run="r", seq=2, last=7, reason="lost in the producer's outbox")
    journal.append_batch({"r": entries([open_event("r"), gap])})
    assert journal.position("r") == 7
    journal.close()
    reopened = Journal(tmp_path)
    assert reopened.position("r") == 7
    reopened.close()


def test_acked_events_are_in_the_journal_on_disk_as_received(tmp_path: Path) -> None:
    data = tmp_path / "data"
    events = run_events("r", 3)
    with running(data) as collector, Producer(collector.bound_endpoint) as producer:
        producer.submit(events)
        producer.until_acked("r", 3)
        # Read the segment files directly, while the collector still runs.
        on_disk = LogReader(data / "journal" / "r").read()
        assert [(rec.seq, rec.body) for rec in on_disk] == [(e.seq, protocol.encode(e)) for e in events]


def test_journal_damage_is_applied_as_a_gap_and_counted(tmp_path: Path) -> None:
    data = tmp_path / "data"
    journal = Journal(data / "journal")
    journal.append_batch({"r": entries(run_events("r", 5))})
    journal.close()
    [(_, segment)] = list_segments(data / "journal" / "r")
    raw = bytearray(segment.read_bytes())
    third = raw.find(protocol.encode(scalar("r", 3)))
    raw[third + 10] ^= 0xFF  # flip a bit inside record 3: its checksum no longer matches
    segment.write_bytes(bytes(raw))

    with running(data) as collector:
        assert collector.wait_applied("r", 5, DEADLINE)
        counters = collector.status().counters
        assert counters["journal_damage"] >= 1
        assert counters["journal_gaps"] == 1
    lines = records(data, "r")
    assert [line["seq"] for line in lines] == [1, 2, 3, 4, 5]
    assert lines[2]["event"]["t"] == "gap"
    assert (lines[2]["event"]["seq"], lines[2]["event"]["last"]) == (3, 3)


@pytest.mark.slow
def test_applied_segments_are_reclaimed(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with (
        running(data, journal_segment_bytes=512) as collector,
        Producer(collector.bound_endpoint) as producer,
    ):
        for seq in range(1, 41):
            producer.submit([open_event("r") if seq == 1 else scalar("r", seq)])
            producer.until_acked("r", seq)
        assert collector.wait_applied("r", 40, DEADLINE)
        producer.submit([close_event("r", 41)])
        producer.until_acked("r", 41)
        assert collector.wait_applied("r", 41, DEADLINE)
        # Reclaiming follows the apply; once the run is finished and applied its journal is
        # retired whole: no segment stays, meta.json keeps the position.
        wait_for(lambda: not list_segments(data / "journal" / "r"), what="segments reclaimed")
    with running(data) as collector, Producer(collector.bound_endpoint) as producer:
        info = producer.status().runs[0]
        assert (info.journaled, info.applied, info.state) == (41, 41, "completed")
        producer.submit([scalar("r", 41)])
        assert producer.recv() == protocol.Ack(runs={"r": 41})
    assert [line["seq"] for line in records(data, "r")] == list(range(1, 42))


def test_run_dirs_that_are_not_run_ids_are_ignored(tmp_path: Path) -> None:
    (tmp_path / "not a run").mkdir()
    (tmp_path / "stray.txt").write_text("x")
    journal = Journal(tmp_path)
    assert journal.runs() == []
    journal.close()


def test_an_open_runs_journal_is_retired_only_when_asked_and_its_seq_goes_on(tmp_path: Path) -> None:
    """At the size cap the collector retires fully applied open runs: one segment must not pin it."""
    journal = Journal(tmp_path / "journal")
    journal.append_batch({"r": entries(run_events("r", 5))})  # open + 4 scalars, one segment
    held = journal.size_bytes()
    assert journal.retire("r", durable=5) == 0, "an open run is retired only when asked"
    assert journal.retire("r", durable=4, open_too=True) == 0, "not before all of it is applied"
    assert journal.retire("r", durable=5, open_too=True) == held
    assert journal.size_bytes() == 0
    assert not list_segments(tmp_path / "journal" / "r")
    assert journal.position("r") == 5
    assert journal.append_batch({"r": entries([scalar("r", 6)])}) == set()
    journal.close()
    reopened = Journal(tmp_path / "journal")
    assert reopened.position("r") == 6, "the seq continues after the retired position, across a restart"
    assert [record.seq for record in reopened.reader("r", 1).read()] == [6]
    reopened.close()
