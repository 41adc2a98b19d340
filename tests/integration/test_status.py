"""``clearml-relay status`` against a real collector process: runs, backlog and rates, live.

Every test runs the real command as a subprocess against a real collector over ZeroMQ; the
backlog comes from a run whose backend fails (its records file is /dev/full), the rates from a
producer process sending at a steady pace while the command samples.
"""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from collector_helpers import Producer, run_events
from e2e import env, free_port, produce, status, wait_for
from service_helpers import running_service, stuck_backend

DEADLINE = 30.0


def _status(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "collector", "status", *args],
        env=env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.slow
def test_status_shows_runs_backlog_and_rates_of_a_live_collector(tmp_path: Path) -> None:
    stuck_backend(tmp_path / "data", "stuck")
    with running_service(tmp_path) as service, Producer(service.endpoint) as producer:
        producer.submit(run_events("stuck", 3))
        producer.until_acked("stuck", 3)
        live = produce(
            service.endpoint, tmp_path / "spool", tmp_path / "work", "live", 3000,
            "--rate", "300", "--flush-timeout", "30",
        )  # fmt: skip
        try:

            def live_run() -> str | None:
                reply = status(service.endpoint)
                runs = [i.run for i in reply.runs if i.run != "stuck" and i.applied > 10] if reply else []
                return runs[0] if runs else None

            run = wait_for(live_run, DEADLINE, "the live run to be applied")
            result = _status("--endpoint", service.endpoint, "--json", "--interval", "1")
            assert result.returncode == 0, result.stderr
            data = json.loads(result.stdout)
            table = _status("--endpoint", service.endpoint, "--interval", "0.2")
        finally:
            output = live.communicate(timeout=120)[0].decode()
    assert live.returncode == 0, output
    assert data["endpoint"] == service.endpoint
    assert 0.9 < data["interval_s"] < 5
    rates = data["rates"]
    # 300 events/s are sent; on a loaded 2-core machine anything clearly above zero proves the rate.
    for name in ("received_per_s", "journaled_per_s", "applied_per_s"):
        assert rates[name] > 30, rates
    assert rates["refused_per_s"] == 0
    runs = {r["run"]: r for r in data["runs"]}
    assert runs["stuck"]["backlog"] == 3
    assert (runs["stuck"]["journaled"], runs["stuck"]["applied"], runs["stuck"]["state"]) == (3, 0, "open")
    assert runs[run]["state"] == "open"
    assert runs[run]["project"] == "e2e"
    assert runs[run]["applied_per_s"] > 30
    assert data["totals"]["backlog"] >= 3
    assert data["totals"]["open"] == 2
    assert data["counters"]["events_journaled"] >= runs[run]["journaled"] + 3
    assert table.returncode == 0, table.stderr
    assert f"collector {service.endpoint}: 2 runs, 2 open" in table.stdout
    assert "stuck" in table.stdout
    assert "backlog" in table.stdout
    assert "apply_error" in table.stdout  # the problems line names the failing backend


def _lines(proc: subprocess.Popen[str]) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines


@pytest.mark.slow
def test_status_watch_prints_json_lines_survives_a_stopped_collector_and_ends_on_ctrl_c(
    tmp_path: Path,
) -> None:
    with running_service(tmp_path) as service:
        watch = subprocess.Popen(
            [
                sys.executable, "-m", "collector", "status", "--endpoint", service.endpoint,
                "--watch", "--json", "--interval", "0.2", "--timeout", "1",
            ],
            env=env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        try:
            lines = _lines(watch)
            first, second = (json.loads(lines.get(timeout=DEADLINE)) for _ in range(2))
            assert first["rates"]["journaled_per_s"] is None  # one sample: no rate yet
            assert second["rates"]["journaled_per_s"] == 0.0
            assert second["totals"] == {"runs": 0, "open": 0, "backlog": 0}
            service.proc.send_signal(signal.SIGTERM)
            assert service.proc.wait(timeout=DEADLINE) == 0

            def missed() -> bool:
                return "error" in json.loads(lines.get(timeout=DEADLINE))

            wait_for(missed, DEADLINE, "a line saying the collector does not answer")
            assert watch.poll() is None, "a collector that stops answering must not end the watch"
            watch.send_signal(signal.SIGINT)
            assert watch.wait(timeout=DEADLINE) == 0
        finally:
            if watch.poll() is None:
                watch.kill()
            watch.communicate()


@pytest.mark.slow
def test_status_without_a_collector_fails_clearly_within_its_timeout() -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = _status("--endpoint", endpoint, "--timeout", "1")
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert result.stderr.strip() == f"clearml-relay: no collector answered at {endpoint} within 1 s"
    assert result.stdout == ""
    assert elapsed < 1 + 15, f"took {elapsed:.1f} s"  # the timeout plus an interpreter start


EXPECTED = "expected a ZeroMQ endpoint: tcp://host:port, ipc://path or inproc://name"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "environ", "line"),
    [
        (["--endpoint", "127.0.0.1:5555"], {}, f"--endpoint='127.0.0.1:5555': {EXPECTED}"),
        (["--endpoint", "http://127.0.0.1:5555"], {}, f"--endpoint='http://127.0.0.1:5555': {EXPECTED}"),
        (["--endpoint", "tcp://no port here"], {}, f"--endpoint='tcp://no port here': {EXPECTED}"),
        ([], {"CLEARML_RELAY_ENDPOINT": "localhost:5555"},
         f"CLEARML_RELAY_ENDPOINT='localhost:5555': {EXPECTED}"),
        (["--endpoint", "tcp://127.0.0.1:9", "--timeout", "0"], {},
         "--timeout=0: expected a number of seconds > 0"),
    ],
)  # fmt: skip
def test_status_with_a_malformed_endpoint_is_a_configuration_error(
    args: list[str], environ: dict[str, str], line: str
) -> None:
    """The producers' endpoint check and its one message, naming the flag or the variable."""
    result = subprocess.run(
        [sys.executable, "-m", "collector", "status", *args],
        env=env(**environ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"clearml-relay: configuration error: {line}\n"
