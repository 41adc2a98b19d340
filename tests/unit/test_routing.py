"""Several collectors: the endpoint list, and the rendezvous hashing that gives each run its home."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from producer.config import ConfigError, ProducerConfig
from producer.transport.outbox import Outbox, home
from producer.transport.sync import sync
from producer.wire.endpoint import EndpointError, check_endpoints, home_of

A, B, C, D = (f"tcp://collector-{i}.collector:5555" for i in range(4))
RUNS = [uuid.uuid4().hex for _ in range(2000)]


def test_an_endpoint_list_is_checked_member_by_member() -> None:
    assert check_endpoints(f" {A} ,{B}") == (A, B)
    assert check_endpoints(A) == (A,)
    with pytest.raises(EndpointError, match="expected a ZeroMQ endpoint"):
        check_endpoints(f"{A},collector-1:5555")
    with pytest.raises(EndpointError, match="each collector once"):
        check_endpoints(f"{A},{A}")
    with pytest.raises(
        ConfigError, match=r"^CLEARML_RELAY_ENDPOINT='tcp://x:1,': expected a ZeroMQ endpoint"
    ):
        ProducerConfig.from_env(environ={"CLEARML_RELAY_ENDPOINT": "tcp://x:1,"})


def test_every_producer_picks_the_same_home_and_the_runs_spread() -> None:
    config = ProducerConfig.from_env(endpoint=f"{A},{B},{C}")
    assert config.endpoints == (A, B, C)
    homes = [config.for_run(run).endpoint for run in RUNS]
    assert homes == [home_of(run, (C, A, B)) for run in RUNS], "the order of the list does not matter"
    counts = {endpoint: homes.count(endpoint) for endpoint in (A, B, C)}
    assert all(500 < count < 850 for count in counts.values()), counts
    assert all(config.for_run(run).pinned for run in RUNS[:10])
    single = ProducerConfig.from_env(endpoint=A)
    assert single.for_run(RUNS[0]) is single
    assert not single.pinned, "one collector: outboxes record no home, any client delivers them"


def test_a_change_of_the_list_moves_only_the_runs_it_must() -> None:
    before = {run: home_of(run, (A, B, C)) for run in RUNS}
    added = {run: home_of(run, (A, B, C, D)) for run in RUNS}
    assert all(added[run] in (before[run], D) for run in RUNS), "adding D moves runs to D only"
    assert 350 < sum(added[run] == D for run in RUNS) < 650
    removed = {run: home_of(run, (A, B)) for run in RUNS}
    assert all(removed[run] == before[run] for run in RUNS if before[run] != C), (
        "removing C moves C's runs only"
    )


def test_an_outbox_records_its_home_when_it_is_made(tmp_path: Path) -> None:
    spool = tmp_path
    outbox = Outbox.open(spool, "r1", home=B)
    assert outbox is not None
    assert home(spool, "r1") == B
    outbox.close()
    again = Outbox.open(spool, "r1", home=C)  # an existing outbox keeps the home it was made with
    assert again is not None
    assert home(spool, "r1") == B
    again.close()
    legacy = Outbox.open(spool, "r2")
    assert legacy is not None
    assert home(spool, "r2") is None
    legacy.close()


def test_sync_takes_one_collector() -> None:
    with pytest.raises(ConfigError, match="sync delivers to one collector"):
        sync("/nonexistent-spool", f"{A},{B}", 1.0)
