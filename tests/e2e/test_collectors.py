"""More than one collector: each run goes to one of them, and stays there, whatever happens.

A local simulation of a StatefulSet of collectors: real collector processes (JSONL record
backend) on their own ports and data directories, and producer processes that take the
collectors as a comma-separated ``CLEARML_RELAY_ENDPOINT``. Each run's home is chosen by
rendezvous hashing of its id over the list the producer was given, recorded in its outbox, and
never changed. Mid-run one collector is ``kill -9``-ed and restarted, one is added (later
producers get a longer list) and one is removed (later producers get a list without it; it keeps
running until its own runs are in, as a StatefulSet scale-down drains). Every run must be applied
exactly once, by its home collector only.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
from e2e import (
    applied,
    check_exactly_once,
    completed,
    free_port,
    produce,
    run_homed_on,
    start_collector,
    stop,
    wait_for,
    wait_ready,
)

from producer.wire.endpoint import home_of

pytestmark = pytest.mark.slow

EVENTS = 300


class Collectors:
    """Collector processes by name, each with its endpoint and data directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.endpoints: dict[str, str] = {}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str) -> str:
        endpoint = self.endpoints.setdefault(name, f"tcp://127.0.0.1:{free_port()}")
        proc = start_collector(endpoint, self.data(name), self.root / f"{name}.log")
        wait_ready(endpoint, proc)
        self.procs[name] = proc
        return endpoint

    def data(self, name: str) -> Path:
        return self.root / f"collector-{name}"

    def kill(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGKILL)
        self.procs[name].wait(10)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                stop(proc)


def test_runs_stay_on_their_collector_through_a_kill_an_addition_and_a_removal(tmp_path: Path) -> None:
    collectors = Collectors(tmp_path)
    started: list[tuple[str, tuple[str, ...], subprocess.Popen[bytes]]] = []

    def producers(prefix: str, count: int, names: tuple[str, ...]) -> None:
        endpoints = tuple(collectors.endpoints[n] for n in names)
        for i in range(count):
            name = f"{prefix}-{i}"
            run = run_homed_on(endpoints[i % len(endpoints)], endpoints, name)  # every collector gets runs
            proc = produce(
                ",".join(endpoints), tmp_path / "spool" / name, tmp_path / "work", name, EVENTS,
                "--rate", "150", "--file-every", "75", "--model-bytes", "200000", "--flush-timeout", "90",
                "--run-id", run,
            )  # fmt: skip
            started.append((name, endpoints, proc))

    try:
        for name in ("a", "b", "c"):
            collectors.start(name)
        producers("first", 8, ("a", "b", "c"))
        spools = tmp_path / "spool"
        wait_for(
            lambda: spools.is_dir() and len(list(spools.iterdir())) == 8, 30, "the first producers' spools"
        )
        collectors.kill("b")  # kill -9 mid-run, then back on the same data directory and port
        collectors.start("b")
        collectors.start("d")  # one added: later producers know four collectors
        producers("added", 6, ("a", "b", "c", "d"))
        producers("removed", 6, ("a", "b", "d"))  # c leaves the list; it drains its own runs
        for name, _, proc in started:
            output, _ = proc.communicate(timeout=180)
            assert proc.returncode == 0, f"{name}: {output.decode()[-2000:]}"
        runs = {
            name: json.loads((tmp_path / "work" / f"{name}.json").read_text())["run"]
            for name, _, _ in started
        }
        homes = {
            name: next(n for n, e in collectors.endpoints.items() if e == home_of(runs[name], endpoints))
            for name, endpoints, _ in started
        }
        for name, home in homes.items():
            wait_for(lambda: completed(collectors.endpoints[home], runs[name]), 60, f"{name} on {home}")  # noqa: B023
    finally:
        collectors.stop_all()
    assert len(set(runs.values())) == len(started) == 20
    for name, home in homes.items():
        check_exactly_once(collectors.data(home), tmp_path / "work" / f"{name}.json", EVENTS, model=True)
        others = [n for n in collectors.endpoints if n != home and runs[name] in applied(collectors.data(n))]
        assert not others, f"{name} ({runs[name]}) was applied by {others} besides its home {home}"
    assert all(homes[name] != "c" for name in homes if name.startswith("removed")), (
        "a run went to c after it left"
    )
    assert sorted(set(homes.values())) == ["a", "b", "c", "d"], homes
