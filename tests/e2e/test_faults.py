"""Faults on the producer's side of the wire, with real processes: nothing lost, nothing doubled.

- the training process is killed (``kill -9``) at random moments: every event handed to the
  ``Run`` API at least a second before the kill reaches the collector later, through the next
  producer on the same spool directory or ``clearml-relay sync``;
- the collector stops reading (``SIGSTOP``, as a network stall looks to a producer): calls never
  block, a run that ends meanwhile exits within its flush timeout, and everything lands once the
  collector reads again.

The check is always the same: the (run, sequence number) pairs the backend applied are exactly
the ones produced (or, for a killed run, a gap-free prefix holding everything handed over at least
a second before the kill), each once and in order, files byte for byte.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from e2e import (
    applied,
    check_exactly_once,
    damage_log,
    fill_up,
    free_port,
    private_tmpfs,
    produce,
    start_collector,
    status,
    stop,
    sync,
    wait_for,
    wait_ready,
)

_HANDED = re.compile(r"^handed (\d+) ([0-9.]+)$", re.MULTILINE)


def _handed(output: Path) -> list[tuple[int, float]]:
    """(iteration, time the call returned) for every event ``produce.py --progress`` printed."""
    return [(int(i), float(t)) for i, t in _HANDED.findall(output.read_text())]


def _run_id(output: Path) -> str | None:
    found = re.search(r"^run (\w+)$", output.read_text(), re.MULTILINE)
    return found.group(1) if found else None


@pytest.mark.slow
@pytest.mark.parametrize("collector_up", [True, False], ids=["collector-up", "collector-down"])
def test_kill_9_of_the_training_process_loses_nothing_handed_a_second_before(
    tmp_path: Path, collector_up: bool
) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    data, spool, work, log = (
        tmp_path / "data",
        tmp_path / "spool",
        tmp_path / "work",
        tmp_path / "collector.log",
    )
    work.mkdir()
    rng = random.Random(2024 + collector_up)
    collector = start_collector(endpoint, data, log) if collector_up else None
    if collector is not None:
        wait_ready(endpoint, collector)
    # Three training processes in turn on one spool directory, each killed at a random moment;
    # each one adopts the outboxes its predecessors left.
    killed: dict[str, tuple[Path, float]] = {}
    try:
        for attempt in range(3):
            name = f"victim{attempt}"
            output = work / f"{name}.out"
            proc = produce(
                endpoint,
                spool,
                work,
                name,
                1_000_000,  # never ends by itself
                "--file-every",
                "25",
                "--rate",
                "400",
                "--progress",
                output=output,
            )
            try:
                wait_for(lambda: _handed(output), 30, f"{name} to hand over its first event")  # noqa: B023
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=rng.uniform(1.5, 4.0))
                assert proc.poll() is None, f"{name} ended before the kill: {output.read_text()[-2000:]}"
            finally:
                kill_time = time.time()
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=10)
            run = _run_id(output)
            assert run is not None, output.read_text()
            killed[run] = (output, kill_time)
        if collector is None:
            collector = start_collector(endpoint, data, log)
            wait_ready(endpoint, collector)
        sync(endpoint, spool)
        for run, (output, kill_time) in killed.items():
            required = [i for i, t in _handed(output) if t <= kill_time - 1.0]
            wait_for(
                lambda: len(applied(data).get(run, [])) >= len(required) + 1,  # noqa: B023
                60,
                f"run {run}'s events to be applied",
            )
    finally:
        if collector is not None:
            stop(collector)

    assert len(killed) == 3
    for run, (output, kill_time) in killed.items():
        handed = _handed(output)
        required = [i for i, t in handed if t <= kill_time - 1.0]
        assert len(required) > 100, f"{run}: only {len(required)} events a second before the kill"
        records = applied(data)[run]
        seqs = [r["seq"] for r in records]
        assert seqs == list(range(1, len(seqs) + 1)), f"{run}: applied seqs are not 1..n once each"
        events = [r["event"] for r in records]
        assert events[0]["t"] == "open"
        iterations = [e["iteration"] for e in events[1:]]
        # Handed in order, so what landed is a prefix: nothing skipped, nothing twice.
        assert iterations == list(range(len(iterations))), f"{run}: not a gap-free prefix"
        assert len(iterations) >= len(required), (
            f"{run}: {len(required)} events were handed a second before the kill, {len(iterations)} landed"
        )
        # At most the event whose progress line the kill cut off lands beyond what was printed.
        assert len(iterations) <= len(handed) + 1
        name = output.stem
        for record in records[1:]:
            event = record["event"]
            if event["t"] == "image":
                sent = (work / f"{name}-img-{event['iteration']}.png").read_bytes()
                assert Path(record["file"]).read_bytes() == sent, f"{run}: image {event['iteration']} differs"
            else:
                assert event["value"] == float(event["iteration"])
    assert not any(spool.iterdir()), "sync must have delivered and removed every outbox"


@pytest.mark.slow
def test_a_collector_that_stops_reading_blocks_no_call_and_loses_nothing(tmp_path: Path) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    data, spool, work = tmp_path / "data", tmp_path / "spool", tmp_path / "work"
    collector = start_collector(endpoint, data, tmp_path / "collector.log")
    stall = 3.0
    try:
        wait_ready(endpoint, collector)
        # "steady" (10 s) runs through the stall; "quitter" (3 s) ends in the middle of it.
        steady = produce(
            endpoint, spool, work, "steady", 3000, "--file-every", "50", "--model-bytes", "1000003",
            "--rate", "300", "--flush-timeout", "60",
        )  # fmt: skip
        quitter = produce(
            endpoint, spool, work, "quitter", 900, "--file-every", "50", "--rate", "300",
            "--flush-timeout", "1.0",
        )  # fmt: skip

        def both_started() -> bool:
            reply = status(endpoint)
            return reply is not None and sum(info.journaled > 10 for info in reply.runs) == 2

        wait_for(both_started, 30, "both runs to reach the collector")
        collector.send_signal(signal.SIGSTOP)
        stalled = time.monotonic()
        try:
            out = quitter.communicate(timeout=60)[0].decode()
            exited = time.time()
            assert steady.poll() is None, "the steady run must still be running during the stall"
            with contextlib.suppress(subprocess.TimeoutExpired):  # keep the stall going
                steady.wait(timeout=max(0.0, stalled + stall - time.monotonic()))
        finally:
            collector.send_signal(signal.SIGCONT)
        assert quitter.returncode == 0, out
        assert "delivered=False" in out, "the quitter closed while the collector read nothing"
        closing = float(re.search(r"closing at ([0-9.]+)", out).group(1))  # type: ignore[union-attr]
        assert exited - closing < 1.0 + 2.0, f"exit took {exited - closing:.2f} s after close()"

        out = steady.communicate(timeout=120)[0].decode()
        assert "delivered=True" in out, out
        slowest = float(re.search(r"slowest call ([0-9.]+) s", out).group(1))  # type: ignore[union-attr]
        assert slowest < stall / 3, f"a call blocked for {slowest:.3f} s while the collector was stalled"
        sync(endpoint, spool)
        wait_for(
            lambda: {len(v) for v in applied(data).values()} == {3003, 902},
            60,
            "both runs to be applied",
        )
    finally:
        stop(collector)
    check_exactly_once(data, work / "steady.json", 3000, model=True)
    check_exactly_once(data, work / "quitter.json", 900, model=False)


@pytest.mark.slow
def test_a_full_disk_backs_producers_off_and_loses_nothing_when_space_returns(tmp_path: Path) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    data, spool, work = tmp_path / "data", tmp_path / "spool", tmp_path / "work"
    log = tmp_path / "collector.log"
    prefix = private_tmpfs(data / "journal", data / "files", size="16m")
    if prefix is None:
        pytest.skip("this machine cannot mount a private tmpfs (unshare --mount): no small filesystem")
    collector = start_collector(endpoint, data, log, prefix=prefix)
    try:
        wait_ready(endpoint, collector)
        # The collector's own view of its data dir: its journal and file store are on the tmpfs.
        seen = Path(f"/proc/{collector.pid}/root") / data.relative_to("/")
        ballasts = [fill_up(seen / "journal"), fill_up(seen / "files")]
        output = tmp_path / "full.out"
        producer = produce(
            endpoint, spool, work, "full", 600, "--file-every", "50", "--model-bytes", "200003",
            "--rate", "200", "--flush-timeout", "120", output=output,
        )  # fmt: skip

        def backed_off() -> bool:
            reply = status(endpoint)
            counters = reply.counters if reply else {}
            return counters.get("refused_backoff", 0) > 0 and counters.get("journal_disk_full", 0) > 0

        wait_for(backed_off, 60, "the collector to tell the producer to back off")
        wait_for(
            lambda: "handed over 600 events" in output.read_text(), 60, "the producer to hand everything"
        )
        assert producer.poll() is None, "the producer waits for delivery, within its flush timeout"
        reply = status(endpoint)
        assert reply is not None
        assert all(info.journaled < 603 for info in reply.runs), "nothing can be journaled on a full disk"

        for ballast in ballasts:  # space returns
            ballast.unlink()
        assert producer.wait(timeout=120) == 0
        assert "delivered=True" in output.read_text(), output.read_text()
        run = json.loads((work / "full.json").read_text())["run"]
        wait_for(lambda: len(applied(data).get(run, [])) == 603, 60, "the run to be applied")
        root = Path(f"/proc/{collector.pid}/root")  # the file store vanishes with the collector
        check_exactly_once(data, work / "full.json", 600, model=True, files_root=root)
    finally:
        stop(collector)
    text = log.read_text()
    assert "the journal's disk: no room" in text
    assert text.count("the journal's disk: no room") == 1, "one warning per episode, not one per message"
    assert "the journal's disk has room again" in text


@pytest.mark.slow
def test_a_damaged_outbox_costs_only_the_damaged_record_and_says_so(tmp_path: Path) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    data, spool, work = tmp_path / "data", tmp_path / "spool", tmp_path / "work"
    events, every = 400, 40
    # The collector is down: the whole run stays in the outbox.
    proc = produce(
        endpoint, spool, work, "bruised", events, "--file-every", str(every), "--model-bytes", "100003",
        "--flush-timeout", "0.5",
    )  # fmt: skip
    assert "delivered=False" in proc.communicate(timeout=60)[0].decode()
    run = json.loads((work / "bruised.json").read_text())["run"]
    damaged = 102  # the scalar of iteration 100 (seq 1 is the run's open)
    damage_log(spool / run / "log", damaged)

    collector = start_collector(endpoint, data, tmp_path / "collector.log")
    try:
        wait_ready(endpoint, collector)
        result = sync(endpoint, spool)
        wait_for(lambda: len(applied(data).get(run, [])) == events + 3, 60, "the run to be applied")
    finally:
        stop(collector)
    assert f"damaged outbox of run {run}" in result.stderr, result.stderr
    records = applied(data)[run]
    assert [r["seq"] for r in records] == list(range(1, events + 4)), "every seq once, in order"
    gap = records[damaged - 1]["event"]
    assert (gap["t"], gap["seq"], gap["last"]) == ("gap", damaged, damaged), gap
    assert "outbox damage" in gap["reason"]
    # Everything else arrived as produced, files byte for byte.
    manifest = json.loads((work / "bruised.json").read_text())
    for record in records[1:-2]:
        event = record["event"]
        if record["seq"] == damaged:
            continue
        assert event["iteration"] == record["seq"] - 2
        if event["t"] == "image":
            content = Path(record["file"]).read_bytes()
            assert hashlib.sha256(content).hexdigest() == manifest["files"][str(event["iteration"])]
        else:
            assert event["value"] == float(event["iteration"])
    assert [r["event"]["t"] for r in records[-2:]] == ["model", "close"], "the torn tail cost nothing"
