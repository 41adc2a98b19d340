from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from producer.wire.recordlog import HEADER_BYTES, Damage, LogReader, RecordLog, encode_record, list_segments


def _read_all(
    directory: Path, start: int = 1, damage: list[Damage] | None = None, batch: int = 1000
) -> list[int]:
    reader = LogReader(directory, start_seq=start, on_damage=(damage if damage is not None else []).append)
    seqs: list[int] = []
    while records := reader.read(max_records=batch):
        seqs += [r.seq for r in records]
    return seqs


def _fill(directory: Path, n: int, segment_bytes: int = 256) -> RecordLog:
    log = RecordLog(directory, segment_bytes=segment_bytes)
    for seq in range(1, n + 1):
        log.append([(seq, f"body-{seq}".encode() * (seq % 5 + 1))])
    return log


def test_records_come_back_in_order_across_segments_in_any_batch_size(tmp_path: Path) -> None:
    log = _fill(tmp_path, 60)
    assert log.last_seq == 60
    assert len(list_segments(tmp_path)) > 5
    for batch in (1, 7, 1000):
        assert _read_all(tmp_path, batch=batch) == list(range(1, 61))
    assert _read_all(tmp_path, start=33) == list(range(33, 61))
    reader = LogReader(tmp_path)
    assert reader.read(max_records=1)[0].body == b"body-1" * 2


def test_a_reader_follows_a_live_writer(tmp_path: Path) -> None:
    log = RecordLog(tmp_path, segment_bytes=100)
    reader = LogReader(tmp_path)
    assert reader.read() == []
    log.append([(1, b"a"), (2, b"b")])
    assert [r.seq for r in reader.read()] == [1, 2]
    assert reader.read() == []
    log.append([(3, b"c" * 200)])  # rotates
    log.append([(4, b"d")])
    assert [r.seq for r in reader.read()] == [3, 4]


def test_a_reader_waits_for_a_record_that_is_half_written(tmp_path: Path) -> None:
    log = RecordLog(tmp_path)
    log.append([(1, b"one")])
    record = encode_record(2, b"two")
    seg = list_segments(tmp_path)[-1][1]
    with seg.open("ab") as f:
        f.write(record[:5])
    damage: list[Damage] = []
    reader = LogReader(tmp_path, on_damage=damage.append)
    assert [r.seq for r in reader.read()] == [1]
    with seg.open("ab") as f:
        f.write(record[5:])
    assert [r.body for r in reader.read()] == [b"two"]
    assert damage == []


def test_seq_must_increase(tmp_path: Path) -> None:
    log = RecordLog(tmp_path)
    log.append([(5, b"x")])
    with pytest.raises(ValueError, match="does not follow 5"):
        log.append([(5, b"y")])


def test_reopening_after_a_torn_write_cuts_the_tail_and_continues(tmp_path: Path) -> None:
    log = _fill(tmp_path, 10, segment_bytes=10**6)
    log.close()
    seg = list_segments(tmp_path)[-1][1]
    os.truncate(seg, seg.stat().st_size - 3)
    damage: list[Damage] = []
    log = RecordLog(tmp_path, on_damage=damage.append)
    assert log.last_seq == 9
    assert [d.reason for d in damage] == ["torn tail"]
    log.append([(10, b"again")])
    assert _read_all(tmp_path) == list(range(1, 11))


def test_a_flipped_byte_costs_only_its_record_and_is_reported_once(tmp_path: Path) -> None:
    _fill(tmp_path, 40).close()
    first, seg = list_segments(tmp_path)[2]
    data = bytearray(seg.read_bytes())
    data[HEADER_BYTES + 2] ^= 0xFF  # inside the first record's body
    seg.write_bytes(bytes(data))
    damage: list[Damage] = []
    assert _read_all(tmp_path, damage=damage, batch=1) == [s for s in range(1, 41) if s != first]
    assert len(damage) == 1
    assert damage[0].path == seg


def test_a_corrupt_length_field_does_not_swallow_the_rest_of_the_segment(tmp_path: Path) -> None:
    _fill(tmp_path, 40).close()
    first, seg = list_segments(tmp_path)[1]
    data = bytearray(seg.read_bytes())
    data[3] ^= 0x7F  # length field of the segment's first record: now runs past the file's end
    seg.write_bytes(bytes(data))
    seqs = _read_all(tmp_path)
    assert first not in seqs
    assert seqs == [s for s in range(1, 41) if s != first]


def test_drop_through_deletes_only_whole_acknowledged_segments(tmp_path: Path) -> None:
    log = _fill(tmp_path, 50)
    firsts = [f for f, _ in list_segments(tmp_path)]
    cut = firsts[3] + 1  # inside the fourth segment
    assert log.drop_through(cut) > 0
    remaining = [f for f, _ in list_segments(tmp_path)]
    assert remaining[0] == firsts[3]
    assert _read_all(tmp_path, start=cut + 1) == list(range(cut + 1, 51))
    log.drop_through(10**9)
    assert len(list_segments(tmp_path)) == 1  # the active segment stays


def test_a_reader_survives_segments_dropped_under_it(tmp_path: Path) -> None:
    log = _fill(tmp_path, 30)
    reader = LogReader(tmp_path)
    assert [r.seq for r in reader.read(max_records=3)] == [1, 2, 3]
    log.drop_through(20)
    rest = []
    while records := reader.read():
        rest += [r.seq for r in records]
    assert rest[-1] == 30
    assert rest == sorted(set(rest))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_damage_anywhere_costs_only_the_damaged_records(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    directory = tmp_path_factory.mktemp("log")
    _fill(directory, 30, segment_bytes=300).close()
    segments = list_segments(directory)
    index = data.draw(st.integers(0, len(segments) - 1))
    seg = segments[index][1]
    raw = bytearray(seg.read_bytes())
    start = data.draw(st.integers(0, len(raw) - 1))
    length = data.draw(st.integers(1, 40))
    flip = data.draw(st.integers(1, 255))
    for i in range(start, min(start + length, len(raw))):
        raw[i] ^= flip
    seg.write_bytes(bytes(raw))

    # Which records did the damaged byte range touch? Every other one must come back.
    touched = set()
    pos = 0
    clean = encode_record  # records are laid out back to back
    first_seq = segments[index][0]
    next_first = segments[index + 1][0] if index + 1 < len(segments) else 31
    for seq in range(first_seq, next_first):
        body = f"body-{seq}".encode() * (seq % 5 + 1)
        size = len(clean(seq, body))
        if pos < start + length and start < pos + size:
            touched.add(seq)
        pos += size

    # As after a crash: the next owner reopens the log (writer recovery) before reading it.
    damage: list[Damage] = []
    if data.draw(st.booleans()):
        RecordLog(directory, segment_bytes=300, on_damage=damage.append).close()
    else:  # a live log: only the newest record may look like a write in progress
        touched.add(30)
    seqs = _read_all(directory, damage=damage, batch=data.draw(st.sampled_from([1, 5, 1000])))
    assert seqs == sorted(seqs)
    assert set(range(1, 31)) - touched <= set(seqs)
    assert damage or not (set(range(1, 31)) - touched - set(seqs))


def test_last_record_reads_without_repairing(tmp_path: Path) -> None:
    from producer.wire.recordlog import last_record

    assert last_record(tmp_path) is None
    log = _fill(tmp_path, 20)
    log.close()
    seg = list_segments(tmp_path)[-1][1]
    size = seg.stat().st_size
    with seg.open("ab") as f:
        f.write(encode_record(21, b"torn")[:7])
    record = last_record(tmp_path)
    assert record is not None
    assert record.seq == 20
    assert seg.stat().st_size == size + 7, "a read-only look must not cut the tail"


def test_a_reader_past_the_writers_position_answers_without_touching_the_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = _fill(tmp_path, 12)
    reader = LogReader(tmp_path)
    assert [r.seq for r in reader.read(max_seq=log.last_seq)] == list(range(1, 13))

    def no_disk(*_: object) -> None:
        raise AssertionError("the reader touched the disk with nothing committed to read")

    with monkeypatch.context() as patch:
        patch.setattr("producer.wire.recordlog.open", no_disk, raising=False)
        patch.setattr("producer.wire.recordlog.list_segments", no_disk)
        assert reader.read(max_seq=log.last_seq) == []
    log.append([(13, b"thirteen")])  # committed: the next read goes to the disk and finds it
    assert [r.body for r in reader.read(max_seq=log.last_seq)] == [b"thirteen"]
    log.close()
