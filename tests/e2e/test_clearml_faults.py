"""The ClearML server misbehaves; the collector journals on, shows the backlog, loses nothing.

A producer process logs a run through a collector process in online mode against the server
double while the server is down from the start, dies mid-run, answers 500 to everything, or
stalls every call. Meanwhile the producer is acknowledged in full (the journal holds its events)
and ``clearml-relay runs`` shows the backlog; once the server is healthy again the run lands on
it exactly once: every scalar, image and model, one task, status completed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from clearml_server import ClearMLServerDouble
from e2e import (
    check_online_exactly_once,
    completed,
    damage_log,
    free_port,
    produce,
    runs_table,
    start_collector,
    status,
    stop,
    wait_for,
    wait_ready,
)

EVENTS, EVERY = 120, 20
#: Events a run journals beyond ``EVENTS``: its open, its model and its close.
EXTRA = 3

# Each fault: how to break the server, and how to heal it.
FAULTS: dict[str, tuple[Callable[[ClearMLServerDouble], None], Callable[[ClearMLServerDouble], None]]] = {
    "down": (lambda s: s.down(), lambda s: s.up()),
    "500": (lambda s: s.fail(None, status=500), lambda s: s.heal()),
    "stall": (lambda s: s.stall(), lambda s: s.unstall()),
}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fault", "when"),
    [("down", "at start"), ("down", "mid-run"), ("500", "mid-run"), ("stall", "mid-run")],
    ids=["down-at-start", "dies-mid-run", "answers-500", "stalls"],
)
def test_a_faulty_server_costs_delay_never_events(tmp_path: Path, fault: str, when: str) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    data = tmp_path / "data"
    breaks, heals = FAULTS[fault]
    with ClearMLServerDouble() as server:
        if when == "at start":
            breaks(server)
        collector = start_collector(
            endpoint,
            data,
            tmp_path / "collector.log",
            "--backend",
            "clearml",
            # A call the server never answers is abandoned after this, and retried.
            environ={**server.child_env(), "CLEARML_RELAY_CLEARML_CALL_TIMEOUT": "5"},
        )
        try:
            wait_ready(endpoint, collector, timeout=60)
            proc = produce(
                endpoint,
                tmp_path / "spool",
                tmp_path / "work",
                "faulty",
                EVENTS,
                "--file-every",
                str(EVERY),
                "--model-bytes",
                str(300_000),
                # 6 s of events: the run spans several checkpoints (one every 2 s), so the
                # fault strikes after the first events reached the server and before the end.
                "--rate",
                "20",
                "--flush-timeout",
                "60",
            )
            if when == "mid-run":
                # Break it once the task exists and the first events have reached the server.
                server.wait_for(
                    lambda s: s.calls("events.add_batch"), timeout=60, what="the first events to arrive"
                )
                breaks(server)
            out = proc.communicate(timeout=120)[0].decode()
            assert "delivered=True" in out, "the collector journals and acknowledges whatever the server does"
            run = json.loads((tmp_path / "work" / "faulty.json").read_text())["run"]

            row = runs_table(data)[run]
            assert row["received"] == EVENTS + EXTRA, row
            assert row["applied"] < row["received"], f"no backlog shown while the server is {fault}: {row}"
            assert row["backlog"] == row["received"] - row["applied"]

            # Heal only once the collector has had to retry on its own (the SDK's retries spent).
            wait_for(
                lambda: _retried((tmp_path / "collector.log").read_text()),
                90,
                "the collector to log that it backs off and retries",
            )
            heals(server)
            wait_for(lambda: completed(endpoint, run), 120, "the run to be applied once the server is back")
        finally:
            stop(collector, timeout=30)
        manifest = json.loads((tmp_path / "work" / "faulty.json").read_text())
        check_online_exactly_once(server, manifest, "faulty", EVENTS, EVERY)
        row = runs_table(data)[run]
        assert (row["state"], row["applied"], row["backlog"]) == ("completed", EVENTS + EXTRA, 0), row
        assert not server.escapes, "nothing may leave this machine"


def _retried(log: str) -> bool:
    return "retrying in" in log or "re-applying from its durable position" in log


@pytest.mark.slow
def test_a_journal_at_its_cap_backs_producers_off_until_the_server_drains_it(tmp_path: Path) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    data, log = tmp_path / "data", tmp_path / "collector.log"
    events = 1000
    with ClearMLServerDouble() as server:
        server.down()  # nothing is applied, so the journal only grows
        collector = start_collector(
            endpoint,
            data,
            log,
            "--backend",
            "clearml",
            environ={
                **server.child_env(),
                "CLEARML_RELAY_CLEARML_CALL_TIMEOUT": "5",
                "CLEARML_RELAY_MAX_JOURNAL_BYTES": "60000",  # about 500 events
                "CLEARML_RELAY_JOURNAL_SEGMENT_BYTES": "16384",
            },
        )
        try:
            wait_ready(endpoint, collector, timeout=60)
            proc = produce(
                endpoint, tmp_path / "spool", tmp_path / "work", "capped", events,
                "--file-every", str(EVERY), "--model-bytes", "100003", "--flush-timeout", "120",
            )  # fmt: skip

            def backed_off() -> bool:
                reply = status(endpoint)
                counters = reply.counters if reply else {}
                return counters.get("journal_cap_full", 0) > 0 and counters.get("refused_backoff", 0) > 0

            wait_for(backed_off, 60, "the collector to tell the producer to back off")
            assert proc.poll() is None, "the producer keeps its events and waits, within its flush timeout"
            (row,) = runs_table(data).values()
            assert row["received"] < events + EXTRA, row
            assert row["backlog"] > 0, row

            server.up()  # the backlog drains, its journal space is reclaimed, the producer resumes
            out = proc.communicate(timeout=150)[0].decode()
            assert "delivered=True" in out, out
            run = json.loads((tmp_path / "work" / "capped.json").read_text())["run"]
            wait_for(lambda: completed(endpoint, run), 120, "the run to be applied")
        finally:
            stop(collector, timeout=30)
        manifest = json.loads((tmp_path / "work" / "capped.json").read_text())
        check_online_exactly_once(server, manifest, "capped", events, EVERY)
    text = log.read_text()
    assert text.count("the journal's size cap: no room") >= 1
    assert "the journal's size cap has room again" in text


@pytest.mark.slow
def test_a_damaged_journal_costs_only_the_damaged_record_and_says_so(tmp_path: Path) -> None:
    """Events wait in the journal (server down) when a crash and a bad disk damage it."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    data, log = tmp_path / "data", tmp_path / "collector.log"
    with ClearMLServerDouble() as server:
        server.down()
        environ = {
            **server.child_env(),
            "CLEARML_RELAY_CLEARML_CALL_TIMEOUT": "5",
            "CLEARML_RELAY_DRAIN_TIMEOUT": "1",
        }
        collector = start_collector(endpoint, data, log, "--backend", "clearml", environ=environ)
        try:
            wait_ready(endpoint, collector, timeout=60)
            proc = produce(
                endpoint, tmp_path / "spool", tmp_path / "work", "bruised", EVENTS,
                "--file-every", str(EVERY), "--model-bytes", "100003", "--flush-timeout", "60",
            )  # fmt: skip
            assert "delivered=True" in proc.communicate(timeout=120)[0].decode()
        finally:
            assert stop(collector, timeout=60) == 0
        run = json.loads((tmp_path / "work" / "bruised.json").read_text())["run"]
        assert runs_table(data)[run]["applied"] == 0, "nothing can be applied with the server down"
        damaged = 52  # the scalar of iteration 50 (seq 1 is the run's open)
        damage_log(data / "journal" / run, damaged)

        server.up()
        collector = start_collector(endpoint, data, log, "--backend", "clearml", environ=environ)
        try:
            wait_ready(endpoint, collector, timeout=60)
            wait_for(lambda: completed(endpoint, run), 120, "the run to be applied")
            reply = status(endpoint)
            assert reply is not None
            counters = reply.counters
        finally:
            stop(collector, timeout=30)
        assert counters.get("journal_damage", 0) >= 2, counters  # the flipped byte and the torn tail
        assert counters.get("journal_gaps") == 1, counters
        assert "journal damage" in log.read_text()

        task = server.task("bruised")
        assert task is not None
        assert task["status"] == "completed"
        scalars = server.events(task["id"], type="training_stats_scalar")
        produced = [i for i in range(EVENTS) if i % EVERY]
        assert sorted(e["iter"] for e in scalars if e["metric"] == "train") == [
            i for i in produced if i != 50
        ]
        images = server.events(task["id"], type="training_debug_image")
        assert sorted(e["iter"] for e in images) == list(range(0, EVENTS, EVERY))
        assert len([m for m in server.models.values() if m.get("task") == task["id"]]) == 1
