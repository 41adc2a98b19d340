"""Ingest over real sockets: ordering, dedup, nacks, garbage handling, backoff, isolation."""

from __future__ import annotations

import struct
import threading
from pathlib import Path
from typing import Any

import msgspec
import pytest
from collector_helpers import (
    DEADLINE,
    Producer,
    close_event,
    make_config,
    open_event,
    raw_event,
    records,
    run_events,
    running,
    scalar,
)
from waiting import wait_for

from collector.backends.base import JsonlBackend
from collector.pipeline.files import FileStore
from collector.service.server import Collector, DataDirBusyError
from producer.wire import protocol


def applied_seqs(data_dir: Path, run: str) -> list[int]:
    return [line["seq"] for line in records(data_dir, run)]


def test_in_order_dedup_and_nack(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with running(data) as collector, Producer(collector.bound_endpoint) as producer:
        producer.submit(run_events("r1", 3))
        assert producer.until_acked("r1", 3) == [protocol.Ack(runs={"r1": 3})]

        producer.submit([scalar("r1", 2), scalar("r1", 3)])  # a resend: acked, not stored again
        assert producer.recv() == protocol.Ack(runs={"r1": 3})

        producer.submit([scalar("r1", 5), scalar("r1", 6), scalar("r1", 7)])  # 4 was lost
        assert producer.recv() == protocol.Nack(run="r1", expect=4)  # once per run per batch

        producer.submit([scalar("r1", 3), scalar("r1", 4), scalar("r1", 5)])
        assert producer.recv() == protocol.Ack(runs={"r1": 5})

        assert collector.wait_applied("r1", 5, DEADLINE)
        status = producer.status()
        assert status.counters["duplicates"] == 3
        assert status.counters["nacks"] == 1
        assert status.counters["events_journaled"] == 5
    assert applied_seqs(data, "r1") == [1, 2, 3, 4, 5]


def test_one_ack_per_peer_lists_every_touched_run(tmp_path: Path) -> None:
    with running(tmp_path / "data") as collector, Producer(collector.bound_endpoint) as producer:
        producer.submit([*run_events("a", 2), *run_events("b", 3)])
        assert producer.recv() == protocol.Ack(runs={"a": 2, "b": 3})
        status = producer.status()
        infos = {info.run: info for info in status.runs}
        assert infos["a"].journaled == 2
        assert infos["b"].project == "proj"
        assert infos["b"].name == "train"
        assert infos["b"].state == "open"


def test_producer_gap_covering_several_seqs_moves_the_position(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with running(data) as collector, Producer(collector.bound_endpoint) as producer:
        gap = protocol.Gap(run="g", seq=2, last=4, reason="outbox damage")
        producer.submit([open_event("g"), gap, scalar("g", 5)])
        assert producer.recv() == protocol.Ack(runs={"g": 5})
        assert collector.wait_applied("g", 5, DEADLINE)
    with running(data) as collector, Producer(collector.bound_endpoint) as producer:
        producer.submit([scalar("g", 4), scalar("g", 6)])
        assert producer.recv() == protocol.Ack(runs={"g": 6})
        assert collector.wait_applied("g", 6, DEADLINE)
    assert applied_seqs(data, "g") == [1, 2, 5, 6]


def test_restart_keeps_positions_and_never_applies_twice(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with running(data) as collector, Producer(collector.bound_endpoint) as producer:
        producer.submit(run_events("r", 4))
        producer.until_acked("r", 4)
        assert collector.wait_applied("r", 4, DEADLINE)
    with running(data) as collector, Producer(collector.bound_endpoint) as producer:
        status = producer.status()
        assert [(i.run, i.journaled, i.applied) for i in status.runs] == [("r", 4, 4)]
        producer.submit([*run_events("r", 6)[1:], close_event("r", 7)])  # 2..4 are resends
        assert producer.recv() == protocol.Ack(runs={"r": 7})
        assert collector.wait_applied("r", 7, DEADLINE)
        assert producer.status().runs[0].state == "completed"
    assert applied_seqs(data, "r") == [1, 2, 3, 4, 5, 6, 7]


def test_events_journaled_but_not_applied_apply_once_after_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    release, stuck = threading.Event(), threading.Event()

    class Stuck(JsonlBackend):
        def apply(self, run: str, event: protocol.Event, files: FileStore) -> None:
            if event.seq > 2:
                stuck.set()
                release.wait()
                raise RuntimeError("backend is down")
            super().apply(run, event, files)

    collector = Collector(make_config(data, drain_timeout=0.2), backend=Stuck(data / "records"))
    with collector, Producer(collector.bound_endpoint) as producer:
        producer.submit(run_events("r", 5))
        producer.until_acked("r", 5)
        assert stuck.wait(DEADLINE)
        # The events are applied as one batch: the first two count once the third has failed.
        release.set()  # the stuck apply raises and the stop interrupts its retry
        assert collector.wait_applied("r", 2, DEADLINE)
    assert applied_seqs(data, "r") == [1, 2]
    with running(data) as collector:
        assert collector.wait_applied("r", 5, DEADLINE)
    assert applied_seqs(data, "r") == [1, 2, 3, 4, 5]


GARBAGE: dict[str, tuple[list[bytes], str]] = {
    "not_msgpack": ([protocol.HEADER, b"\xc1\xc1 not msgpack"], "malformed"),
    "one_frame": ([protocol.HEADER], "malformed"),
    "four_frames": ([protocol.HEADER, b"a", b"b", b"c"], "malformed"),
    "wrong_type": ([protocol.HEADER, msgspec.msgpack.encode({"t": "submit", "events": 3})], "malformed"),
    "stray_payload": ([protocol.HEADER, protocol.encode(protocol.StatusRequest()), b"x"], "malformed"),
    "wrong_version": ([protocol.MAGIC + struct.pack(">H", 99), b"\x80"], "version"),
    "not_our_header": ([b"GET / HTTP/1.1\r\n", b"\x80"], "version"),
    "unknown_type": ([protocol.HEADER, msgspec.msgpack.encode({"t": "teleport", "x": 1})], "unknown_type"),
    "oversize_body": ([protocol.HEADER, b"\x00" * 5000], "too_large"),
    "oversize_chunk": (
        [
            protocol.HEADER,
            protocol.encode(protocol.FileChunk(run="r", sha256="0" * 64, offset=0)),
            b"\x00" * 5000,
        ],
        "too_large",
    ),
    "reserved_run_offer": (
        [protocol.HEADER, protocol.encode(protocol.FileOffer(run="..", sha256="0" * 64, size=1))],
        "malformed",  # the protocol's run id pattern refuses dot-names before any path is built
    ),
}


@pytest.mark.parametrize("kind", sorted(GARBAGE))
@pytest.mark.slow
def test_garbage_is_refused_counted_and_serving_goes_on(tmp_path: Path, kind: str) -> None:
    frames, code = GARBAGE[kind]
    data = tmp_path / "data"
    with running(data, max_body_bytes=4096) as collector, Producer(collector.bound_endpoint) as bad:
        bad.send_frames(frames)
        refuse = bad.expect(protocol.Refuse)
        assert refuse.code == code
        assert refuse.reason
        if kind == "wrong_version":
            assert "protocol 99" in refuse.reason
            assert f"speaks {protocol.PROTOCOL_VERSION}" in refuse.reason
        with Producer(collector.bound_endpoint) as good:
            good.submit(run_events("ok", 3))
            assert good.recv() == protocol.Ack(runs={"ok": 3})
            assert collector.wait_applied("ok", 3, DEADLINE)
            assert good.status().counters[f"refused_{code}"] == 1
    assert applied_seqs(data, "ok") == [1, 2, 3]
    assert not list(data.glob("0000*"))  # a ".." run id never put a file beside the data


BAD_EVENTS: dict[str, tuple[dict[str, Any], str]] = {
    "empty_title": (
        {"t": "scalar", "run": "r", "seq": 2, "title": "", "series": "s", "value": 1.0, "iteration": 0},
        "invalid",
    ),
    "value_not_a_number": (
        {"t": "scalar", "run": "r", "seq": 2, "title": "a", "series": "s", "value": "x", "iteration": 0},
        "invalid",
    ),
    "unknown_event_type": ({"t": "hologram", "run": "r", "seq": 2}, "unknown_type"),
    "gap_ending_before_it_starts": ({"t": "gap", "run": "r", "seq": 2, "last": 1, "reason": "?"}, "invalid"),
}


@pytest.mark.parametrize("kind", sorted(BAD_EVENTS))
@pytest.mark.slow
def test_invalid_event_becomes_a_journaled_gap(tmp_path: Path, kind: str) -> None:
    fields, code = BAD_EVENTS[kind]
    data = tmp_path / "data"
    with running(data) as collector, Producer(collector.bound_endpoint) as producer:
        producer.submit([open_event("r"), raw_event(**fields), scalar("r", 3)])
        replies = producer.until_acked("r", 3)
        refuse = replies[0]
        assert isinstance(refuse, protocol.Refuse)
        assert (refuse.code, refuse.run, refuse.seq) == (code, "r", 2)
        assert replies[-1] == protocol.Ack(runs={"r": 3})
        assert collector.wait_applied("r", 3, DEADLINE)
        counters = producer.status().counters
        assert counters[f"refused_{code}"] == 1
        assert counters["gaps_journaled"] == 1
    lines = records(data, "r")
    assert [line["seq"] for line in lines] == [1, 2, 3]
    assert lines[1]["event"]["t"] == "gap"
    assert lines[1]["event"]["last"] == 2
    assert code in lines[1]["event"]["reason"]


def test_event_without_recoverable_id_is_refused_and_not_journaled(tmp_path: Path) -> None:
    with running(tmp_path / "data") as collector, Producer(collector.bound_endpoint) as producer:
        producer.submit(
            [open_event("r"), raw_event(t="scalar", run="r", seq=-5), msgspec.msgpack.encode([1])]
        )
        replies = producer.until_acked("r", 1)
        codes = [r.code for r in replies if isinstance(r, protocol.Refuse)]
        assert codes == ["invalid", "invalid"]
        assert all(r.run is None for r in replies if isinstance(r, protocol.Refuse))
        assert producer.status().runs[0].journaled == 1


def test_reserved_run_id_in_an_event_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with running(data) as collector, Producer(collector.bound_endpoint) as producer:
        producer.submit([open_event(".."), open_event(".")])
        refusals = [producer.expect(protocol.Refuse), producer.expect(protocol.Refuse)]
        assert {r.code for r in refusals} == {"invalid"}
        assert producer.status().runs == []
    assert sorted(p.name for p in (data / "journal").iterdir()) == []


def test_journal_full_answers_backoff_and_still_acks_duplicates(tmp_path: Path) -> None:
    with (
        running(tmp_path / "data", max_journal_bytes=1) as collector,
        Producer(collector.bound_endpoint) as producer,
    ):
        producer.submit([open_event("r")])
        assert producer.recv() == protocol.Ack(runs={"r": 1})
        producer.submit([open_event("r"), scalar("r", 2), scalar("r", 3)])
        refuse = producer.recv()
        assert isinstance(refuse, protocol.Refuse)
        assert (refuse.code, refuse.run, refuse.seq) == ("backoff", "r", 2)
        assert refuse.retry_after is not None
        assert refuse.retry_after > 0
        assert producer.recv() == protocol.Ack(runs={"r": 1})
        assert producer.status().counters["refused_backoff"] == 1


def test_internal_error_is_refused_and_serving_goes_on(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "files").mkdir(parents=True)
    (data / "files" / "blocked").write_text("a file where the run's directory should be")
    with running(data) as collector, Producer(collector.bound_endpoint) as producer:
        producer.send(protocol.FileOffer(run="blocked", sha256="a" * 64, size=3))
        refuse = producer.expect(protocol.Refuse)
        assert refuse.code == "internal"
        producer.submit(run_events("r", 2))
        assert producer.recv() == protocol.Ack(runs={"r": 2})
        counters = producer.status().counters
        assert counters["internal_error"] == 1
        assert counters["refused_internal"] == 1


def test_heartbeats_are_recorded_without_reply(tmp_path: Path) -> None:
    with running(tmp_path / "data") as collector, Producer(collector.bound_endpoint) as producer:
        producer.send(protocol.Heartbeat(runs=["r", "s"], host="h", pid=1))
        status = producer.status()  # the next reply is the status: the heartbeat got none
        assert status.counters["heartbeats"] == 1


def test_a_blocked_run_does_not_delay_another(tmp_path: Path) -> None:
    data = tmp_path / "data"
    release = threading.Event()
    entered = threading.Event()

    class Blocking(JsonlBackend):
        def apply(self, run: str, event: protocol.Event, files: FileStore) -> None:
            if run == "slow":
                entered.set()
                release.wait(DEADLINE * 3)
            super().apply(run, event, files)

    collector = Collector(make_config(data), backend=Blocking(data / "records"))
    with collector, Producer(collector.bound_endpoint) as producer:
        try:
            producer.submit(run_events("slow", 3))
            producer.until_acked("slow", 3)
            assert entered.wait(DEADLINE)
            producer.submit(run_events("fast", 20))
            producer.until_acked("fast", 20)
            assert collector.wait_applied("fast", 20, DEADLINE)
            assert collector.status().runs[1].applied == 0  # "slow" is still stuck in its first
        finally:
            release.set()
        assert collector.wait_applied("slow", 3, DEADLINE)
    assert applied_seqs(data, "slow") == [1, 2, 3]


def test_backend_failures_are_retried_and_applied_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    failures = {"left": 2}

    class Flaky(JsonlBackend):
        def apply(self, run: str, event: protocol.Event, files: FileStore) -> None:
            if event.seq == 2 and failures["left"]:
                failures["left"] -= 1
                raise ConnectionError("server hiccup")
            super().apply(run, event, files)

    collector = Collector(make_config(data), backend=Flaky(data / "records"))
    with collector, Producer(collector.bound_endpoint) as producer:
        producer.submit(run_events("r", 3))
        producer.until_acked("r", 3)
        assert collector.wait_applied("r", 3, DEADLINE)
        assert collector.status().counters["apply_error"] == 2
    assert applied_seqs(data, "r") == [1, 2, 3]


def test_second_collector_on_the_same_data_dir_is_refused(tmp_path: Path) -> None:
    with running(tmp_path / "data"), pytest.raises(DataDirBusyError):
        Collector(make_config(tmp_path / "data")).start()


def test_many_producers_one_run_each(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with running(data) as collector:
        producers = [Producer(collector.bound_endpoint) for _ in range(5)]
        try:
            for i, producer in enumerate(producers):
                producer.submit(run_events(f"run{i}", 50))
            for i, producer in enumerate(producers):
                producer.until_acked(f"run{i}", 50)
        finally:
            for producer in producers:
                producer.close()
        wait_for(
            lambda: all(info.applied == 50 for info in collector.status().runs), what="every run applied"
        )
    for i in range(5):
        assert applied_seqs(data, f"run{i}") == list(range(1, 51))
