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
import random
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from e2e import (
    applied,
    free_port,
    produce,
    start_collector,
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
