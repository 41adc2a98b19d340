"""A collector on a shared network: CurveZMQ, the allow-list, run ownership, limits, hostile peers.

Real sockets, real CURVE handshakes through pyzmq's ZAP authenticator, real key files written by
``clearml-relay keygen``.
"""

from __future__ import annotations

import logging
import math
import os
import random
import stat
import subprocess
import sys
import threading
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
import zmq
from collector_helpers import Producer, close_event, open_event, records, running, scalar
from e2e import env, free_port, sync
from waiting import wait_for

from collector.config import CollectorConfig, ConfigError
from collector.pipeline.security import Owners, is_loopback, keygen
from collector.service.server import Collector
from producer.config import ConfigError as ProducerConfigError
from producer.config import ProducerConfig
from producer.run import Run
from producer.wire import protocol
from producer.wire.curve import CurveKeys, curve_from_env

DEADLINE = 30.0


def _keys(directory: Path, *names: str) -> dict[str, tuple[Path, Path]]:
    return {name: keygen(directory, name) for name in names}


def _client(server_public: Path, secret: Path) -> CurveKeys:
    keys = curve_from_env(
        {"CLEARML_RELAY_SERVER_KEY": str(server_public), "CLEARML_RELAY_KEY_FILE": str(secret)}
    )
    assert keys is not None
    return keys


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, tuple[Path, Path]]:
    """A collector key, two listed producers (alice, bob) and an unlisted one (mallory)."""
    keys = _keys(tmp_path / "keys", "collector", "alice", "bob", "mallory")
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    for name in ("alice", "bob"):
        (allowed / f"{name}.key").write_bytes(keys[name][0].read_bytes())
    return keys


def _curve_collector(
    tmp_path: Path, pki: dict[str, tuple[Path, Path]], **overrides: object
) -> AbstractContextManager[Collector]:
    return running(
        tmp_path / "data",
        curve_secret_key=pki["collector"][1],
        allow_keys=tmp_path / "allowed",
        **overrides,
    )


# ----------------------------------------------------------------------------------- keys


@pytest.mark.slow
def test_keygen_writes_a_private_secret_and_never_overwrites(tmp_path: Path) -> None:
    def keygen_cli() -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "collector", "keygen", "team-a", "--dir", str(tmp_path)]
        return subprocess.run(command, env=env(), capture_output=True, text=True, timeout=60, check=False)

    result = keygen_cli()
    assert result.returncode == 0, result.stderr
    public, secret = tmp_path / "team-a.key", tmp_path / "team-a.key_secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert "secret-key" not in public.read_text()
    assert str(secret) in result.stdout
    again = keygen_cli()
    assert again.returncode == 1
    assert "not overwriting" in again.stderr
    with pytest.raises(ValueError, match="key name"):
        keygen(tmp_path, "../escape")


def test_producer_key_settings_are_checked_naming_the_variable(tmp_path: Path) -> None:
    ((public, secret),) = _keys(tmp_path, "p").values()
    good = {"CLEARML_RELAY_SERVER_KEY": str(public), "CLEARML_RELAY_KEY_FILE": str(secret)}
    keys = ProducerConfig.from_env(environ=good).curve
    assert keys is not None
    assert "secret" not in repr(keys).lower().replace("secret=", "")  # repr never shows the secret
    z85 = {"CLEARML_RELAY_SERVER_KEY": keys.server.decode(), "CLEARML_RELAY_PUBLIC_KEY": keys.public.decode(),
           "CLEARML_RELAY_SECRET_KEY": keys.secret.decode()}  # fmt: skip
    assert ProducerConfig.from_env(environ=z85).curve == keys
    assert ProducerConfig.from_env(environ={}).curve is None
    for bad, variable in (
        ({"CLEARML_RELAY_SERVER_KEY": str(public)}, "CLEARML_RELAY_KEY_FILE"),
        ({**good, "CLEARML_RELAY_KEY_FILE": str(public)}, "no secret key"),
        ({**good, "CLEARML_RELAY_SERVER_KEY": "short"}, "no key file"),
        ({"CLEARML_RELAY_KEY_FILE": str(secret)}, "CLEARML_RELAY_SERVER_KEY is needed"),
        ({**z85, "CLEARML_RELAY_SECRET_KEY": "~" * 40}, "CLEARML_RELAY_SECRET_KEY"),
    ):
        with pytest.raises(ProducerConfigError, match=variable):
            ProducerConfig.from_env(environ=bad)


def test_collector_curve_settings_go_together(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="go together"):
        CollectorConfig.from_env({}, curve_secret_key=tmp_path / "k.key_secret")


# ------------------------------------------------------------------------------ traffic


@pytest.mark.slow
def test_listed_keys_deliver_and_an_unlisted_key_never_reaches_the_backend(
    tmp_path: Path, pki: dict[str, tuple[Path, Path]], caplog: pytest.LogCaptureFixture
) -> None:
    server = pki["collector"][0]
    with _curve_collector(tmp_path, pki) as collector, caplog.at_level(logging.WARNING, "collector"):
        endpoint = collector.bound_endpoint
        with Producer(endpoint, _client(server, pki["mallory"][1])) as mallory:
            for _ in range(3):
                mallory.submit([open_event("stolen"), scalar("stolen", 2)])
            with Producer(endpoint, _client(server, pki["alice"][1])) as alice:
                alice.submit([open_event("a1"), scalar("a1", 2), close_event("a1", 3)])
                alice.until_acked("a1", 3)
            with Producer(endpoint) as plain:
                plain.submit([open_event("plain")])
                assert not plain.socket.poll(1000), "a CURVE server answered a plain client"
            wait_for(lambda: collector.counters.get("zap_denied") >= 1, DEADLINE, "the ZAP denial")
    assert [r["event"]["t"] for r in records(tmp_path / "data", "a1")] == ["open", "scalar", "close"]
    assert records(tmp_path / "data", "stolen") == []
    assert records(tmp_path / "data", "plain") == []
    assert collector.counters.get("received.open") == 1
    denials = [r for r in caplog.records if "not in" in r.getMessage()]
    assert len(denials) == 1, "logged once per key"


def test_a_run_belongs_to_the_key_that_opened_it_even_after_a_restart(
    tmp_path: Path, pki: dict[str, tuple[Path, Path]]
) -> None:
    server = pki["collector"][0]
    alice_keys, bob_keys = _client(server, pki["alice"][1]), _client(server, pki["bob"][1])
    with _curve_collector(tmp_path, pki) as collector:
        endpoint = collector.bound_endpoint
        with Producer(endpoint, alice_keys) as alice:
            alice.submit([open_event("a1"), scalar("a1", 2)])
            alice.until_acked("a1", 2)
    with _curve_collector(tmp_path, pki) as collector:  # the owner survives a restart
        endpoint = collector.bound_endpoint
        with Producer(endpoint, bob_keys) as bob:
            bob.submit([scalar("a1", 3, value=666.0)])
            refusal = bob.expect(protocol.Refuse)
            assert (refusal.code, refusal.run) == ("denied", "a1")
            bob.send(protocol.FileOffer(run="a1", sha256="0" * 64, size=10))
            assert bob.expect(protocol.Refuse).code == "denied"
        with Producer(endpoint, alice_keys) as alice:
            alice.submit([scalar("a1", 3, value=1.0), close_event("a1", 4)])
            alice.until_acked("a1", 4)
        assert collector.counters.get("refused_denied") == 2
    values = [
        r["event"].get("value") for r in records(tmp_path / "data", "a1") if r["event"]["t"] == "scalar"
    ]
    assert 666.0 not in values
    assert Owners(tmp_path / "data").owner("a1") == alice_keys.public.decode()


def test_open_runs_per_key_are_limited_and_a_close_frees_one(
    tmp_path: Path, pki: dict[str, tuple[Path, Path]]
) -> None:
    keys = _client(pki["collector"][0], pki["alice"][1])
    with _curve_collector(tmp_path, pki, max_runs_per_key=1) as collector:
        with Producer(collector.bound_endpoint, keys) as alice:
            alice.submit([open_event("r1")])
            alice.until_acked("r1", 1)
            alice.submit([open_event("r2")])
            refusal = alice.expect(protocol.Refuse)
            assert (refusal.code, refusal.run) == ("limit", "r2")
            assert "CLEARML_RELAY_MAX_RUNS_PER_KEY" in refusal.reason
            alice.submit([close_event("r1", 2)])
            alice.until_acked("r1", 2)
            alice.submit([open_event("r2")])
            alice.until_acked("r2", 1)
        assert collector.counters.get("refused_limit") == 1


@pytest.mark.slow
def test_an_aborted_run_frees_its_keys_slot_and_holds_one_again_if_it_goes_on(
    tmp_path: Path, pki: dict[str, tuple[Path, Path]]
) -> None:
    keys = _client(pki["collector"][0], pki["alice"][1])
    public = keys.public.decode()
    with _curve_collector(tmp_path, pki, max_runs_per_key=1, heartbeat_timeout=3.0) as collector:
        with Producer(collector.bound_endpoint, keys) as alice:
            alice.submit([open_event("gone")])  # then its producer vanishes: no heartbeat
            alice.until_acked("gone", 1)
            wait_for(
                lambda: collector.counters.get("runs_aborted") == 1, DEADLINE, "the silent run to be aborted"
            )
            wait_for(  # saved as it is aborted
                lambda: Owners(tmp_path / "data").open_runs(public) == 0, DEADLINE, "the slot to be freed"
            )
            alice.submit([open_event("next")])
            alice.until_acked("next", 1)
            alice.submit([scalar("gone", 2)])  # the aborted run goes on: it counts again
            alice.until_acked("gone", 2)
            assert Owners(tmp_path / "data").open_runs(public) == 2
            alice.submit([close_event("next", 2), close_event("gone", 3)])
            alice.until_acked("gone", 3)
            assert Owners(tmp_path / "data").open_runs(public) == 0
        assert collector.counters.get("refused_limit") == 0


@pytest.mark.slow
def test_a_real_producer_with_keys_from_the_environment_delivers_and_a_refused_run_is_logged_once(
    tmp_path: Path,
    pki: dict[str, tuple[Path, Path]],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("CLEARML_RELAY_SERVER_KEY", str(pki["collector"][0]))
    monkeypatch.setenv("CLEARML_RELAY_KEY_FILE", str(pki["alice"][1]))
    monkeypatch.setenv("CLEARML_RELAY_FLUSH_TIMEOUT", "1")
    with _curve_collector(tmp_path, pki, max_runs_per_key=1) as collector, caplog.at_level(logging.ERROR):
        endpoint = collector.bound_endpoint
        with Run("p", "first", endpoint=endpoint, spool_dir=tmp_path / "spool") as first:
            first.scalar("loss", "train", 0.5, 0)
            second = Run("p", "second", endpoint=endpoint, spool_dir=tmp_path / "spool")
            for i in range(20):
                second.scalar("loss", "train", 0.5, i)
            wait_for(
                lambda: any("refused run" in r.getMessage() for r in caplog.records), DEADLINE, "the log"
            )
            second.close()
    assert [r["event"]["t"] for r in records(tmp_path / "data", first.id)][-1] == "close"
    assert records(tmp_path / "data", second.id) == []
    refused = [r for r in caplog.records if "refused run" in r.getMessage()]
    assert len(refused) == 1
    assert second.id in refused[0].getMessage()
    assert "CLEARML_RELAY_MAX_RUNS_PER_KEY" in refused[0].getMessage()
    # The refused run's events stay in its outbox, and the process's exit would say so.
    assert second.client is not None
    left = second.client.undelivered_report()
    second.client.stop()
    assert len(left) == 1, left
    assert left[0].startswith("clearml-relay: 1 run(s) not fully delivered to "), left
    assert "22 events stay in" in left[0], left  # its open, 20 scalars and its close


def test_a_file_over_the_size_limit_becomes_a_gap_and_the_run_goes_on(tmp_path: Path) -> None:
    image = tmp_path / "big.png"
    image.write_bytes(os.urandom(64 * 1024))
    with (
        running(tmp_path / "data", max_file_bytes=16 * 1024) as collector,
        Run("p", "n", endpoint=collector.bound_endpoint, spool_dir=tmp_path / "spool") as run,
    ):
        run.image("debug", "big", 0, image)
        run.scalar("loss", "train", 1.0, 0)
    kinds = [r["event"]["t"] for r in records(tmp_path / "data", run.id)]
    assert kinds == ["open", "gap", "scalar", "close"]
    gap = records(tmp_path / "data", run.id)[1]["event"]
    assert "CLEARML_RELAY_MAX_FILE_BYTES" in gap["reason"]
    assert collector.counters.get("refused_too_large") >= 1


def test_a_plain_collector_warns_loudly_beyond_loopback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, "collector"):
        with running(tmp_path / "a", bind="tcp://127.0.0.1:0"):
            pass
        assert not [r for r in caplog.records if "SECURITY" in r.getMessage()]
        with running(tmp_path / "b", bind="tcp://0.0.0.0:0"):
            pass
    (warning,) = [r for r in caplog.records if "SECURITY" in r.getMessage()]
    assert "WITHOUT CurveZMQ" in warning.getMessage()
    assert is_loopback("tcp://[::1]:5555")
    assert is_loopback("ipc:///tmp/x")
    assert not is_loopback("tcp://*:5555")
    assert not is_loopback("tcp://10.0.0.5:5555")


# ------------------------------------------------------------------------ hostile peers


@pytest.mark.slow
def test_a_client_spraying_garbage_cannot_stop_a_good_producer(tmp_path: Path) -> None:
    """Random frames, truncated and oversized messages, hostile events, at full speed from
    another socket: every event of a well-behaved run lands, and the collector counts refusals."""
    stop = threading.Event()
    sent = [0]

    def spray(endpoint: str) -> None:
        rng = random.Random(7)
        with Producer(endpoint) as hostile:
            hostile.socket.sndtimeo = 100
            while not stop.is_set():
                choice = rng.randrange(6)
                if choice == 0:
                    frames = [rng.randbytes(rng.randrange(0, 64)) for _ in range(rng.randrange(1, 4))]
                elif choice == 1:
                    frames = [protocol.HEADER, rng.randbytes(rng.randrange(1, 512))]
                elif choice == 2:
                    frames = [protocol.HEADER, b"\x00" * (5 * 1024 * 1024)]  # over the body limit
                elif choice == 3:
                    frames = [protocol.HEADER]  # truncated
                elif choice == 4:
                    bad = protocol.encode(open_event("x" * 80))
                    frames = [protocol.HEADER, protocol.encode(protocol.Submit(events=[]))[:-1] + bad[:5]]
                else:
                    frames = [b"CRLY\x00\x09", protocol.encode(protocol.StatusRequest())]  # wrong version
                try:
                    hostile.send_frames(frames)
                    sent[0] += 1
                except zmq.Again:
                    pass
                while hostile.socket.poll(0):
                    hostile.socket.recv_multipart()

    with running(tmp_path / "data") as collector:
        thread = threading.Thread(target=spray, args=(collector.bound_endpoint,), daemon=True)
        thread.start()
        try:
            with Run("p", "good", endpoint=collector.bound_endpoint, spool_dir=tmp_path / "spool") as run:
                for i in range(2000):
                    run.scalar("loss", "train", float(i), i)
            wait_for(lambda: len(records(tmp_path / "data", run.id)) == 2002, DEADLINE, "every event")
        finally:
            stop.set()
            thread.join(10)
        refused = sum(v for k, v in collector.counters.snapshot().items() if k.startswith("refused_"))
    values = [r["event"]["value"] for r in records(tmp_path / "data", run.id) if r["event"]["t"] == "scalar"]
    assert values == [float(i) for i in range(2000)]
    assert sent[0] > 100
    assert refused > 50


def test_non_finite_values_are_carried_unchanged() -> None:
    """The stated policy: NaN and infinities are valid values (a diverging loss must show); the
    wire and the journal carry them as they are; ClearML then stores them its way (NaN as its
    ``default_nan_value``), see the protocol's module docs."""
    for value in (math.nan, math.inf, -math.inf):
        event = protocol.decode_event(protocol.encode(protocol.Scalar(run="r", seq=2, title="t", series="s",
                                                                     value=value, iteration=0)))  # fmt: skip
        assert isinstance(event, protocol.Scalar)
        assert repr(event.value) == repr(value)


@pytest.mark.slow
def test_an_outbox_at_its_byte_limit_drops_new_events_and_the_run_still_closes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """With the collector away, a run's outbox stops growing at CLEARML_RELAY_MAX_OUTBOX_BYTES:
    later events are dropped (counted, logged once), never a hole; the close still gets in."""
    monkeypatch.setenv("CLEARML_RELAY_MAX_OUTBOX_BYTES", str(64 * 1024))
    monkeypatch.setenv("CLEARML_RELAY_FLUSH_TIMEOUT", "0.2")
    image = tmp_path / "mosaic.jpg"
    image.write_bytes(os.urandom(100 * 1024))
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    spool = tmp_path / "spool"
    with caplog.at_level(logging.WARNING, "producer"):
        run = Run("p", "n", endpoint=endpoint, spool_dir=spool)
        run.scalar("loss", "train", 1.0, 0)
        run.image("Mosaic", "train", 0, image)  # the outbox is over its limit after this copy
        for i in range(1, 51):
            run.scalar("loss", "train", float(i), i)
        run.close("completed")
    assert run.client is not None
    assert run.client.stats()["dropped_outbox_full"] == 50
    full = [r for r in caplog.records if "MAX_OUTBOX_BYTES" in r.getMessage()]
    assert len(full) == 1
    with running(tmp_path / "data", bind=endpoint):
        sync(endpoint, spool)
    landed = [r["event"] for r in records(tmp_path / "data", run.id)]
    assert [e["t"] for e in landed] == ["open", "scalar", "image", "close"]
    assert [e["seq"] for e in landed] == [1, 2, 3, 4]
    # The exit would tell what was lost on this side (its own producer's exit report).
    assert run.client.undelivered_report() == [
        f"clearml-relay: run {run.id}: 50 of its events could not be recorded (the errors above say why)"
    ]
    run.client.stop()
