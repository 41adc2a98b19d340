"""The producer's own faults, with real processes: a reused run id, a full or read-only spool,
a locked outbox, SIGTERM. Each ends with nothing lost silently: what the collector applied is
what the producer's counters say landed, and what did not land is reported, never hidden.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from e2e import (
    applied,
    check_exactly_once,
    env,
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

from producer.transport.outbox import Outbox, list_outboxes

SCRIPT = Path(__file__).resolve().parents[1] / "support" / "fault_producer.py"


class Collector(NamedTuple):
    endpoint: str
    data: Path
    log: Path


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[Collector]:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    data, log = tmp_path / "data", tmp_path / "collector.log"
    proc = start_collector(endpoint, data, log)
    try:
        wait_ready(endpoint, proc)
        yield Collector(endpoint, data, log)
    finally:
        stop(proc)


class Outcome(NamedTuple):
    returncode: int
    output: str
    result: dict[str, Any]


def run_script(
    collector: Collector, spool: Path, *args: str, prefix: tuple[str, ...] = (), timeout: float = 120
) -> Outcome:
    """Run a fault_producer.py scenario to its end; its ``result`` line, parsed."""
    proc = subprocess.run(
        [*prefix, sys.executable, str(SCRIPT), *args],
        env=env(CLEARML_RELAY_ENDPOINT=collector.endpoint, CLEARML_RELAY_SPOOL_DIR=str(spool)),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    output = proc.stdout + proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("result ")]
    return Outcome(proc.returncode, output, json.loads(lines[-1][len("result ") :]) if lines else {})


def events_of(collector: Collector, run: str) -> list[dict[str, Any]]:
    return [record["event"] for record in applied(collector.data).get(run, [])]


def closed(collector: Collector, run: str) -> bool:
    reply = status(collector.endpoint)
    info = next((r for r in reply.runs if r.run == run), None) if reply else None
    return info is not None and info.state != "open" and info.applied >= info.journaled


def small_spool(tmp_path: Path, size: str) -> tuple[Path, tuple[str, ...]]:
    spool = tmp_path / "small-spool"
    prefix = private_tmpfs(spool, size=size)
    if prefix is None:
        pytest.skip("this machine cannot mount a private tmpfs (unshare --mount)")
    return spool, prefix


# ------------------------------------------------------------------------------ reused run id


def test_a_reused_run_id_from_a_new_outbox_is_refused_and_reported(
    tmp_path: Path, collector: Collector
) -> None:
    first = run_script(collector, tmp_path / "node-a", "reuse", "--run-id", "job-42", "--events", "20")
    assert first.returncode == 0, first.output
    assert first.result["delivered"] is True
    wait_for(lambda: closed(collector, "job-42"), 60, "the first run to be applied")
    # The same run id from another spool (another node, or a restarted job that lost its spool).
    second_spool = tmp_path / "node-b"
    second = run_script(
        collector, second_spool, "reuse", "--run-id", "job-42", "--events", "30", "--first", "1000"
    )
    assert second.returncode == 0, second.output
    assert second.result["delivered"] is False, "close() must not claim a refused run was delivered"
    assert second.result["stats"].get("refused_conflict", 0) >= 1
    assert "refused run job-42" in second.output
    assert "already used by another producer" in second.output
    assert "resume_run='job-42'" in second.output
    # Nothing of the second run was applied, and nothing of it is lost: it stays in its outbox.
    values = [e["value"] for e in events_of(collector, "job-42") if e["t"] == "scalar"]
    assert values == [float(i) for i in range(20)]
    assert list_outboxes(second_spool) == ["job-42"]
    assert f"32 events stay in {second_spool / 'job-42'}" in second.output
    assert "refusing events of writer" in collector.log.read_text()


def test_the_same_outbox_sent_again_is_applied_once(tmp_path: Path, collector: Collector) -> None:
    spool = tmp_path / "spool"
    crashed = run_script(
        collector, spool, "reuse", "--run-id", "job-7", "--events", "25", "--exit-without-close"
    )
    assert crashed.returncode == 0, crashed.output
    # The acked cursor is written without fsync: after a power loss it may lag. Wind it back to
    # 0, so that the whole outbox (same writer id) is sent again.
    (spool / "job-7" / "acked").write_bytes((0).to_bytes(8, "little"))
    result = sync(collector.endpoint, spool)
    assert "delivered" in result.stdout + result.stderr
    wait_for(lambda: len(applied(collector.data).get("job-7", [])) >= 26, 60, "the run to be applied")
    seqs = [record["seq"] for record in applied(collector.data)["job-7"]]
    assert seqs == list(range(1, 27)), "applied once, in order"
    reply = status(collector.endpoint)
    assert reply is not None
    assert reply.counters.get("duplicates", 0) >= 26
    assert reply.counters.get("refused_conflict", 0) == 0


# --------------------------------------------------------------------------------- full spool


@pytest.mark.slow
def test_a_spool_that_fills_up_and_frees_loses_nothing_after_recovery(
    tmp_path: Path, collector: Collector
) -> None:
    spool, prefix = small_spool(tmp_path, "512k")
    outcome = run_script(collector, spool, "full-then-free", prefix=prefix)
    assert outcome.returncode == 0, outcome.output
    counters = outcome.result["stats"]
    wait_for(lambda: closed(collector, outcome.result["run"]), 60, "the run to be applied")
    events = events_of(collector, outcome.result["run"])
    values = [e["value"] for e in events if e["t"] == "scalar"]
    assert len(values) == len(set(values)), "an event landed twice"
    assert values[:100] == [float(i) for i in range(100)]
    assert values[-100:] == [float(i) for i in range(201, 301)], "events after the disk freed were lost"
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1)), "a hole in the run"
    # The producer's counters are what landed, event for event.
    assert counters["events_acked"] == counters["events_written"] == len(events)
    assert counters["events_written"] + counters["dropped_io"] == counters["events_handled"] == 303
    assert counters["dropped_io"] >= 1, "the full disk dropped nothing: the test did not fill it"
    assert counters.get("damage", 0) == 0, "the outbox reads as damaged"
    # ... and the loss is told: close() says the run is not whole, and why.
    assert outcome.result["delivered"] is False
    assert "cannot write the outbox of run" in outcome.output
    assert "could not be recorded" in outcome.output
    assert events[-1]["t"] == "close"


@pytest.mark.slow
@pytest.mark.parametrize("folder", [False, True], ids=["file", "folder"])
@pytest.mark.parametrize("free", [True, False])
def test_a_model_without_room_in_the_spool_waits_for_it(
    tmp_path: Path, collector: Collector, free: bool, folder: bool
) -> None:
    spool, prefix = small_spool(tmp_path, "3m")
    work = tmp_path / "work"
    work.mkdir()
    args = ["model-without-room", "--workdir", str(work), "--flush-timeout", "6", *(["--folder"] * folder)]
    outcome = run_script(collector, spool, *args, *(["--free"] if free else []), prefix=prefix)
    assert outcome.returncode == 0, outcome.output
    run = outcome.result["run"]
    name = "checkpoint-1" if folder else "best.pt"
    assert f"no room in the spool {spool}" in outcome.output
    assert "free, the file is 2.1 MB" in outcome.output, "a folder: the size of its files"
    wait_for(lambda: closed(collector, run), 60, "the run to be applied")
    events = events_of(collector, run)
    kinds = [e["t"] for e in events]
    assert kinds.count("scalar") == 20
    assert kinds[-1] == "close"
    assert events[-1].get("status", "completed") == "completed"  # the default is not sent
    if free:
        assert outcome.result["delivered"] is True
        (model,) = [e for e in events if e["t"] == "model"]
        assert model["name"] == name, "the model must land once room is freed"
        assert model["file"]["name"] == (f"{name}.zip" if folder else name)
    else:
        # The run ends without its model, and says so: a gap at the collector, False from close().
        assert outcome.result["delivered"] is False
        assert kinds.count("model") == 0
        gaps = [e for e in events if e["t"] == "gap"]
        assert len(gaps) == 1
        assert f"Model {name} was not recorded: no room in the spool" in gaps[0]["reason"]
        assert outcome.result["stats"]["files_dropped_no_room"] == 1
        assert f"run {run} ends without its model {name}" in outcome.output


# ---------------------------------------------------------------------- an unusable spool


def readonly(directory: Path) -> tuple[str, ...]:
    """A command prefix that sees ``directory`` read-only (a bind mount in its own namespace)."""
    directory.mkdir(parents=True, exist_ok=True)
    prefix = (
        "unshare", "--mount", "--propagation", "private", "sh", "-c",
        'mount --bind "$1" "$1" && mount -o remount,ro,bind "$1" && shift && exec "$@"', "ro", str(directory),
    )  # fmt: skip
    probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=30, check=False)
    if probe.returncode != 0:
        pytest.skip("this machine cannot make a read-only bind mount (unshare --mount)")
    return prefix


@pytest.mark.parametrize("fault", ["read-only", "locked"])
def test_an_unusable_spool_says_nothing_was_kept(tmp_path: Path, collector: Collector, fault: str) -> None:
    spool = tmp_path / "spool"
    prefix: tuple[str, ...] = ()
    if fault == "read-only":
        prefix = readonly(spool)
        reason = "Read-only file system"
    else:  # another process holds the run's outbox
        (spool / "job-9" / "blobs").mkdir(parents=True)
        holder = os.open(spool / "job-9" / "lock", os.O_RDWR | os.O_CREAT)
        fcntl.flock(holder, fcntl.LOCK_EX)
        reason = "it is locked by another process"
    try:
        outcome = run_script(collector, spool, "reuse", "--run-id", "job-9", prefix=prefix)
    finally:
        if fault == "locked":
            os.close(holder)
    assert outcome.returncode == 0, outcome.output
    assert outcome.result["delivered"] is False
    assert f"cannot open the outbox of run job-9 in {spool} (" in outcome.output
    assert reason in outcome.output
    assert "run job-9 recorded nothing (its outbox could not be opened: " in outcome.output
    assert "none of it is on disk" in outcome.output
    assert "stay in" not in outcome.output, "the exit message claims events were kept"


# ---------------------------------------------------------------------------------- SIGTERM


@pytest.mark.parametrize("user_handler", [False, True])
def test_sigterm_ends_the_run_as_aborted_then_dies_as_asked(
    tmp_path: Path, collector: Collector, user_handler: bool
) -> None:
    command = [sys.executable, str(SCRIPT), "sigterm", *(["--user-handler"] if user_handler else [])]
    proc = subprocess.Popen(
        command,
        env=env(CLEARML_RELAY_ENDPOINT=collector.endpoint, CLEARML_RELAY_SPOOL_DIR=str(tmp_path / "spool")),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("ready "), line
        run = line.split()[1]
        proc.send_signal(signal.SIGTERM)
        output = line + proc.communicate(timeout=60)[0]
    finally:
        proc.kill()
    if user_handler:
        assert proc.returncode == 3, output  # the user's handler ran after ours, and decided
        assert "user handler got SIGTERM" in output
    else:
        assert proc.returncode == -signal.SIGTERM, output  # died of SIGTERM, as the scheduler expects
    assert "clearml-relay: SIGTERM: ending 1 run(s) as aborted" in output
    # At once, not after the collector's heartbeat timeout: aborted, everything applied.
    reply = status(collector.endpoint)
    info = next((r for r in reply.runs if r.run == run), None) if reply else None
    assert info is not None
    assert info.state == "aborted", info
    wait_for(lambda: closed(collector, run), 30, "the run to be applied")
    events = events_of(collector, run)
    assert events[-1]["t"] == "close"
    assert events[-1]["status"] == "aborted"
    assert events[-1]["error"] == "SIGTERM"
    values = [e["value"] for e in events if e["t"] == "scalar"]
    assert values == [float(i) for i in range(len(values))], "lost or doubled before the close"
    assert len(values) >= 50
    # The process may die between the last ack and the removal of its outbox: what is left, if
    # anything, holds nothing unacknowledged (the next producer on the spool just deletes it).
    for run_id in list_outboxes(tmp_path / "spool"):
        outbox = Outbox.open(tmp_path / "spool", run_id, create=False)
        assert outbox is not None
        assert outbox.fully_acked(), f"{run_id}: {outbox.last_seq - outbox.acked} events left unacknowledged"
        outbox.close()


def test_sigterm_handler_is_installed_only_from_the_main_thread_and_leaves_sig_ign_alone(
    tmp_path: Path,
) -> None:
    code = """
import signal, threading
from producer import Run

signal.signal(signal.SIGTERM, signal.SIG_IGN)
Run("p", "ignored", endpoint="tcp://127.0.0.1:9")
print("ignored kept:", signal.getsignal(signal.SIGTERM) is signal.SIG_IGN)
"""
    other = """
import signal, threading
from producer import Run

t = threading.Thread(target=lambda: Run("p", "thread", endpoint="tcp://127.0.0.1:9"))
t.start(); t.join()
print("default kept:", signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)
"""
    for source, expected in ((code, "ignored kept: True"), (other, "default kept: True")):
        out = subprocess.run(
            [sys.executable, "-c", source],
            env=env(CLEARML_RELAY_SPOOL_DIR=str(tmp_path / "spool"), CLEARML_RELAY_FLUSH_TIMEOUT="0"),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert expected in out.stdout, out.stdout + out.stderr


# ------------------------------------------------------------------- many trainings at once


@pytest.mark.slow
def test_twenty_producers_started_at_once_on_one_spool_all_deliver_at_exit(
    tmp_path: Path, collector: Collector
) -> None:
    # Each producer's sender scans the shared spool for leftover outboxes when it starts: it
    # must never take the lock of an outbox another producer is creating at that moment.
    spool, work = tmp_path / "spool", tmp_path / "work"
    procs = {
        name: produce(
            collector.endpoint, spool, work, name, 200, "--file-every", "50", "--model-bytes", "1048583"
        )
        for name in (f"burst-{i}" for i in range(20))
    }
    outputs = {name: proc.communicate(timeout=120)[0].decode() for name, proc in procs.items()}
    for name, proc in procs.items():
        assert proc.returncode == 0, outputs[name]
        assert "delivered=True" in outputs[name], f"{name}: {outputs[name]}"
        assert "cannot open the outbox" not in outputs[name], outputs[name]
    assert not list_outboxes(spool)
    assert not [p for p in spool.iterdir() if p.name.startswith(".creating-")], "staging left behind"
    for name in procs:
        check_exactly_once(collector.data, work / f"{name}.json", 200, model=True)


def test_taking_the_trainer_hooks_installs_the_sigterm_handler() -> None:
    # The hooks make their run on a background thread, where no handler can be installed: taking
    # the callbacks (or attach()) on the main thread installs it ahead of the training.
    code = """
import signal
import producer
from producer import preemption
assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, "import alone installs nothing"
producer.callbacks
print("installed:", signal.getsignal(signal.SIGTERM) is preemption._handle)
"""
    out = subprocess.run(
        [sys.executable, "-c", code], env=env(), capture_output=True, text=True, timeout=60, check=False
    )
    assert "installed: True" in out.stdout, out.stdout + out.stderr
