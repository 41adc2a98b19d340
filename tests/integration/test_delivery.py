"""End to end with real processes: nothing lost, nothing doubled, never in the way of exit."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from e2e import (
    applied,
    applied_count,
    check_exactly_once,
    free_port,
    kill_while_running,
    produce,
    start_collector,
    stop,
    sync,
    wait_for,
    wait_ready,
)


@pytest.mark.slow
def test_kill_9_of_the_collector_at_random_moments_loses_and_doubles_nothing(tmp_path: Path) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    data, spool, work, log = (
        tmp_path / "data",
        tmp_path / "spool",
        tmp_path / "work",
        tmp_path / "collector.log",
    )
    collector = start_collector(endpoint, data, log)
    wait_ready(endpoint, collector)
    # Two runs at once, 5,000 events each over 20 s, every 50th with a file, and a 3-chunk model;
    # the collector is killed every 0.05-0.5 s after it answers again: 20+ kills across the run.
    producers = {
        name: produce(
            endpoint,
            spool,
            work,
            name,
            5000,
            "--file-every",
            "50",
            "--model-bytes",
            str(3 * 1024 * 1024 + 7),
            "--rate",
            "250",
            "--flush-timeout",
            "120",
        )
        for name in ("alpha", "beta")
    }
    try:
        collector, kills = kill_while_running(
            producers,
            lambda: start_collector(endpoint, data, log),
            endpoint,
            collector,
            (0.05, 0.5),
            seed=1234,
        )
        wait_ready(endpoint, collector)
        wait_for(lambda: applied_count(data) >= 2 * 5003, 60, "every event to be applied")
    finally:
        stop(collector)
    assert kills >= 20, f"only {kills} kills: the run ended too soon to test anything"
    for name in producers:
        check_exactly_once(data, work / f"{name}.json", 5000, model=True)
    assert not any(spool.iterdir()), "delivered outboxes must be removed from the spool"


@pytest.mark.slow
def test_a_producer_exits_within_flush_timeout_when_the_collector_is_down(tmp_path: Path) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"  # nothing listens here
    proc = produce(
        endpoint,
        tmp_path / "spool",
        tmp_path / "work",
        "lonely",
        200,
        "--file-every",
        "20",
        "--flush-timeout",
        "1.5",
    )
    out = proc.communicate(timeout=30)[0].decode()
    exited = time.time()
    assert proc.returncode == 0, out
    assert "delivered=False" in out
    closing = float(re.search(r"closing at ([0-9.]+)", out).group(1))  # type: ignore[union-attr]
    assert exited - closing < 1.5 + 1.0, f"exit took {exited - closing:.2f}s after close()"
    assert any((tmp_path / "spool").iterdir()), "undelivered events must stay in the outbox"


@pytest.mark.parametrize("deliver_by", ["sync", "next producer"])
@pytest.mark.slow
def test_a_run_made_while_the_collector_was_absent_is_delivered_later(
    tmp_path: Path, deliver_by: str
) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    data, spool, work = tmp_path / "data", tmp_path / "spool", tmp_path / "work"
    proc = produce(
        endpoint,
        spool,
        work,
        "early",
        300,
        "--file-every",
        "30",
        "--model-bytes",
        "100000",
        "--flush-timeout",
        "0.5",
    )
    assert proc.communicate(timeout=30)[0].decode().count("delivered=False") == 1
    assert any(spool.iterdir()), "the undelivered run must stay in the spool"

    collector = start_collector(endpoint, data, tmp_path / "collector.log")
    try:
        wait_ready(endpoint, collector)
        if deliver_by == "sync":
            sync(endpoint, spool)
        else:
            later = produce(endpoint, spool, work, "later", 10, "--flush-timeout", "60")
            assert "delivered=True" in later.communicate(timeout=90)[0].decode()
        wait_for(
            lambda: len(applied(data).get(_run_of(work / "early.json"), [])) >= 303,
            60,
            "the early run to be applied",
        )
    finally:
        stop(collector)
    check_exactly_once(data, work / "early.json", 300, model=True)
    assert not (spool / _run_of(work / "early.json")).exists()


def _run_of(manifest: Path) -> str:
    import json

    run: str = json.loads(manifest.read_text())["run"]
    return run
