from __future__ import annotations

import hashlib
import itertools
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from e2e import private_tmpfs, script_in

from producer.transport.outbox import ACKED_NAME, Outbox, list_outboxes
from producer.wire import protocol
from producer.wire.recordlog import list_segments


def _scalar(run: str, seq: int) -> bytes:
    event = protocol.Scalar(run=run, seq=seq, title="loss", series="train", value=float(seq), iteration=seq)
    return protocol.encode(event)


def _open(spool: Path, run: str = "run-a", **kwargs: object) -> Outbox:
    outbox = Outbox.open(spool, run, **kwargs)  # type: ignore[arg-type]
    assert outbox is not None
    return outbox


def test_append_then_read_back(tmp_path: Path) -> None:
    outbox = _open(tmp_path)
    outbox.append([(seq, _scalar("run-a", seq)) for seq in range(1, 11)])
    records = outbox.reader(1).read()
    assert [r.seq for r in records] == list(range(1, 11))
    assert protocol.decode_event(records[3].body).seq == 4
    assert outbox.last_seq == 10
    assert not outbox.fully_acked()
    outbox.close()


def test_lock_excludes_a_second_owner_until_released(tmp_path: Path) -> None:
    first = _open(tmp_path)
    assert Outbox.open(tmp_path, "run-a") is None
    assert Outbox.open(tmp_path, "run-a", create=False) is None
    first.close()
    second = Outbox.open(tmp_path, "run-a", create=False)
    assert second is not None
    second.close()


def test_adopting_a_missing_outbox_returns_none(tmp_path: Path) -> None:
    assert Outbox.open(tmp_path, "nothing-here", create=False) is None
    assert not (tmp_path / "nothing-here").exists()


@pytest.mark.parametrize("run_id", ["..", ".", ".hidden", "a/b", "", "x" * 65])
@pytest.mark.slow
def test_run_ids_that_cannot_name_a_directory_are_rejected(tmp_path: Path, run_id: str) -> None:
    with pytest.raises(ValueError, match="cannot name an outbox directory"):
        Outbox.open(tmp_path, run_id)


def test_mark_acked_persists_cursor_and_drops_segments_and_blobs(tmp_path: Path) -> None:
    outbox = _open(tmp_path, segment_bytes=512)
    source = tmp_path / "img.png"
    source.write_bytes(b"png" * 100)
    for seq in range(1, 61):
        if seq % 10 == 0:
            outbox.spool_file(seq, source)
        outbox.append([(seq, _scalar("run-a", seq))])
    log_dir = outbox.directory / "log"
    assert len(list_segments(log_dir)) > 3
    outbox.mark_acked(35)
    assert struct.unpack("<Q", (outbox.directory / ACKED_NAME).read_bytes()) == (35,)
    remaining = list_segments(log_dir)
    # Every segment left holds a record above 35: the next segment starts after 35 + 1 at most.
    assert all(nxt - 1 > 35 for (_, _), (nxt, _) in itertools.pairwise(remaining))
    assert 1 < remaining[0][0] <= 36  # the older segments are gone
    assert sorted(int(p.name) for p in (outbox.directory / "blobs").iterdir()) == [40, 50, 60]
    # What was not acked can still be read.
    assert [r.seq for r in outbox.reader(36).read()] == list(range(36, 61))
    outbox.mark_acked(20)  # an older ack never moves the cursor back
    assert outbox.acked == 35
    outbox.close()
    reopened = _open(tmp_path)
    assert reopened.acked == 35
    assert reopened.last_seq == 60
    reopened.mark_acked(60)
    assert reopened.fully_acked()
    assert [p.name for p in (reopened.directory / "blobs").iterdir()] == []
    reopened.close()


def test_spool_file_copies_hashes_and_names(tmp_path: Path) -> None:
    outbox = _open(tmp_path)
    content = os.urandom(3 * 1024 * 1024 + 17)
    source = tmp_path / "best.pt"
    source.write_bytes(content)
    ref = outbox.spool_file(7, source)
    assert ref == protocol.FileRef(
        sha256=hashlib.sha256(content).hexdigest(), size=len(content), name="best.pt"
    )
    assert outbox.blob_path(7).read_bytes() == content
    # The trainer may overwrite its file right after: the spooled copy is what travels.
    source.write_bytes(b"overwritten")
    assert outbox.blob_path(7).read_bytes() == content
    outbox.close()


def test_spool_file_missing_source_raises_and_leaves_no_blob(tmp_path: Path) -> None:
    outbox = _open(tmp_path)
    with pytest.raises(FileNotFoundError):
        outbox.spool_file(3, tmp_path / "missing.png")
    assert not outbox.blob_path(3).exists()
    outbox.close()


def test_reopen_after_crash_recovers_torn_tail_and_stale_blobs(tmp_path: Path) -> None:
    outbox = _open(tmp_path)
    outbox.append([(seq, _scalar("run-a", seq)) for seq in range(1, 6)])
    source = tmp_path / "img.png"
    source.write_bytes(b"x" * 10)
    outbox.spool_file(6, source)  # copied, but the crash came before its event was written
    segment = list_segments(outbox.directory / "log")[-1][1]
    outbox.close()
    with open(segment, "ab") as f:
        f.write(b"\xc5\x1e\x40\x00")  # a torn record header
    damage: list[object] = []
    reopened = _open(tmp_path, on_damage=damage.append)
    assert reopened.last_seq == 5
    assert len(damage) == 1
    assert not reopened.blob_path(6).exists()
    reopened.append([(6, _scalar("run-a", 6))])
    assert [r.seq for r in reopened.reader(1).read()] == [1, 2, 3, 4, 5, 6]
    reopened.close()


def test_remove_deletes_directory_and_releases_lock(tmp_path: Path) -> None:
    outbox = _open(tmp_path)
    outbox.append([(1, _scalar("run-a", 1))])
    outbox.mark_acked(1)
    outbox.remove()
    assert not (tmp_path / "run-a").exists()
    assert os.listdir(tmp_path) == []
    fresh = _open(tmp_path)  # the run id is free again
    assert fresh.last_seq == 0
    fresh.close()


def test_list_outboxes_skips_foreign_entries(tmp_path: Path) -> None:
    for run in ("run-b", "run-a"):
        _open(tmp_path, run).close()
    (tmp_path / "no-lock-file").mkdir()
    (tmp_path / ".deleting-run-c-1234").mkdir()
    (tmp_path / "stray.txt").write_text("x")
    assert list_outboxes(tmp_path) == ["run-a", "run-b"]
    assert list_outboxes(tmp_path / "missing") == []


#: Enough creations that the old race (adopted between mkdir and flock, about 1 in 300) shows.
CREATIONS = 1500
_SCANNER = """
import sys, time
from pathlib import Path
from producer.transport.outbox import Outbox, list_outboxes

spool, deadline = Path(sys.argv[1]), time.monotonic() + float(sys.argv[2])
print("scanning", flush=True)
while time.monotonic() < deadline and not (spool / "done").exists():
    for run in list_outboxes(spool):  # what a starting producer's sender does with leftovers
        outbox = Outbox.open(spool, run, create=False)
        if outbox is not None:
            outbox.close()
"""


@pytest.mark.slow
def test_a_new_outbox_is_never_adopted_before_its_owner_holds_its_lock(tmp_path: Path) -> None:
    # Another process scans the spool for leftover outboxes without pause, as every producer's
    # sender does when it starts: an outbox must appear with its lock already held.
    spool = tmp_path / "spool"
    spool.mkdir()
    with subprocess.Popen(
        [sys.executable, "-c", _SCANNER, str(spool), "60"],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    ) as scanner:
        try:
            assert scanner.stdout is not None
            assert scanner.stdout.readline() == b"scanning\n"
            refused = 0
            for i in range(CREATIONS):
                outbox = Outbox.open(spool, f"run-{i}")
                if outbox is None:
                    refused += 1
                else:
                    outbox.remove()
            (spool / "done").touch()
            assert scanner.wait(timeout=30) == 0
        finally:
            scanner.kill()
    assert refused == 0, f"{refused} of {CREATIONS} new outboxes were locked by the scanner first"
    assert not [p for p in spool.iterdir() if p.name.startswith(".")], "staging directories left behind"


_FULL_SPOOL = """
import hashlib, json, os, sys, threading
from pathlib import Path
from producer.transport import hashcopy
from producer.transport.outbox import Outbox, SpoolWriteError

spool, work = Path(sys.argv[1]), Path(sys.argv[2])
big = work / "big.pt"
size = 12 * 1024 * 1024 + 5
assert size >= hashcopy.PIPELINE_BYTES  # the pipelined copy is the one under test
content = os.urandom(size)
big.write_bytes(content)
outbox = Outbox.open(spool, "run-big")
first = outbox.spool_file(1, big)  # 12 MB of a 16 MB filesystem
held = outbox.bytes_held
try:
    outbox.spool_file(2, big)  # no room for a second copy: fails part way
    failed = None
except SpoolWriteError as exc:
    failed = exc.strerror
print(json.dumps({
    "first_ok": first.sha256 == hashlib.sha256(content).hexdigest() and first.size == size,
    "first_intact": outbox.blob_path(1).read_bytes() == content,
    "held_before": held, "held_after": outbox.bytes_held,
    "failed": failed, "second_left": outbox.blob_path(2).exists(),
    "blobs": sorted(os.listdir(outbox.blob_path(1).parent)),
    "hashers": [t.name for t in threading.enumerate() if t.name == "clearml-relay-hash"],
}))
"""


def test_a_large_file_that_fills_the_spool_part_way_leaves_the_outbox_as_it_was(tmp_path: Path) -> None:
    spool, work = tmp_path / "spool", tmp_path / "work"
    work.mkdir()
    prefix = private_tmpfs(spool, size="16m")
    if prefix is None:
        pytest.skip("this machine cannot mount a private tmpfs (unshare --mount)")
    out, _ = script_in(prefix, _FULL_SPOOL, str(spool), str(work))
    assert out["first_ok"], "the first copy or its sha256 is wrong"
    assert out["first_intact"], "the failed copy spoiled the first blob"
    assert out["failed"] == "No space left on device"
    assert not out["second_left"], "the failed copy left a partial blob"
    assert out["blobs"] == ["1"]
    assert out["held_after"] == out["held_before"] == 12 * 1024 * 1024 + 5, "the counters moved"
    assert out["hashers"] == [], "the helper thread outlived the failed copy"
