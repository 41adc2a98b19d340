"""/metrics and /healthz of a real collector process, over real sockets.

Metrics are checked against what was sent: per-kind counts of received, journaled and applied
events, the journal's size on disk, the backlog of a run whose backend fails (its records file
is /dev/full), refusals by reason, backend errors and apply latencies. Health is checked against
real failures: the journal directory replaced by a file, a full filesystem under the journal, and
an ingest loop stuck in a system call (opening a FIFO, as a hung network filesystem would).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from collector_helpers import Producer, close_event, records, run_events
from e2e import env, fill_up, private_tmpfs, stop, wait_for
from service_helpers import running_service, sample, stuck_backend

from collector.config import ENV_METRICS_HOST, ENV_METRICS_PORT
from producer.wire import protocol

DEADLINE = 20.0


def _segments(data: Path) -> int:
    return sum(p.stat().st_size for p in (data / "journal").rglob("*.seg"))


@pytest.mark.slow
def test_metrics_report_what_was_sent_applied_refused_and_stuck(tmp_path: Path) -> None:
    stuck_backend(tmp_path / "data", "stuck")
    with running_service(tmp_path) as service, Producer(service.endpoint) as producer:
        producer.submit([*run_events("good", 4), close_event("good", 5)])  # open, 3 scalars, close
        producer.until_acked("good", 5)
        producer.submit(run_events("stuck", 3))  # open, 2 scalars: journaled, never applied
        producer.until_acked("stuck", 3)
        producer.send_frames([protocol.HEADER, b"\xc1 not msgpack"])
        assert producer.expect(protocol.Refuse).code == "malformed"

        def settled() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
            samples = service.metrics()
            done = (
                sample(samples, "clearml_relay_events_applied_total", kind="close") == 1
                and sample(samples, "clearml_relay_backend_errors_total", error="apply_error") >= 2
                and sample(samples, "clearml_relay_runs", state="completed") == 1
                and sample(samples, "clearml_relay_internal_events_total", name="runs_retired") == 1
                and sample(samples, "clearml_relay_journal_bytes") == _segments(service.data)
            )
            return samples if done else None

        samples = wait_for(settled, DEADLINE, "the good run applied and retired, the stuck one failing")
    assert [r["seq"] for r in records(service.data, "good")] == [1, 2, 3, 4, 5]
    for what in ("received", "journaled"):
        name = f"clearml_relay_events_{what}_total"
        assert sample(samples, name, kind="open") == 2
        assert sample(samples, name, kind="scalar") == 5
        assert sample(samples, name, kind="close") == 1
    applied = "clearml_relay_events_applied_total"
    assert (sample(samples, applied, kind="open"), sample(samples, applied, kind="scalar")) == (1, 3)
    # The good run's journal is retired; what is left is the stuck run's, byte for byte on disk.
    assert sample(samples, "clearml_relay_journal_bytes") > 0
    assert sample(samples, "clearml_relay_journal_max_bytes") == 10 * 1024**3
    assert sample(samples, "clearml_relay_run_backlog_events", run="stuck") == 3
    assert ("clearml_relay_run_backlog_events", (("run", "good"),)) not in samples  # finished, caught up
    assert sample(samples, "clearml_relay_backlog_events") == 3
    assert sample(samples, "clearml_relay_runs", state="open") == 1
    assert sample(samples, "clearml_relay_refusals_total", reason="malformed") == 1
    assert sample(samples, "clearml_relay_backend_errors_total", error="rewind") == 0
    # One latency per applied event, in the histogram's +Inf bucket and count.
    hist = "clearml_relay_apply_duration_seconds"
    assert sample(samples, f"{hist}_count", kind="scalar") == 3
    assert sample(samples, f"{hist}_bucket", kind="scalar", le="+Inf") == 3
    assert 0 < sample(samples, f"{hist}_sum", kind="scalar") < 1.0
    assert sample(samples, "clearml_relay_checkpoint_duration_seconds_count") >= 1
    assert not list((service.data / "journal" / "good").glob("*.seg"))
    assert sample(samples, "clearml_relay_healthy") == 1
    assert sample(samples, "process_resident_memory_bytes") > 0  # the private registry has them too


def _healthcheck(http_port: str) -> subprocess.CompletedProcess[str]:
    """``clearml-relay healthcheck`` as the container's HEALTHCHECK runs it: env only."""
    return subprocess.run(
        [sys.executable, "-m", "collector", "healthcheck"],
        env=env(**{ENV_METRICS_PORT: http_port, ENV_METRICS_HOST: "0.0.0.0"}),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.slow
def test_healthz_fails_while_the_journal_directory_is_not_writable(tmp_path: Path) -> None:
    with running_service(tmp_path) as service:
        assert service.healthz() == (200, "ok\n")
        port = service.http.rsplit(":", 1)[1]
        ok = _healthcheck(port)
        assert (ok.returncode, ok.stdout.strip()) == (0, "healthy: ok")
        journal = service.data / "journal"
        journal.rename(tmp_path / "journal-away")
        journal.write_text("a file where the journal directory was\n")
        _, reason = wait_for(lambda: (h := service.healthz())[0] == 503 and h, DEADLINE, "/healthz to fail")
        assert "journal directory" in reason
        assert "not writable" in reason
        failed = _healthcheck(port)
        assert failed.returncode == 1
        assert "unhealthy (503)" in failed.stderr
        assert sample(service.metrics(), "clearml_relay_healthy") == 0
        journal.unlink()
        (tmp_path / "journal-away").rename(journal)
        wait_for(lambda: service.healthz() == (200, "ok\n"), DEADLINE, "/healthz to recover")
        assert stop(service.proc) == 0


@pytest.mark.slow
def test_healthz_fails_while_the_ingest_loop_is_stuck_then_while_its_write_failed(tmp_path: Path) -> None:
    # A run's metadata is written through meta.json.tmp: a FIFO there blocks the ingest thread in
    # open() until someone reads it, as a hung network filesystem would; then fsync fails on it.
    run_dir = tmp_path / "data" / "journal" / "hung"
    run_dir.mkdir(parents=True)
    fifo = run_dir / "meta.json.tmp"
    os.mkfifo(fifo)
    with running_service(tmp_path) as service, Producer(service.endpoint) as producer:
        assert service.healthz() == (200, "ok\n")
        producer.submit(run_events("hung", 2))
        _, reason = wait_for(
            lambda: (h := service.healthz())[0] == 503 and h, DEADLINE, "/healthz to see the stall"
        )
        assert "ingest loop has not come round" in reason
        assert sample(service.metrics(), "clearml_relay_ingest_loop_age_seconds") > 5.0
        # Read the FIFO: the blocked open() returns and the metadata is written, but fsync of a
        # FIFO fails: the batch is not journaled, the producer is told to back off.
        reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        written = bytearray()
        drained = threading.Event()

        def drain() -> None:
            os.set_blocking(reader, True)
            while chunk := os.read(reader, 4096):
                written.extend(chunk)
            drained.set()

        threading.Thread(target=drain, daemon=True).start()
        try:
            assert drained.wait(DEADLINE), "the collector never finished writing the metadata"
            refused = producer.expect(protocol.Refuse)
        finally:
            os.close(reader)
        assert b'"project": "proj"' in written
        assert (refused.code, refused.run) == ("backoff", "hung")
        _, reason = wait_for(
            lambda: (h := service.healthz())[0] == 503 and "write failed" in h[1] and h,
            DEADLINE,
            "/healthz to report the failed write",
        )
        assert "run hung" in reason
        # The filesystem is sane again: the resent events are journaled and health returns.
        fifo.unlink()
        producer.submit(run_events("hung", 2))
        producer.until_acked("hung", 2)
        wait_for(lambda: service.healthz() == (200, "ok\n"), DEADLINE, "/healthz to recover")
        assert stop(service.proc) == 0


@pytest.mark.slow
def test_healthz_fails_while_the_journal_disk_is_full(tmp_path: Path) -> None:
    data = tmp_path / "data"
    prefix = private_tmpfs(data / "journal", size="4m")
    if prefix is None:
        pytest.skip("this machine cannot mount a private tmpfs (unshare --mount)")
    with running_service(tmp_path, prefix=prefix) as service:
        assert service.healthz() == (200, "ok\n")
        # The collector's own view of its journal directory: the tmpfs in its mount namespace.
        ballast = fill_up(Path(f"/proc/{service.proc.pid}/root") / data.relative_to("/") / "journal")
        _, reason = wait_for(
            lambda: (h := service.healthz())[0] == 503 and h, DEADLINE, "/healthz to see the full disk"
        )
        assert "No space left on device" in reason
        ballast.unlink()
        wait_for(lambda: service.healthz() == (200, "ok\n"), DEADLINE, "/healthz to recover")
        assert stop(service.proc, signal.SIGTERM) == 0
