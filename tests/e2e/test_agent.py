"""``clearml-relay agent``: the outboxes exited producers left on a node land, with no ``sync`` typed.

Real processes throughout: producers (``tests/support/produce.py``) that give up on a collector
that is not there and exit with their outboxes in a shared spool, agents watching that spool,
and a collector (JSONL record backend) that comes up later. What the collector applied is read
back per run and checked event by event, files byte for byte.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from e2e import (
    check_exactly_once,
    env,
    free_port,
    produce,
    run_homed_on,
    start_collector,
    stop,
    wait_for,
    wait_ready,
)

pytestmark = pytest.mark.slow

EVENTS = 120
ADOPTED = re.compile(r"agent: run (\w+): its producer is gone")


def _agent(spool: Path, endpoint: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "collector", "--log-level", "INFO", "agent", "--spool-dir", str(spool),
             "--endpoint", endpoint, "--scan-every", "0.3"],
            env=env(), stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip


def _exited_early(spool: Path, work: Path, endpoint: str, names: list[str], homed: bool = False) -> None:
    """Producers that wait 0.3 s for a collector that is not there, then exit 0 undelivered.

    ``homed``: with several collectors in ``endpoint``, run ids homed on each in turn.
    """
    endpoints = tuple(endpoint.split(","))
    homes = [run_homed_on(endpoints[i % len(endpoints)], endpoints, name) for i, name in enumerate(names)]
    procs = [
        produce(endpoint, spool, work, name, EVENTS, "--file-every", "40", "--model-bytes", "300000",
                "--flush-timeout", "0.3",
                *(("--run-id", run) if homed else ()))
        for run, name in zip(homes, names, strict=True)
    ]  # fmt: skip
    for proc in procs:
        output, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, output.decode()
    assert sorted(p.name for p in spool.iterdir() if not p.name.startswith(".")), "no outbox was left"


def _outboxes(spool: Path) -> list[str]:
    if not spool.is_dir():
        return []
    return sorted(p.name for p in spool.iterdir() if p.is_dir() and not p.name.startswith("."))


def _stopped(proc: subprocess.Popen[bytes], log: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0, log.read_text()


def test_an_agent_delivers_every_leftover_outbox_once_the_collector_comes(tmp_path: Path) -> None:
    spool, work, endpoint = tmp_path / "spool", tmp_path / "work", f"tcp://127.0.0.1:{free_port()}"
    names = [f"early-{i}" for i in range(5)]
    _exited_early(spool, work, endpoint, names)
    left = _outboxes(spool)
    assert len(left) == len(names)

    # An agent with no collector: it takes the outboxes over, then a SIGTERM ends it cleanly and
    # leaves them as they were.
    first = _agent(spool, endpoint, tmp_path / "agent-1.log")
    wait_for(
        lambda: len(ADOPTED.findall((tmp_path / "agent-1.log").read_text())) == len(names), 30, "adoption"
    )
    started = time.monotonic()
    _stopped(first, tmp_path / "agent-1.log")
    assert time.monotonic() - started < 3
    assert _outboxes(spool) == left
    assert f"0 delivered, {len(names)} left" in (tmp_path / "agent-1.log").read_text()

    second = _agent(spool, endpoint, tmp_path / "agent-2.log")
    data = tmp_path / "collector"
    collector = start_collector(endpoint, data, tmp_path / "collector.log")
    try:
        wait_ready(endpoint, collector)
        wait_for(
            lambda: not _outboxes(spool),
            60,
            f"the agent to empty the spool\n{(tmp_path / 'agent-2.log').read_text()}",
        )
        _stopped(second, tmp_path / "agent-2.log")
    finally:
        stop(collector)
    for name in names:
        check_exactly_once(data, work / f"{name}.json", EVENTS, model=True)
    log = (tmp_path / "agent-2.log").read_text()
    assert sorted(ADOPTED.findall(log)) == sorted(left)
    assert f"{len(names)} delivered, 0 left" in log


def _adopted(folder: Path) -> list[str]:
    return [run for log in sorted(folder.glob("agent-*.log")) for run in ADOPTED.findall(log.read_text())]


def test_two_agents_and_a_live_producer_never_send_one_outbox_twice(tmp_path: Path) -> None:
    """The outbox lock decides: each leftover is taken by one agent; a live producer's, by none."""
    spool, work, endpoint = tmp_path / "spool", tmp_path / "work", f"tcp://127.0.0.1:{free_port()}"
    names = [f"early-{i}" for i in range(6)]
    # Started first, the live producer has looked for leftovers (a producer delivers those it
    # finds at its start, and every 30 s) before there are any: the agents get them all.
    live = produce(endpoint, spool, work, "live", EVENTS, "--rate", "20", "--flush-timeout", "60")
    wait_for(lambda: _outboxes(spool), 30, "the live producer's outbox")
    _exited_early(spool, work, endpoint, names)
    agents = [_agent(spool, endpoint, tmp_path / f"agent-{i}.log") for i in range(2)]
    wait_for(lambda: len(_adopted(tmp_path)) >= len(names), 30, "the agents to take the leftovers over")
    data = tmp_path / "collector"
    collector = start_collector(endpoint, data, tmp_path / "collector.log")
    try:
        wait_ready(endpoint, collector)
        output, _ = live.communicate(timeout=60)
        assert live.returncode == 0, output.decode()
        wait_for(lambda: not _outboxes(spool), 60, "the agents to empty the spool")
        for agent, i in zip(agents, range(2), strict=True):
            _stopped(agent, tmp_path / f"agent-{i}.log")
    finally:
        stop(collector)
        for agent in agents:
            agent.kill()
    adopted = _adopted(tmp_path)
    runs = {json.loads((work / f"{name}.json").read_text())["run"] for name in names}
    live_run = json.loads((work / "live.json").read_text())["run"]
    assert sorted(adopted) == sorted(runs), "each leftover taken over by exactly one agent"
    assert live_run not in adopted, "a live producer's outbox was taken over"
    for name in [*names, "live"]:
        check_exactly_once(data, work / f"{name}.json", EVENTS, model=name != "live")


def test_with_several_collectors_each_outbox_goes_to_the_one_it_records(tmp_path: Path) -> None:
    """Runs homed on two collectors; the agent knows only one of them, the outboxes name both."""
    from producer.wire.endpoint import home_of

    spool, work = tmp_path / "spool", tmp_path / "work"
    endpoints = (f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}")
    names = [f"early-{i}" for i in range(6)]
    _exited_early(spool, work, ",".join(endpoints), names, homed=True)
    agent = _agent(spool, endpoints[0], tmp_path / "agent.log")
    datas = [tmp_path / "collector-0", tmp_path / "collector-1"]
    collectors = [
        start_collector(e, d, tmp_path / f"{d.name}.log") for e, d in zip(endpoints, datas, strict=True)
    ]
    try:
        for endpoint, proc in zip(endpoints, collectors, strict=True):
            wait_ready(endpoint, proc)
        wait_for(
            lambda: not _outboxes(spool),
            60,
            f"the agent to empty the spool\n{(tmp_path / 'agent.log').read_text()}",
        )
        _stopped(agent, tmp_path / "agent.log")
    finally:
        for proc in collectors:
            stop(proc)
    homes = set()
    for name in names:
        run = json.loads((work / f"{name}.json").read_text())["run"]
        home = endpoints.index(home_of(run, endpoints))
        homes.add(home)
        check_exactly_once(datas[home], work / f"{name}.json", EVENTS, model=True)
    assert homes == {0, 1}
