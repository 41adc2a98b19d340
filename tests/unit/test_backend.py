"""The JSONL backend: one line per event, its last complete line is the applied position."""

from __future__ import annotations

from pathlib import Path

from collector_helpers import open_event, scalar

from collector.backends.base import Backend, JsonlBackend
from collector.pipeline.files import FileStore
from producer.wire import protocol


def test_applies_lines_and_reopens_at_the_last_one(tmp_path: Path) -> None:
    files = FileStore(tmp_path / "files")
    backend: Backend = JsonlBackend(tmp_path / "records")
    assert backend.applied("r") == 0
    for event in (open_event("r"), scalar("r", 2), scalar("r", 3)):
        backend.apply("r", event, files)
    assert backend.applied("r") == 3
    backend.close()
    reopened = JsonlBackend(tmp_path / "records")
    assert reopened.applied("r") == 3
    assert [line["seq"] for line in reopened.records("r")] == [1, 2, 3]
    assert reopened.records("r")[1]["event"]["value"] == 1.0
    reopened.close()


def test_torn_last_line_is_cut_off_on_open(tmp_path: Path) -> None:
    files = FileStore(tmp_path / "files")
    backend = JsonlBackend(tmp_path / "records")
    backend.apply("r", open_event("r"), files)
    backend.apply("r", scalar("r", 2), files)
    backend.close()
    path = tmp_path / "records" / "r.jsonl"
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"seq":3,"event":{"t":"sca')  # kill -9 mid-write
    reopened = JsonlBackend(tmp_path / "records")
    assert reopened.applied("r") == 2
    assert path.read_bytes() == whole
    reopened.apply("r", scalar("r", 3), files)
    assert [line["seq"] for line in reopened.records("r")] == [1, 2, 3]
    reopened.close()


def test_a_gap_advances_the_position_through_its_last_seq(tmp_path: Path) -> None:
    files = FileStore(tmp_path / "files")
    backend = JsonlBackend(tmp_path / "records")
    backend.apply("r", open_event("r"), files)
    backend.apply("r", protocol.Gap(run="r", seq=2, last=9, reason="lost"), files)
    assert backend.applied("r") == 9
    backend.close()
    reopened = JsonlBackend(tmp_path / "records")
    assert reopened.applied("r") == 9
    reopened.close()


def test_a_closed_run_reopens_for_a_late_event(tmp_path: Path) -> None:
    files = FileStore(tmp_path / "files")
    backend = JsonlBackend(tmp_path / "records")
    backend.apply("r", open_event("r"), files)
    backend.apply("r", protocol.RunClose(run="r", seq=2), files)
    assert backend.applied("r") == 2
    backend.apply("r", scalar("r", 3), files)
    assert [line["seq"] for line in backend.records("r")] == [1, 2, 3]
    backend.close()


def test_runs_have_separate_files_and_long_run_ids_work(tmp_path: Path) -> None:
    files = FileStore(tmp_path / "files")
    backend = JsonlBackend(tmp_path / "records")
    long_run = "x" * 64
    backend.apply(long_run, open_event(long_run), files)
    backend.apply("short", open_event("short"), files)
    backend.apply("short", scalar("short", 2), files)
    assert (backend.applied(long_run), backend.applied("short")) == (1, 2)
    assert (tmp_path / "records" / f"{long_run}.jsonl").exists()
    assert backend.records("missing") == []
    backend.close()


def test_read_applied_matches_the_backend_without_repairing_anything(tmp_path: Path) -> None:
    from collector.backends.base import read_applied

    backend = JsonlBackend(tmp_path)
    files = FileStore(tmp_path / "files", fsync=False)
    for event in (
        protocol.RunOpen(run="r", seq=1, project="p", name="n"),
        protocol.Gap(run="r", seq=2, last=5, reason="lost"),  # one line standing for seqs 2..5
    ):
        backend.apply("r", event, files)
    backend.close()
    path = JsonlBackend.path_in(tmp_path, "r")
    with path.open("ab") as f:
        f.write(b'{"seq": 6, "ev')  # a torn line, as a kill -9 leaves it
    size = path.stat().st_size
    assert read_applied(path) == 5  # the Gap's last seq, as the backend counts it
    assert path.stat().st_size == size, "a read-only look must not cut the torn line"
    reopened = JsonlBackend(tmp_path)
    assert reopened.applied("r") == 5
    reopened.close()
    assert path.stat().st_size < size, "the backend itself cuts it"
    assert read_applied(tmp_path / "missing.jsonl") == 0
