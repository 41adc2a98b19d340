"""``clearml-relay sync`` as a real subprocess: where it connects, what it shows, what it leaves."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import zmq
from collector_helpers import running
from e2e import env
from producer_helpers import free_endpoint, leftover_outbox
from waiting import wait_for

from collector.service.syncview import SyncView
from collector.storage.journal import read_position
from producer.config import ENV_ENDPOINT
from producer.transport.sync import (
    DELIVERED,
    LOCKED,
    NOT_DELIVERED,
    RunOutcome,
    SyncProgress,
    SyncResult,
    sync,
)
from producer.wire import protocol
from producer.wire.endpoint import EXPECTED

HINT = f"(--endpoint / {ENV_ENDPOINT})"


@pytest.fixture
def spool() -> Path:
    return Path(os.environ["CLEARML_RELAY_SPOOL_DIR"])


#: Stop the producer clients after each test (some drop events on purpose), before the
#: suite's leak check (tests/integration/conftest.py).
pytestmark = pytest.mark.usefixtures("clients_stopped")


def _sync(*args: str, **environ: str) -> subprocess.CompletedProcess[str]:
    """``clearml-relay sync ARGS`` with none of the test process's CLEARML_RELAY_* variables."""
    clean = {k: v for k, v in env().items() if not k.startswith("CLEARML_RELAY_")}
    return subprocess.run(
        [sys.executable, "-m", "collector", "sync", *args],
        env={**clean, **environ},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _snapshot(spool: Path) -> dict[str, tuple[bytes, int] | None]:
    """Every path under ``spool``: a file's bytes and mtime, None for a directory."""
    return {
        str(p.relative_to(spool)): (p.read_bytes(), p.stat().st_mtime_ns) if p.is_file() else None
        for p in sorted(spool.rglob("*"))
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "environ", "line"),
    [
        (["--endpoint", "127.0.0.1:5555"], {}, f"--endpoint='127.0.0.1:5555': {EXPECTED}"),
        (["--endpoint", "tcp://*:5555"], {ENV_ENDPOINT: "tcp://127.0.0.1:5555"},
         f"--endpoint='tcp://*:5555': {EXPECTED}"),
        ([], {ENV_ENDPOINT: "localhost:5555"}, f"{ENV_ENDPOINT}='localhost:5555': {EXPECTED}"),
        (["--endpoint", "tcp://127.0.0.1:9", "--timeout", "0"], {},
         "--timeout=0: expected a number of seconds > 0"),
        (["--endpoint", "tcp://127.0.0.1:9", "--connect-timeout", "-1"], {},
         "--connect-timeout=-1: expected a number of seconds > 0"),
    ],
)  # fmt: skip
def test_a_bad_endpoint_or_timeout_is_one_line_naming_where_it_came_from(
    tmp_path: Path, args: list[str], environ: dict[str, str], line: str
) -> None:
    spool = tmp_path / "spool"
    leftover_outbox(spool, "kept", 3).close()
    before = _snapshot(spool)
    result = _sync("--spool-dir", str(spool), *args, **environ)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"clearml-relay: configuration error: {line}\n"
    assert _snapshot(spool) == before


@pytest.mark.slow
def test_with_no_collector_it_says_so_fast_and_leaves_the_outboxes_untouched(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    leftover_outbox(spool, "run-a", 11).close()
    leftover_outbox(spool, "run-b", 4).close()
    before = _snapshot(spool)
    endpoint = free_endpoint()
    result = _sync(
        "--spool-dir", str(spool), "--endpoint", endpoint, "--connect-timeout", "1", "--log-level", "warning"
    )
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        f"sync: delivering 2 outboxes (15 events) from {spool} to {endpoint}\n"
        f"sync: no collector answered at {endpoint} within 1 s; is it running? {HINT}\n"
    )
    assert _snapshot(spool) == before


@pytest.mark.slow
def test_the_variable_gives_the_endpoint_and_the_message_names_it(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    leftover_outbox(spool, "run-a", 2).close()
    endpoint = free_endpoint()
    result = _sync(
        "--connect-timeout",
        "0.5",
        "--log-level",
        "warning",
        CLEARML_RELAY_SPOOL_DIR=str(spool),
        **{ENV_ENDPOINT: endpoint},
    )
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"sync: delivering 1 outbox (2 events) from {spool} to {endpoint}",
        f"sync: no collector answered at {endpoint} within 0.5 s; is it running? {HINT}",
    ]


@pytest.mark.slow
def test_delivers_and_ends_with_a_table_of_every_outbox(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    leftover_outbox(spool, "run-a", 11).close()
    leftover_outbox(spool, "run-b", 5).close()
    live = leftover_outbox(spool, "live-run", 3)  # its producer holds the lock: left to it
    try:
        with running(tmp_path / "data") as collector:
            endpoint = collector.bound_endpoint
            result = _sync("--spool-dir", str(spool), "--endpoint", endpoint, "--log-level", "warning")
            journaled = {
                run: read_position(tmp_path / "data" / "journal" / run) for run in ("run-a", "run-b")
            }
    finally:
        live.close()
    assert result.returncode == 0, result.stderr
    assert result.stderr == (
        f"sync: delivering 2 outboxes (16 events) from {spool} to {endpoint}; "
        "1 outbox is locked by a live producer, left to it\n"
    )
    assert result.stdout.splitlines() == [
        "run       events acknowledged  state",
        "─" * 56,
        "run-a                   11/11  delivered",
        "run-b                     5/5  delivered",
        "live-run                    -  locked by a live producer",
        f"sync: delivered 2 outboxes (16/16 events) to {endpoint}; 1 outbox is locked by a live producer, "
        "left to it",
    ]
    assert journaled == {"run-a": 11, "run-b": 5}
    assert sorted(p.name for p in spool.iterdir()) == ["live-run"]


@pytest.mark.slow
def test_an_empty_spool_has_nothing_to_deliver(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    result = _sync("--spool-dir", str(spool), "--endpoint", free_endpoint())
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == f"sync: nothing to deliver in {spool}\n"


def _report(elapsed: float, acked: int, *, answered: bool = True, final: bool = False) -> SyncProgress:
    return SyncProgress(1, acked, 20, (), elapsed, runs_total=1, answered=answered, final=final)


def test_off_a_terminal_progress_is_a_plain_line_every_5_s(tmp_path: Path) -> None:
    err = io.StringIO()  # not a terminal: no progress bar, and rich is never asked
    view = SyncView(tmp_path, "tcp://collector:5555", err)
    for i in range(25):  # a report every half second for 12 s, as the engine sends them
        view.progress(_report(i * 0.5, i, answered=i > 0, final=i == 24))
    view.close()
    assert err.getvalue().splitlines() == [
        f"sync: delivering 1 outbox (20 events) from {tmp_path} to tcp://collector:5555",
        "sync: 10/20 events acknowledged, 1 of 1 outbox left, 5 s",
        "sync: 20/20 events acknowledged, 1 of 1 outbox left, 10 s",
    ]  # and none at 12 s: the last report is followed by the summary


def test_off_a_terminal_a_silent_collector_shows_in_the_progress_line(tmp_path: Path) -> None:
    err = io.StringIO()
    view = SyncView(tmp_path, "tcp://collector:5555", err)
    view.progress(_report(0.0, 0, answered=False))
    view.progress(_report(5.0, 0, answered=False))
    assert err.getvalue().splitlines()[1:] == [
        "sync: 0/20 events acknowledged, 1 of 1 outbox left, waiting for tcp://collector:5555 to answer, 5 s"
    ]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("command", "shown"),
    [
        ("sync", ["(default: 60 s)", "(default: 5 s)", "default: tcp://127.0.0.1:5555"]),
        ("status", ["(default: 1 s)", "(default: 3 s)", "default: tcp://127.0.0.1:5555"]),
        ("healthcheck", ["(default: 5 s)"]),
        ("demo", ["(default: 5)"]),
    ],
)
def test_help_shows_every_default(command: str, shown: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "collector", command, "--help"],
        env=env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    text = " ".join(result.stdout.split())  # argparse wraps at the terminal's width
    assert [s for s in shown if s not in text] == []


def test_a_partial_sync_ends_with_what_is_left_and_where(tmp_path: Path) -> None:
    view = SyncView(tmp_path, "tcp://collector:5555", io.StringIO())
    result = SyncResult(
        delivered=("run-a",),
        left={"run-b": 7},
        locked=("live-run",),
        events_acked=14,
        events_total=21,
        runs=(
            RunOutcome("run-a", DELIVERED, 11, 11),
            RunOutcome("run-b", NOT_DELIVERED, 3, 10),
            RunOutcome("live-run", LOCKED),
        ),
        elapsed=60.2,
    )
    assert view.report(result).splitlines() == [
        "run       events acknowledged  state",
        "─" * 56,
        "run-a                   11/11  delivered",
        "run-b                    3/10  not delivered",
        "live-run                    -  locked by a live producer",
        f"sync: delivered 1 of 2 outboxes (14/21 events) to tcp://collector:5555 in 60 s; the rest stay in "
        f"{tmp_path}; 1 outbox is locked by a live producer, left to it",
    ]
    assert not result.ok
    assert not result.unreachable  # the collector answered: it acknowledged run-a


@pytest.mark.slow
def test_the_engine_gives_up_after_connect_timeout_without_touching_an_outbox(spool: Path) -> None:
    leftover_outbox(spool, "stuck", 7).close()
    before = _snapshot(spool)
    started = time.monotonic()
    result = sync(spool, free_endpoint(), timeout=30, connect_timeout=0.5)
    assert time.monotonic() - started < 2.0
    assert (result.unreachable, result.answered, result.left) == (True, False, {"stuck": 7})
    assert result.runs == (RunOutcome("stuck", NOT_DELIVERED, 0, 7),)
    assert _snapshot(spool) == before


@pytest.mark.slow
def test_a_collector_that_starts_within_connect_timeout_gets_everything(spool: Path, tmp_path: Path) -> None:
    leftover_outbox(spool, "late", 9).close()
    endpoint = free_endpoint()
    reports: list[SyncProgress] = []
    results: list[SyncResult] = []
    thread = threading.Thread(
        target=lambda: results.append(sync(spool, endpoint, timeout=30, progress=reports.append)), daemon=True
    )
    thread.start()
    wait_for(lambda: reports, what="the sync's first report")
    assert not reports[0].answered
    with running(tmp_path / "data", bind=endpoint):
        thread.join(30)
    assert results, "the sync did not end"
    assert (results[0].ok, results[0].answered, results[0].delivered) == (True, True, ("late",))
    assert reports[-1].answered
    assert reports[-1].final


class _StatusOnly:
    """A collector end that answers status requests and ignores everything else (never acks)."""

    def __init__(self) -> None:
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.linger = 0
        self._sock.bind("tcp://127.0.0.1:*")
        self.endpoint: str = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            if not self._sock.poll(20):
                continue
            peer, *frames = self._sock.recv_multipart()
            request, _ = protocol.decode_request(frames)
            if isinstance(request, protocol.StatusRequest):
                self._sock.send_multipart([peer, protocol.HEADER, protocol.encode(protocol.StatusReply())])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close(linger=0)
        self._ctx.term()


@pytest.mark.slow
def test_a_collector_that_answers_but_acks_nothing_yet_is_waited_for_until_timeout(spool: Path) -> None:
    """As while a big file goes over first: its acknowledgement comes only at the end."""
    leftover_outbox(spool, "slow", 5).close()
    collector = _StatusOnly()
    try:
        result = sync(spool, collector.endpoint, timeout=1.5, connect_timeout=0.2)
    finally:
        collector.close()
    assert (result.answered, result.unreachable, result.left) == (True, False, {"slow": 5})
    assert result.elapsed >= 1.5
