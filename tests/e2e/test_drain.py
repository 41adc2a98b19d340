"""SIGTERM with a backlog, end to end: a bounded drain, exit 0, and the rest applied once on restart.

The backlog is real: one run's backend fails every write (its JSONL records file is /dev/full, so
each write gets ENOSPC), so its events are journaled and acknowledged but not applied, as they
would be while a ClearML server is down. Another run applies normally beside it.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

from collector_helpers import Producer, close_event, records, run_events
from e2e import status, wait_for
from service_helpers import running_service, stuck_backend

DEADLINE = 30.0
DRAIN = 2.0


def test_sigterm_drains_within_its_timeout_exits_0_and_the_next_start_applies_the_rest_once(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    stuck_backend(data, "held")
    with running_service(tmp_path, "--drain-timeout", str(DRAIN)) as service:
        with Producer(service.endpoint) as producer:
            producer.submit([*run_events("held", 20), close_event("held", 21)])
            producer.until_acked("held", 21)
            producer.submit([*run_events("free", 5), close_event("free", 6)])
            producer.until_acked("free", 6)

        def backlog() -> bool:
            reply = status(service.endpoint)
            runs = {info.run: info for info in reply.runs} if reply else {}
            return (
                "free" in runs
                and runs["free"].applied == 6
                and runs["held"].journaled == 21
                and runs["held"].applied == 0
                and reply is not None
                and reply.counters.get("apply_error", 0) > 0
            )

        wait_for(backlog, DEADLINE, "the free run applied and the held one failing")
        service.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        assert service.proc.wait(timeout=DRAIN + 20) == 0
        took = time.monotonic() - signalled
    log = service.log.read_text()
    # It waited for the drain, then gave up on what cannot be applied and left it journaled.
    assert DRAIN <= took < DRAIN + 8, f"stopped {took:.1f} s after SIGTERM"
    assert "stopping with events journaled but not yet applied; they apply on restart" in log
    assert (data / "records" / "held.jsonl").is_symlink()  # never read it: /dev/full is endless
    assert [r["seq"] for r in records(data, "free")] == [1, 2, 3, 4, 5, 6]

    (data / "records" / "held.jsonl").unlink()  # the backend's disk has room again
    with running_service(tmp_path) as service:
        wait_for(
            lambda: len(records(data, "held")) == 21, DEADLINE, "the held run to be applied after restart"
        )
        reply = status(service.endpoint)
        assert reply is not None
        assert {(i.run, i.journaled, i.applied, i.state) for i in reply.runs} == {
            ("held", 21, 21, "completed"),
            ("free", 6, 6, "completed"),
        }
    assert [r["seq"] for r in records(data, "held")] == list(range(1, 22))
    assert [r["event"]["t"] for r in records(data, "held")][::20] == ["open", "close"]
    assert [r["seq"] for r in records(data, "free")] == [1, 2, 3, 4, 5, 6]  # not applied again


def test_a_second_sigterm_during_the_drain_forces_the_exit(tmp_path: Path) -> None:
    stuck_backend(tmp_path / "data", "held")
    with running_service(tmp_path, "--drain-timeout", "120") as service:
        with Producer(service.endpoint) as producer:
            producer.submit(run_events("held", 3))
            producer.until_acked("held", 3)
        service.proc.send_signal(signal.SIGTERM)
        wait_for(
            lambda: "stopping (send it again to force)" in service.log.read_text(),
            DEADLINE,
            "the first signal to be handled",
        )
        service.proc.send_signal(signal.SIGTERM)
        assert service.proc.wait(timeout=DEADLINE) == 130
    assert "received SIGTERM again: exiting now" in service.log.read_text()
