"""Retention: a finished run's journal is retired, and offline sessions are kept per the policy.

Journal retirement runs in a real collector process: the segments of a completed run go once it
is applied, its position stays in meta.json, so resends are still duplicates (before and after a
restart) and a late event continues the seq. Offline-session retention runs through the real
ClearML backend in offline mode; the policy itself (age and count) is checked on real files.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from collector_helpers import Producer, close_event, records, run_events, scalar
from e2e import produce, runs_table, status, wait_for
from service_helpers import running_service

from collector.backends.clearml import state as clearml_state
from collector.backends.clearml.state import RunState
from collector.storage import retention
from producer.wire import protocol

DEADLINE = 30.0


def _retired(journal: Path, run: str, position: int) -> bool:
    meta = journal / run / "meta.json"
    return (
        not list((journal / run).glob("*.seg"))
        and meta.is_file()
        and json.loads(meta.read_text()).get("position") == position
    )


@pytest.mark.slow
def test_a_finished_runs_journal_is_retired_and_resends_stay_duplicates(tmp_path: Path) -> None:
    data = tmp_path / "data"
    journal = data / "journal"
    events: list[protocol.Event] = [*run_events("done", 9), close_event("done", 10)]
    with running_service(tmp_path) as service, Producer(service.endpoint) as producer:
        producer.submit(list(events))
        producer.until_acked("done", 10)
        wait_for(lambda: _retired(journal, "done", 10), DEADLINE, "the run's journal to be retired")
        producer.submit(list(events))  # every one a resend
        assert producer.expect(protocol.Ack) == protocol.Ack(runs={"done": 10})
        # A late event after the close continues the seq in a segment of its own, then goes too.
        producer.submit([scalar("done", 11)])
        assert producer.expect(protocol.Ack) == protocol.Ack(runs={"done": 11})
        wait_for(lambda: len(records(data, "done")) == 11, DEADLINE, "the late event to be applied")
        wait_for(lambda: _retired(journal, "done", 11), DEADLINE, "the late segment to be retired")
        reply = status(service.endpoint)
        assert reply is not None
        assert reply.counters["runs_retired"] == 2
        assert reply.counters["duplicates"] == 10
    with running_service(tmp_path) as service, Producer(service.endpoint) as producer:
        producer.submit([*events, scalar("done", 11)])
        assert producer.expect(protocol.Ack) == protocol.Ack(runs={"done": 11})
        reply = producer.status()
        assert [(i.run, i.journaled, i.applied, i.state) for i in reply.runs] == [
            ("done", 11, 11, "completed")
        ]
        producer.submit([scalar("done", 12)])
        assert producer.expect(protocol.Ack) == protocol.Ack(runs={"done": 12})
        wait_for(lambda: len(records(data, "done")) == 12, DEADLINE, "the event after a restart")
    assert [r["seq"] for r in records(data, "done")] == list(range(1, 13))
    assert runs_table(data)["done"]["received"] == 12


def _state(clearml_dir: Path, run: str, status_: str, age_days: float, *, legacy: bool = False) -> Path:
    """A run's backend state with a real session folder, closed ``age_days`` ago (if not open).

    ``legacy``: as an earlier version left a closed run: no ``closed`` in the state (its
    ``task.json`` was written last), and ClearML's zip kept beside the folder.
    """
    folder = clearml_dir.parent / "offline" / f"offline-{run}"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "image.png").write_bytes(b"\x89PNG" + bytes(100))
    (folder / "task.json").write_text("{}")
    closed = 0.0 if status_ == "open" else time.time() - age_days * 86400
    if legacy:
        Path(f"{folder}.zip").write_bytes(b"PK zip of " + run.encode())
        os.utime(folder / "task.json", (closed, closed))
    (clearml_dir / f"{run}.models").mkdir(parents=True)
    clearml_state.save(
        clearml_dir,
        RunState(run=run, task_id=run, state=status_, session=str(folder), closed=0.0 if legacy else closed),
        fsync=False,
    )
    return folder


def test_the_session_policy_keeps_the_newest_and_young_finished_sessions_only(tmp_path: Path) -> None:
    clearml_dir = tmp_path / "clearml"
    clearml_dir.mkdir()
    offline = tmp_path / "offline"
    ages = {"new": 0.5, "mid": 3.0, "old": 10.0, "older": 20.0}
    for run, age in ages.items():
        _state(clearml_dir, run, "completed" if run != "mid" else "failed", age, legacy=run == "old")
    kept = {
        "open": _state(clearml_dir, "open", "open", 0),
        "aborted": _state(clearml_dir, "aborted", "aborted", 30.0),
    }
    sessions = retention.finished_sessions(clearml_dir)
    assert [s.run for s in sessions] == ["new", "mid", "old", "older"]  # newest first
    now = time.time()
    expired = retention.expired
    assert expired(sessions, retention.Policy(), now) == []
    assert [s.run for s in expired(sessions, retention.Policy(max_count=2), now)] == ["old", "older"]
    assert [s.run for s in expired(sessions, retention.Policy(max_age_days=5), now)] == ["old", "older"]
    assert [s.run for s in expired(sessions, retention.Policy(max_age_days=5, max_count=1), now)] == [
        "mid",
        "old",
        "older",
    ]
    assert [s.run for s in expired(sessions, retention.Policy(max_count=0), now)] == list(ages)

    deleted = retention.sweep(clearml_dir, retention.Policy(max_age_days=2.5, max_count=3), now)
    assert [s.run for s in deleted] == ["mid", "old", "older"]
    for run in ("mid", "old", "older"):
        assert not (offline / f"offline-{run}").exists()
        assert not (offline / f"offline-{run}.zip").exists()  # an earlier version's zip goes too
        assert not (clearml_dir / f"{run}.models").exists()
        assert clearml_state.load(clearml_dir, run) is not None  # `runs` still lists it
    assert (offline / "offline-new" / "data" / "image.png").is_file()
    for run, folder in kept.items():
        assert folder.is_dir(), f"the {run} run's session must stay"
    assert retention.sweep(clearml_dir, retention.Policy(max_age_days=2.5, max_count=3), now) == []


@pytest.mark.slow
def test_the_collector_deletes_finished_offline_sessions_beyond_its_policy(tmp_path: Path) -> None:
    data, spool, work = tmp_path / "data", tmp_path / "spool", tmp_path / "work"
    with running_service(tmp_path, "--backend", "clearml", "--offline", "--keep-sessions", "1") as service:
        runs = []
        for name in ("first", "second"):
            proc = produce(
                service.endpoint, spool, work, name, 20, "--file-every", "5", "--flush-timeout", "30"
            )
            output = proc.communicate(timeout=120)[0].decode()
            assert proc.returncode == 0, output
            runs.append(json.loads((work / f"{name}.json").read_text())["run"])

        def closed(run: str) -> Path | None:
            state = clearml_state.load(data / "clearml", run)
            return Path(state.session) if state is not None and state.closed else None

        def both_closed() -> list[Path] | None:
            found = [closed(run) for run in runs]
            return [s for s in found if s is not None] if all(found) else None

        first, second = wait_for(both_closed, 60, "both runs to be closed")
        wait_for(lambda: not first.exists(), DEADLINE, "the older session to be deleted")
        reply = status(service.endpoint)
        assert reply is not None
        assert reply.counters["sessions_deleted"] == 1
    assert second.is_dir()
    assert sorted(second.parent.iterdir()) == [second], "one folder, no zip"
    table = runs_table(data)
    assert {table[run]["state"] for run in runs} == {"completed"}


@pytest.mark.slow
def test_a_retired_runs_stored_files_are_released_once_clearml_holds_its_copies(tmp_path: Path) -> None:
    """The ClearML backend copies images and models into the session: the store's copies go."""
    data, spool, work = tmp_path / "data", tmp_path / "spool", tmp_path / "work"
    args = ("--backend", "clearml", "--offline")
    with running_service(tmp_path, *args) as service:
        proc = produce(
            service.endpoint,
            spool,
            work,
            "files",
            20,
            "--file-every",
            "5",
            "--model-bytes",
            "100000",
            "--flush-timeout",
            "30",
        )
        output = proc.communicate(timeout=120)[0].decode()
        assert proc.returncode == 0, output
        run = json.loads((work / "files.json").read_text())["run"]
        stored = data / "files" / run
        wait_for(lambda: not stored.exists(), DEADLINE, "the run's stored files to be released")
        reply = status(service.endpoint)
        assert reply is not None
        assert reply.counters["runs_retired"] == 1
        assert reply.counters["file_bytes_released"] >= 100000
    state = clearml_state.load(data / "clearml", run)
    assert state is not None
    session = Path(state.session)
    metrics = [e for line in (session / "metrics.jsonl").read_text().splitlines() for e in json.loads(line)]
    images = [e for e in metrics if e["type"] == "training_debug_image"]
    assert len(images) == 4
    assert all((session / "data").rglob(Path(e["url"]).name) for e in images), "the session's copies stay"
    assert [m.stat().st_size for m in (session / "models").iterdir()] == [100000]
    copies = [f for f in (*data.rglob("*"), *session.parent.rglob("*")) if f.stat().st_size == 100000]
    assert len(copies) == 1, f"the model is kept once, in the session (no zip, no staged copy): {copies}"
    # Files of a finished run left behind by a crash before their release go at the next start.
    leftover = data / "files" / run / ("0" * 64)
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"x" * 10)
    with running_service(tmp_path, *args):
        assert not leftover.parent.exists()
