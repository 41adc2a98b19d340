from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from producer_helpers import FakeCollector, free_endpoint, leftover_outbox, other_version_header
from waiting import wait_for

from producer import Run
from producer.config import ProducerConfig
from producer.transport.client import Client
from producer.transport.outbox import Outbox
from producer.transport.sync import SyncProgress, sync
from producer.transport.transfer import CREDIT
from producer.transport.window import RESEND_AFTER, WINDOW_EVENTS
from producer.wire import protocol

#: Stop the producer clients after each test (some drop events on purpose), before the
#: suite's leak check (tests/integration/conftest.py).
pytestmark = pytest.mark.usefixtures("clients_stopped")


@pytest.fixture
def spool() -> Path:
    return Path(os.environ["CLEARML_RELAY_SPOOL_DIR"])


def _client(endpoint: str, spool: Path, **kwargs: object) -> Client:
    return Client(ProducerConfig.from_env(endpoint=endpoint, spool_dir=spool), at_exit=False, **kwargs)  # type: ignore[arg-type]


def _python(code: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_leftover_outbox_is_adopted_and_a_locked_one_is_not(spool: Path) -> None:
    leftover_outbox(spool, "crashed", 30).close()  # lock released: its producer is gone
    live = leftover_outbox(spool, "alive", 5)  # lock held: a live producer owns it
    with FakeCollector() as fake:
        client = _client(fake.endpoint, spool)
        assert fake.wait_for(lambda f: f.positions.get("crashed") == 30)
        wait_for(lambda: not (spool / "crashed").exists())
        assert client.sender.locked == {"alive"}
        assert "alive" not in fake.positions
        assert (spool / "alive").exists()
        assert client.stats()["outboxes_adopted"] == 1
        client.close(0)
    live.close()


@pytest.mark.slow
def test_killed_producer_is_delivered_by_the_next_one(spool: Path) -> None:
    down = free_endpoint()
    done = _python(f"""
        import os, signal
        from producer import Run
        run = Run("p", "killed", endpoint={down!r}, run_id="killed-run")
        for i in range(200):
            run.scalar("loss", "train", float(i), i)
        run.flush(0.3)  # the collector is down: nothing is acked
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    assert done.returncode == -9, done.stderr
    assert (spool / "killed-run").exists()
    with FakeCollector() as fake:
        client = _client(fake.endpoint, spool)
        assert fake.wait_for(lambda f: f.positions.get("killed-run") == 201)
        assert fake.seqs("killed-run") == list(range(1, 202))
        wait_for(lambda: not (spool / "killed-run").exists())
        client.close(0)


def test_nack_rewinds_once_per_expect() -> None:
    with FakeCollector() as fake:
        run = Run("p", "nack", endpoint=fake.endpoint, run_id="nack-run")
        fake.lose.add(("nack-run", 3))  # lost in flight: everything after it is out of order
        for i in range(100):
            run.scalar("loss", "train", float(i), i)
        assert run.close()
        assert fake.seqs("nack-run") == list(range(1, 103))
        assert fake.nacks_sent > 1
        assert run.client is not None
        stats = run.client.stats()
        assert stats["rewinds"] == 1  # one rewind for many Nacks naming the same expect
        assert stats.get("resends", 0) == 0


@pytest.mark.slow
def test_silence_resends_from_acked_position() -> None:
    with FakeCollector() as fake:
        fake.drop_submits = 1  # the first Submit vanishes: no ack, no nack
        run = Run("p", "silence", endpoint=fake.endpoint, run_id="silent-run")
        started = time.monotonic()
        run.scalar("a", "b", 1.0, 1)
        assert run.flush(RESEND_AFTER + 5)
        assert time.monotonic() - started >= RESEND_AFTER * 0.9
        assert fake.seqs("silent-run") == [1, 2]
        assert run.client is not None
        assert run.client.stats()["resends"] >= 1
        run.close()


@pytest.mark.slow
def test_in_flight_window_is_bounded_without_acks() -> None:
    with FakeCollector(ack=False) as fake:
        run = Run("p", "window", endpoint=fake.endpoint, run_id="window-run")
        for i in range(WINDOW_EVENTS + 1000):
            run.scalar("loss", "train", float(i), i)
        assert run.client is not None
        client = run.client
        # A full resend cycle has happened: still nothing beyond the window was sent.
        wait_for(lambda: client.stats().get("resends", 0) >= 1, timeout=RESEND_AFTER + 10)
        assert fake.positions["window-run"] == WINDOW_EVENTS
        fake.ack = True
        assert run.close(), client.stats()
        assert fake.positions["window-run"] == WINDOW_EVENTS + 1002


def _model(tmp_path: Path, size: int) -> tuple[Path, str]:
    path = tmp_path / "best.pt"
    path.write_bytes(os.urandom(size))
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def test_file_transfer_resumes_from_what_the_collector_has(tmp_path: Path) -> None:
    path, sha = _model(tmp_path, 5 * protocol.CHUNK_BYTES + 100)
    have = 2 * protocol.CHUNK_BYTES + 10
    with FakeCollector() as fake:
        fake.preset_file(sha, path.stat().st_size, path.read_bytes()[:have])
        run = Run("p", "resume", endpoint=fake.endpoint)
        run.model(path)
        assert run.close()
        assert fake.chunk_offsets[0] == have
        assert bytes(fake.files[sha].data) == path.read_bytes()
        assert fake.violations == []


def test_file_rejected_by_checksum_is_sent_again_from_have(tmp_path: Path) -> None:
    path, sha = _model(tmp_path, 3 * protocol.CHUNK_BYTES)
    with FakeCollector() as fake:
        fake.corrupt_chunk_at = protocol.CHUNK_BYTES
        run = Run("p", "corrupt", endpoint=fake.endpoint)
        run.model(path, name="best.pt")
        assert run.close()
        assert fake.chunk_offsets.count(0) == 2
        assert bytes(fake.files[sha].data) == path.read_bytes()
        assert run.client is not None
        assert run.client.stats()["file_errors"] == 1


@pytest.mark.slow
def test_credit_window_bounds_chunks_in_flight_and_other_runs_flow(tmp_path: Path) -> None:
    path, _ = _model(tmp_path, 20 * protocol.CHUNK_BYTES)
    with FakeCollector() as fake:
        fake.hold_file_status = True
        big = Run("p", "big", endpoint=fake.endpoint, run_id="big-run")
        big.model(path)
        assert fake.wait_for(lambda f: len(f.chunk_offsets) >= CREDIT)
        small = Run("p", "small", endpoint=fake.endpoint, run_id="small-run")
        small.scalar("a", "b", 1.0, 1)
        assert small.close()  # delivered while the other run waits for file credit
        assert not fake.wait_for(lambda f: len(f.chunk_offsets) > CREDIT, timeout=0.5)
        fake.hold_file_status = False
        big.close(0)


def test_refuse_version_is_logged_exactly_once(caplog: pytest.LogCaptureFixture, spool: Path) -> None:
    ours, theirs = protocol.PROTOCOL_VERSION, protocol.PROTOCOL_VERSION + 1
    with FakeCollector(header=other_version_header(theirs)) as fake, caplog.at_level(logging.ERROR):
        runs = [Run("p", f"v{i}", endpoint=fake.endpoint) for i in range(3)]
        for run in runs:
            run.scalar("a", "b", 1.0, 1)
        assert fake.wait_for(lambda f: f.refusals_sent >= 3)
        assert runs[0].flush(0.2) is False
        errors = [r.getMessage() for r in caplog.records if f"speaks protocol {theirs}" in r.getMessage()]
        assert errors == [
            f"clearml-relay: collector at {fake.endpoint} speaks protocol {theirs}, this producer speaks "
            f"{ours}; events stay in the outbox at {spool}"
        ]
        assert all((spool / run.id).exists() for run in runs)


def test_refuse_invalid_is_logged_once_per_run(caplog: pytest.LogCaptureFixture) -> None:
    with FakeCollector() as fake, caplog.at_level(logging.WARNING):
        fake.invalid |= {("inv-run", 2), ("inv-run", 3)}
        run = Run("p", "invalid", endpoint=fake.endpoint, run_id="inv-run")
        for i in range(4):
            run.scalar("a", "b", float(i), i)
        assert run.close()
        warned = [r.getMessage() for r in caplog.records if "as invalid" in r.getMessage()]
        assert len(warned) == 1
        assert "inv-run" in warned[0]
        assert "bad title" in warned[0]
        assert run.client is not None
        assert run.client.stats()["refused_invalid"] == 2


def test_heartbeat_lists_open_runs() -> None:
    with FakeCollector() as fake:
        run = Run("p", "hb", endpoint=fake.endpoint, run_id="hb-run")
        assert fake.wait_for(
            lambda f: any(isinstance(r, protocol.Heartbeat) and "hb-run" in r.runs for r in f.requests)
        )
        beat = next(r for r in fake.requests if isinstance(r, protocol.Heartbeat))
        assert beat.pid == os.getpid()
        run.close()


def test_overflow_drops_and_warns_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fifo = tmp_path / "slow.png"
    os.mkfifo(fifo)  # the writer blocks opening it until we open the other end
    with FakeCollector() as fake:
        client = Client(ProducerConfig.from_env(endpoint=fake.endpoint, max_pending=4), at_exit=False)
        state = client.open_run("overflow-run")
        assert state is not None
        event = protocol.DebugImage(
            run="overflow-run", seq=1, title="t", series="s", iteration=0,
            file=protocol.FileRef(sha256="0" * 64, size=0, name="x"),
        )  # fmt: skip
        assert client.submit(state, event, str(fifo))
        wait_for(lambda: client.stats()["pending"] == 1)
        accepted = []
        with caplog.at_level(logging.WARNING):
            for i in range(10):
                scalar = protocol.Scalar(
                    run="overflow-run", seq=1, title="t", series="s", value=i, iteration=i
                )
                accepted.append(client.submit(state, scalar))
        assert accepted == [True] * 3 + [False] * 7
        assert client.stats()["dropped_overflow"] == 7
        assert len([r for r in caplog.records if "CLEARML_RELAY_MAX_PENDING" in r.getMessage()]) == 1
        with open(fifo, "wb") as f:
            f.write(b"image bytes")
        # Everything accepted is delivered, but the run is not whole: a flush says so.
        assert client.flush(10) is False
        assert fake.seqs("overflow-run") == [1, 2, 3, 4]
        assert state.finished()
        assert state.lost == 7
        client.close(0)


@pytest.mark.parametrize("close", [True, False])
@pytest.mark.slow
def test_exit_with_collector_down_is_bounded(spool: Path, close: bool) -> None:
    # close() waits the flush timeout once; the exit handler must not wait a second time.
    done = _python(f"""
        import time
        from producer import Run
        run = Run("p", "exit", endpoint={free_endpoint()!r}, flush_timeout=1.0, run_id="exit-run")
        for i in range(1000):
            run.scalar("loss", "train", float(i), i)
        print(time.monotonic(), flush=True)
        if {close!r}:
            print(run.close(), flush=True)
    """)
    exited = time.monotonic()
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split()
    assert exited - float(lines[0]) < 1.0 + 1.0
    assert lines[1:] == (["False"] if close else [])
    outbox = Outbox.open(spool, "exit-run", create=False)
    assert outbox is not None
    assert (outbox.last_seq, outbox.acked) == (1001 + close, 0)
    outbox.close()


def test_close_with_collector_down_returns_false_in_time() -> None:
    run = Run("p", "down", endpoint=free_endpoint(), flush_timeout=0.3)
    run.scalar("a", "b", 1.0, 1)
    started = time.monotonic()
    assert run.close() is False
    assert 0.25 <= time.monotonic() - started < 1.0


def test_import_producer_loads_no_heavy_library() -> None:
    done = _python("""
        import sys
        import producer
        heavy = ("clearml", "torch", "matplotlib", "ultralytics", "numpy")
        heavy = sorted(m for m in heavy if m in sys.modules)
        print(",".join(heavy))
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""


def test_sync_delivers_leftovers_and_reports_locked(spool: Path) -> None:
    for name in ("left-a", "left-b"):
        leftover_outbox(spool, name, 50).close()
    live = leftover_outbox(spool, "live-run", 3)
    reports: list[SyncProgress] = []
    with FakeCollector() as fake:
        result = sync(spool, fake.endpoint, timeout=10, progress=reports.append)
    live.close()
    assert result.ok
    assert result.delivered == ("left-a", "left-b")
    assert result.locked == ("live-run",)
    assert (result.events_acked, result.events_total) == (100, 100)
    assert reports[-1].runs_left == 0
    assert reports[-1].events_acked == 100
    assert fake.positions == {"left-a": 50, "left-b": 50}


def test_sync_with_collector_down_reports_what_is_left(spool: Path) -> None:
    leftover_outbox(spool, "stuck", 7).close()
    started = time.monotonic()
    result = sync(spool, free_endpoint(), timeout=0.5, progress=None)
    assert time.monotonic() - started < 2.0
    assert not result.ok
    assert result.left == {"stuck": 7}
    assert (spool / "stuck").exists()
