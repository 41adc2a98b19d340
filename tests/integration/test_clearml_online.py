"""Online end to end: a collector process reports into a ClearML server (the test double).

Producer process -> collector process (ClearML backend, online) -> the double's API and
fileserver; the assertions read what the "server" received.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from clearml_server import ClearMLServerDouble
from e2e import (
    check_online_exactly_once,
    completed,
    free_port,
    produce,
    start_collector,
    status,
    stop,
    wait_for,
    wait_ready,
)


@pytest.mark.slow
@pytest.mark.parametrize("refused", [0, 2], ids=["clean", "refused-batches"])
def test_a_run_lands_online_with_events_files_and_model(tmp_path: Path, refused: int) -> None:
    """Every event lands once; with ``refused``, the first event batches are answered 500.

    The SDK drops a refused batch without raising; the collector finds out at its checkpoint
    and re-applies the run from its last durable position, so nothing is missing.
    """
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    events, every = 60, 20
    with ClearMLServerDouble() as server:
        if refused:
            server.fail("events.add_batch", status=500, times=refused)
        collector = start_collector(
            endpoint,
            tmp_path / "data",
            tmp_path / "collector.log",
            "--backend",
            "clearml",
            environ=server.child_env(),
        )
        try:
            wait_ready(endpoint, collector)
            proc = produce(
                endpoint,
                tmp_path / "spool",
                tmp_path / "work",
                "online",
                events,
                "--file-every",
                str(every),
                "--model-bytes",
                str(1_500_000),
                "--flush-timeout",
                "60",
            )
            assert "delivered=True" in proc.communicate(timeout=120)[0].decode()
            manifest = json.loads((tmp_path / "work" / "online.json").read_text())

            wait_for(lambda: completed(endpoint, manifest["run"]), 60, "the run to be applied online")
            reply = status(endpoint)
            assert reply is not None
            counters = reply.counters
        finally:
            stop(collector)
        log = (tmp_path / "collector.log").read_text()
        assert "ClearML online mode" in log, "the collector must say which mode it chose"

        check_online_exactly_once(server, manifest, "online", events, every)
        # Checked last, so that without the rewind the failure above names what was lost.
        refusals = [c for c in server.calls("events.add_batch") if c.status == 500]
        assert len(refusals) == refused
        if refused:
            assert counters.get("rewinds", 0) >= 1, counters
            assert "re-applying from its durable position" in log
        else:
            assert "rewinds" not in counters
        assert not server.unhandled
        assert not server.escapes, "nothing may leave this machine"
