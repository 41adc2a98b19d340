"""The file store: resumable chunks at ``have``, verification, dedup, and files over the wire."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest
from collector_helpers import DEADLINE, Producer, open_event, records, running

from collector.pipeline import partwrite
from collector.pipeline.files import FileStore
from collector.storage.paths import UnsafeNameError
from producer.wire import protocol

CONTENT = bytes(range(256)) * 40  # 10 KiB
SHA = hashlib.sha256(CONTENT).hexdigest()


def test_chunks_resume_at_have_and_complete_verified(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    assert store.offer("r", SHA, len(CONTENT)).have == 0
    status = store.chunk("r", SHA, 0, CONTENT[:4000])
    assert (status.have, status.complete, status.error) == (4000, False, "")

    # A collector restart forgets the running hash; the next offer rebuilds it from the .part.
    store = FileStore(tmp_path)
    assert store.offer("r", SHA, len(CONTENT)).have == 4000
    status = store.chunk("r", SHA, 4000, CONTENT[4000:6000])
    assert status.have == 6000

    # After another restart the producer may go on without offering again.
    store = FileStore(tmp_path)
    status = store.chunk("r", SHA, 6000, CONTENT[6000:])
    assert (status.have, status.complete) == (len(CONTENT), True)
    assert store.path("r", SHA).read_bytes() == CONTENT
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == [SHA]
    assert store.counters.get("files_complete") == 1


def _advice_log(monkeypatch: pytest.MonkeyPatch, *, fail: bool = False) -> list[tuple[int, int, int]]:
    """Record the writeback advice the store gives (and give it to the kernel, or fail it)."""
    advised: list[tuple[int, int, int]] = []
    real = os.posix_fadvise

    def advise(fd: int, offset: int, length: int, advice: int) -> None:
        advised.append((offset, length, advice))
        if fail:
            raise OSError(errno.EINVAL, "advice refused")
        real(fd, offset, length, advice)

    monkeypatch.setattr(partwrite, "_ADVISE", advise)
    monkeypatch.setattr(partwrite, "WRITEBACK_BYTES", 4096)
    return advised


@pytest.mark.parametrize("fsync", [True, False])
def test_a_large_file_is_written_back_as_it_arrives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fsync: bool
) -> None:
    """With fsync, writeback of what arrived starts every WRITEBACK_BYTES, each byte once.

    The fsync that completes the file then waits for the last stretch only.
    """
    advised = _advice_log(monkeypatch)
    store = FileStore(tmp_path, fsync=fsync, direct=False)
    store.offer("r", SHA, len(CONTENT))
    for offset in range(0, len(CONTENT), 1500):
        store.chunk("r", SHA, offset, CONTENT[offset : offset + 1500])
    assert store.path("r", SHA).read_bytes() == CONTENT
    if not fsync:
        assert advised == [], "nothing is made durable, so nothing is hurried to disk"
        return
    assert advised == [(0, 4500, os.POSIX_FADV_DONTNEED), (4500, 4500, os.POSIX_FADV_DONTNEED)]


def test_writeback_starts_again_from_0_after_a_sha256_mismatch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    advised = _advice_log(monkeypatch)
    store = FileStore(tmp_path, direct=False)
    wrong = b"x" * len(CONTENT)
    store.offer("r", SHA, len(CONTENT))
    assert store.chunk("r", SHA, 0, wrong).error.startswith("sha256 mismatch")
    advised.clear()
    assert store.chunk("r", SHA, 0, CONTENT).complete  # the resend from 0
    assert advised == [(0, len(CONTENT), os.POSIX_FADV_DONTNEED)]


def test_writeback_advice_that_fails_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    advised = _advice_log(monkeypatch, fail=True)
    store = FileStore(tmp_path, direct=False)
    store.offer("r", SHA, len(CONTENT))
    assert store.chunk("r", SHA, 0, CONTENT[:5000]).have == 5000
    assert store.chunk("r", SHA, 5000, CONTENT[5000:]).complete
    assert [offset for offset, _, _ in advised] == [0, 5000]
    assert store.path("r", SHA).read_bytes() == CONTENT
    assert store.counters.get("files_complete") == 1


def test_chunk_at_the_wrong_offset_is_not_written(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    store.offer("r", SHA, len(CONTENT))
    store.chunk("r", SHA, 0, CONTENT[:1000])
    ahead = store.chunk("r", SHA, 2000, CONTENT[2000:3000])
    behind = store.chunk("r", SHA, 0, CONTENT[:1000])
    assert (ahead.have, ahead.error, behind.have) == (1000, "", 1000)
    assert (tmp_path / "r" / f"{SHA}.part").stat().st_size == 1000
    assert store.counters.get("file_chunk_out_of_order") == 2


def test_sha256_mismatch_discards_the_bytes(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    wrong = b"x" * len(CONTENT)
    store.offer("r", SHA, len(wrong))
    status = store.chunk("r", SHA, 0, wrong)
    assert (status.have, status.complete) == (0, False)
    assert status.error.startswith("sha256 mismatch")
    assert not store.is_complete("r", SHA)
    assert not (tmp_path / "r" / f"{SHA}.part").exists()
    # The producer sends again from 0 (without a new offer) and succeeds.
    assert store.chunk("r", SHA, 0, CONTENT).complete
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == [SHA]


def test_complete_file_is_never_sent_twice(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    store.offer("r", SHA, len(CONTENT))
    store.chunk("r", SHA, 0, CONTENT)
    again = FileStore(tmp_path).offer("r", SHA, len(CONTENT))
    assert (again.have, again.complete) == (len(CONTENT), True)
    late_chunk = store.chunk("r", SHA, 0, CONTENT[:10])
    assert late_chunk.complete
    # Per run: another run holding the same content has to send it.
    assert store.offer("other", SHA, len(CONTENT)).have == 0


def test_never_writes_past_the_offered_size(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    store.offer("r", SHA, 100)
    status = store.chunk("r", SHA, 0, CONTENT[:101])
    assert status.have == 0
    assert "past the offered size" in status.error
    assert not (tmp_path / "r" / f"{SHA}.part").exists()


def test_part_longer_than_the_offer_is_discarded(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    store.offer("r", SHA, len(CONTENT))
    store.chunk("r", SHA, 0, CONTENT[:5000])
    assert FileStore(tmp_path).offer("r", SHA, 4000).have == 0


def test_empty_file_completes_on_offer(tmp_path: Path) -> None:
    empty = hashlib.sha256(b"").hexdigest()
    status = FileStore(tmp_path).offer("r", empty, 0)
    assert (status.have, status.complete) == (0, True)
    assert (tmp_path / "r" / empty).read_bytes() == b""


def test_chunk_without_offer_tells_the_producer_to_offer(tmp_path: Path) -> None:
    status = FileStore(tmp_path).chunk("r", SHA, 0, CONTENT[:10])
    assert status.have == 0
    assert "offer" in status.error
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(("run", "sha"), [("..", SHA), (".", SHA), ("r", "../" + SHA[3:]), ("a/b", SHA)])
@pytest.mark.slow
def test_paths_come_only_from_safe_names(tmp_path: Path, run: str, sha: str) -> None:
    with pytest.raises(UnsafeNameError):
        FileStore(tmp_path).path(run, sha)


def test_file_over_the_wire_then_its_event(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ref = protocol.FileRef(sha256=SHA, size=len(CONTENT), name="../../etc/passwd")
    image = protocol.DebugImage(run="r", seq=2, title="Mosaic", series="train", iteration=1, file=ref)
    with running(data) as collector, Producer(collector.bound_endpoint) as producer:
        # The event before its file: not journaled, the producer is told to resend from it.
        producer.submit([open_event("r"), image])
        assert producer.recv() == protocol.Nack(run="r", expect=2)
        assert producer.recv() == protocol.Ack(runs={"r": 1})

        producer.send(protocol.FileOffer(run="r", sha256=SHA, size=len(CONTENT)))
        assert producer.expect(protocol.FileStatus).have == 0
        for offset in range(0, len(CONTENT), 4096):
            producer.send(
                protocol.FileChunk(run="r", sha256=SHA, offset=offset), CONTENT[offset : offset + 4096]
            )
        statuses = [producer.expect(protocol.FileStatus) for _ in range(0, len(CONTENT), 4096)]
        assert [s.have for s in statuses] == [4096, 8192, len(CONTENT)]
        assert statuses[-1].complete

        producer.submit([image])
        assert producer.recv() == protocol.Ack(runs={"r": 2})
        assert collector.wait_applied("r", 2, DEADLINE)
        assert collector.status().counters["file_missing"] == 1
    line = records(data, "r")[1]
    stored = Path(line["file"])
    assert stored.is_absolute()
    assert stored == (data / "files" / "r" / SHA).absolute()
    assert stored.read_bytes() == CONTENT
    assert line["event"]["file"]["name"] == "../../etc/passwd"  # a display name, never a path
