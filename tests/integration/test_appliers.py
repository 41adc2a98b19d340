"""The appliers' contract with a backend: durable checkpoints bound reclaiming; aborts come last."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest
from collector_helpers import DEADLINE, Producer, close_event, run_events, running, scalar
from waiting import wait_for

from collector.backends.base import JsonlBackend, Rewind
from collector.pipeline import appliers, records
from collector.pipeline.files import FileStore
from producer.wire import protocol
from producer.wire.recordlog import list_segments


class Checkpointed(JsonlBackend):
    """A JSONL backend whose position becomes durable only at checkpoint (like ClearML's)."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.durable: dict[str, int] = {}
        self.allow = threading.Event()
        self.allow.set()
        self.checkpoints: list[tuple[str, int]] = []
        self.aborts: list[tuple[str, str, int]] = []

    def applied(self, run: str) -> int:
        return self.durable.get(run, 0)

    def checkpoint(self, run: str) -> None:
        if not self.allow.is_set():
            raise OSError("the backend cannot make its work durable right now")
        self.durable[run] = super().applied(run)
        self.checkpoints.append((run, self.durable[run]))

    def abort(self, run: str, reason: str) -> None:
        self.aborts.append((run, reason, super().applied(run)))


@pytest.mark.slow
def test_the_journal_is_reclaimed_only_up_to_the_durable_position(tmp_path: Path) -> None:
    data = tmp_path / "data"
    backend = Checkpointed(data / "records")
    backend.allow.clear()
    with (
        running(data, backend=backend, journal_segment_bytes=256) as collector,
        Producer(collector.bound_endpoint) as producer,
    ):
        events = run_events("r", 60)
        for start in range(0, 60, 10):  # one group commit each: several segments
            producer.submit(events[start : start + 10])
            producer.until_acked("r", start + 10)
        segments = data / "journal" / "r"
        assert len(list_segments(segments)) > 2
        # Applied but never made durable: the run stops there (its events wait in the journal)
        # and every segment stays, since a restart would need them.
        wait_for(lambda: collector.counters.snapshot().get("apply_error", 0) >= 2, what="failed checkpoints")
        assert "r" not in backend.durable
        assert list_segments(segments)[0][0] == 1
        backend.allow.set()  # the backend recovers: everything applies and becomes durable
        assert collector.wait_applied("r", 60, DEADLINE * 2)
        wait_for(lambda: backend.durable.get("r") == 60, what="the checkpoint")
        wait_for(lambda: list_segments(segments)[0][0] > 1, what="reclaiming")


def test_a_trickle_of_events_is_checkpointed_per_interval_not_per_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(appliers, "CHECKPOINT_SECONDS", 3600.0)  # no interval ends in this test
    data = tmp_path / "data"
    backend = Checkpointed(data / "records")
    with running(data, backend=backend) as collector, Producer(collector.bound_endpoint) as producer:
        for seq, event in enumerate(run_events("r", 8), start=1):  # one group commit each
            producer.submit([event])
            producer.until_acked("r", seq)
        assert collector.wait_applied("r", 8, DEADLINE)
        assert backend.checkpoints == []  # caught up eight times, never due
        assert collector.status().runs[0].applied == 8


@pytest.mark.slow
def test_a_run_that_caught_up_is_checkpointed_without_more_events(tmp_path: Path) -> None:
    data = tmp_path / "data"
    backend = Checkpointed(data / "records")
    with running(data, backend=backend) as collector, Producer(collector.bound_endpoint) as producer:
        producer.submit(run_events("r", 10))
        producer.until_acked("r", 10)
        wait_for(lambda: ("r", 10) in backend.checkpoints, what="a checkpoint at 10")
        producer.submit([scalar("r", 11)])
        wait_for(lambda: ("r", 11) in backend.checkpoints, what="a checkpoint at 11")


@pytest.mark.slow
def test_a_run_whose_producer_vanished_is_aborted_after_everything_is_applied(tmp_path: Path) -> None:
    data = tmp_path / "data"
    backend = Checkpointed(data / "records")
    with (
        running(data, backend=backend, heartbeat_timeout=1.0) as collector,
        Producer(collector.bound_endpoint) as producer,
    ):
        producer.submit(
            run_events("quiet", 5) + run_events("alive", 3) + [*run_events("done", 2), close_event("done", 3)]
        )
        producer.until_acked("done", 3)
        stop = threading.Event()

        def beat() -> None:  # the live producer keeps saying so
            with Producer(collector.bound_endpoint) as beating:
                while not stop.wait(0.2):
                    beating.send(protocol.Heartbeat(runs=["alive"]))

        beater = threading.Thread(target=beat)
        beater.start()
        try:
            wait_for(lambda: [a[0] for a in backend.aborts] == ["quiet"], timeout=DEADLINE, what="the abort")
            states = {info.run: info.state for info in collector.status().runs}
            assert states == {"quiet": "aborted", "alive": "open", "done": "completed"}
            _, reason, applied_before = backend.aborts[0]
            assert applied_before == 5, "the abort must come after every journaled event"
            assert "no heartbeat" in reason
            assert collector.counters.snapshot()["runs_aborted"] == 1
            # The producer comes back: the run is open again and its events still apply.
            producer.submit([scalar("quiet", 6)])
            producer.until_acked("quiet", 6)
            assert collector.wait_applied("quiet", 6, DEADLINE)
            assert {i.run: i.state for i in collector.status().runs}["quiet"] == "open"
        finally:
            stop.set()
            beater.join()


class Rewinding(Checkpointed):
    """Loses, once, what it applied since its last checkpoint (as ClearML does with a refused batch)."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.lose_once = threading.Event()
        self.durable_size: dict[str, int] = {}
        self.applies: list[int] = []

    def apply(self, run: str, event: protocol.Event, files: FileStore) -> None:
        super().apply(run, event, files)
        self.applies.append(event.seq)

    def checkpoint(self, run: str) -> None:
        state = self._file(run)
        if self.lose_once.is_set():
            self.lose_once.clear()
            # Reset its own state to the checkpoint before asking for the events again.
            os.ftruncate(state.fd, self.durable_size.get(run, 0))
            state.size, state.applied = self.durable_size.get(run, 0), self.applied(run)
            raise Rewind("the work since the last checkpoint was lost")
        super().checkpoint(run)
        self.durable_size[run] = state.size


@pytest.mark.slow
def test_a_rewind_applies_everything_since_the_durable_position_again(tmp_path: Path) -> None:
    data = tmp_path / "data"
    backend = Rewinding(data / "records")
    with running(data, backend=backend) as collector, Producer(collector.bound_endpoint) as producer:
        producer.submit(run_events("r", 10))
        producer.until_acked("r", 10)
        wait_for(lambda: backend.durable.get("r") == 10, what="a checkpoint at 10")
        backend.lose_once.set()
        more: list[protocol.Event | bytes] = [scalar("r", seq) for seq in range(11, 21)]
        producer.submit(more)
        producer.until_acked("r", 20)
        wait_for(lambda: backend.durable.get("r") == 20, what="a checkpoint at 20")
        assert collector.wait_applied("r", 20, DEADLINE)
        assert collector.counters.snapshot()["rewinds"] == 1
        assert "apply_error" not in collector.counters.snapshot()
    # Everything after the durable position went to the backend twice, and landed once.
    again = backend.applies[10:]
    restart = again.index(11, 1)
    assert again[:restart] == list(range(11, 11 + restart)), "the pass that was lost"
    assert again[restart:] == list(range(11, 21)), "re-applied in order, from the durable position"
    assert [line["seq"] for line in backend.records("r")] == list(range(1, 21))


class Unsure(JsonlBackend):
    """A JSONL backend that cannot tell the position of runs in ``broken`` (a damaged state file)."""

    def __init__(self, directory: Path, broken: set[str]) -> None:
        super().__init__(directory)
        self.broken = broken

    def applied(self, run: str) -> int:
        if run in self.broken:
            raise ValueError(f"state of run {run} is damaged")
        return super().applied(run)


@pytest.mark.slow
def test_a_run_whose_position_the_backend_cannot_tell_does_not_stop_the_others(tmp_path: Path) -> None:
    data = tmp_path / "data"
    backend = Unsure(data / "records", {"bad"})
    with running(data, backend=backend) as collector, Producer(collector.bound_endpoint) as producer:
        producer.submit(run_events("bad", 3) + run_events("good", 3))  # one group commit, both runs
        producer.recv_until(  # both acked (one Ack): journaled, whatever the backend says
            lambda r: isinstance(r, protocol.Ack) and r.runs.get("bad") == r.runs.get("good") == 3
        )
        wait_for(lambda: len(backend.records("good")) == 3, what="the good run to be applied")
        assert backend.records("bad") == []
        assert collector.counters.get("applier_error") >= 2  # asked on ingest, then by its thread
        backend.broken.clear()  # repaired: the run's thread, retrying, applies it
        wait_for(lambda: len(backend.records("bad")) == 3, what="the repaired run to be applied")
    # A restart with a run the backend cannot tell: the collector still starts and serves.
    backend = Unsure(data / "records", {"good"})
    with running(data, backend=backend) as collector, Producer(collector.bound_endpoint) as producer:
        producer.submit([scalar("bad", 4), close_event("bad", 5)])
        producer.until_acked("bad", 5)
        wait_for(lambda: len(backend.records("bad")) == 5, what="the other run to go on")
        assert [r["seq"] for r in backend.records("good")] == [1, 2, 3]


class FailingAt(JsonlBackend):
    """Fails the event ``seq`` ``times`` times; records every batch it is handed."""

    def __init__(self, directory: Path, seq: int, times: int) -> None:
        super().__init__(directory)
        self.seq, self.left = seq, times
        self.batches: list[tuple[str, int, int]] = []

    def apply_batch(self, run: str, events: Sequence[protocol.Event], files: FileStore) -> None:
        self.batches.append((type(events[0]).__name__, events[0].seq, events[-1].seq))
        super().apply_batch(run, events, files)

    def apply(self, run: str, event: protocol.Event, files: FileStore) -> None:
        if event.seq == self.seq and self.left:
            self.left -= 1
            raise ConnectionError(f"server hiccup at {event.seq}")
        super().apply(run, event, files)


def test_a_batch_that_fails_midway_counts_what_landed_and_retries_from_the_failure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    backend = FailingAt(data / "records", seq=150, times=2)
    with running(data, backend=backend) as collector, Producer(collector.bound_endpoint) as producer:
        producer.submit([*run_events("r", 300), close_event("r", 301)])
        producer.until_acked("r", 301)
        assert collector.wait_applied("r", 301, DEADLINE)
        counters = collector.status().counters
    assert [r["seq"] for r in backend.records("r")] == list(range(1, 302))  # each once, in order
    assert counters["applied"] == 301
    assert counters["applied.scalar"] == 299
    assert counters["apply_error"] == 2
    # One batch per kind; the scalars' batch again from the event that failed, twice.
    scalars = [b for b in backend.batches if b[0] == "Scalar"]
    assert scalars[0][1] == 2
    assert scalars[-1][2] == 300
    assert [b[1] for b in scalars[1:]] == [150, 150]
    assert "applying seqs 150..300 (scalar) failed" in caplog.text
    assert ("RunOpen", 1, 1) in backend.batches
    assert ("RunClose", 301, 301) in backend.batches


def test_a_run_far_behind_reads_its_journal_then_takes_the_commits_in_memory(tmp_path: Path) -> None:
    """A backend held up while thousands of events come: the journal first, then memory; each once."""
    data = tmp_path / "data"
    release = threading.Event()

    class Held(JsonlBackend):
        def apply(self, run: str, event: protocol.Event, files: FileStore) -> None:
            release.wait(DEADLINE)
            super().apply(run, event, files)

    backend = Held(data / "records")
    total = (records.RECENT_EVENTS * 2 // 250 + 2) * 250  # past what memory keeps, in chunks of 250
    with running(data, backend=backend) as collector, Producer(collector.bound_endpoint) as producer:
        events = run_events("r", total)
        for start in range(0, total, 250):
            producer.submit(events[start : start + 250])
            producer.until_acked("r", start + 250)
        release.set()
        assert collector.wait_applied("r", total, DEADLINE)
        for seq in range(total + 1, total + 201):  # caught up: these come from memory
            producer.submit([scalar("r", seq)])
            producer.until_acked("r", seq)
        assert collector.wait_applied("r", total + 200, DEADLINE)
        assert collector.status().counters["applied"] == total + 200
    assert [r["seq"] for r in backend.records("r")] == list(range(1, total + 201))
