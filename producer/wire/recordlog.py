r"""Append-only, checksummed record logs in segment files.

One format serves the producer's outbox and the collector's journal. A log is a directory of
segment files named after the first sequence number they hold (``00000000000000000001.seg``);
each segment is a run of records::

    magic  2 bytes   b"\xc5\x1e"
    length u32 LE    body length
    crc    u32 LE    zlib.crc32 of (seq bytes + body)
    seq    u64 LE    sequence number (strictly increasing within a log)
    body   length bytes

A log has one writer (:class:`RecordLog`) and any number of readers (:class:`LogReader`), which
may follow the writer live. Records are written with one ``write`` per batch and survive a
``kill -9`` of the process as soon as ``append`` returns; ``sync`` adds durability against power
loss. Damage (a torn tail after a crash, flipped bytes) is detected by the checksum, reported
through ``on_damage`` and skipped: readers resynchronise on the next valid record, so one bad
record never costs the records after it. The caller sees the loss as a jump in ``seq``.
"""

from __future__ import annotations

import itertools
import os
import struct
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Final, NamedTuple

MAGIC: Final = b"\xc5\x1e"
_HEADER: Final = struct.Struct("<2sIIQ")
HEADER_BYTES: Final = _HEADER.size
_SEQ: Final = struct.Struct("<Q")
#: A length field above this is treated as corruption, not as a record to wait for.
MAX_RECORD_BYTES: Final = 64 * 1024 * 1024
_SUFFIX: Final = ".seg"
_READ_BYTES: Final = 256 * 1024


class Damage(NamedTuple):
    """A stretch of a segment that held no valid record."""

    path: Path
    offset: int
    length: int
    reason: str


DamageHandler = Callable[[Damage], None]


class Record(NamedTuple):
    seq: int
    body: bytes


def _ignore(_: Damage) -> None:
    pass


def encode_record(seq: int, body: bytes) -> bytes:
    crc = zlib.crc32(body, zlib.crc32(_SEQ.pack(seq)))
    return _HEADER.pack(MAGIC, len(body), crc, seq) + body


def _segment_name(first_seq: int) -> str:
    return f"{first_seq:020d}{_SUFFIX}"


def list_segments(directory: Path) -> list[tuple[int, Path]]:
    """(first seq, path) of every segment, oldest first."""
    found = []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    for name in names:
        stem = name[: -len(_SUFFIX)]
        if name.endswith(_SUFFIX) and stem.isdigit():
            found.append((int(stem), directory / name))
    found.sort()
    return found


def last_record(directory: Path) -> Record | None:
    """The newest valid record of a log, read-only: nothing is repaired, a torn tail is skipped."""
    for _, path in reversed(list_segments(directory)):
        try:
            parsed = _parse(path.read_bytes(), 0, final=True)
        except FileNotFoundError:
            continue
        if parsed.records:
            return parsed.records[-1][0]
    return None


class _Parse(NamedTuple):
    records: list[tuple[Record, int]]  # each valid record with seq >= min_seq, and its end offset
    consumed: int  # bytes of buf that were parsed (records and skipped damage)
    valid_end: int  # end offset of the last valid record (whatever its seq), 0 if none
    damage: list[tuple[int, int, str]]  # (offset in buf, length, reason)


def _valid_at(buf: memoryview, pos: int) -> int:
    """Length of the valid record at ``pos`` (0: none there, -1: truncated, maybe valid)."""
    if len(buf) - pos < HEADER_BYTES:
        return -1 if bytes(buf[pos : pos + 2]) == MAGIC[: len(buf) - pos] else 0
    magic: bytes
    length: int
    crc: int
    seq: int
    magic, length, crc, seq = _HEADER.unpack_from(buf, pos)
    if magic != MAGIC or length > MAX_RECORD_BYTES:
        return 0
    end = pos + HEADER_BYTES + length
    if end > len(buf):
        return -1
    if zlib.crc32(buf[pos + HEADER_BYTES : end], zlib.crc32(_SEQ.pack(seq))) != crc:
        return 0
    return HEADER_BYTES + length


def _next_valid(buf: bytes, view: memoryview, start: int) -> int:
    """Offset of the first complete, valid record at or after ``start`` (-1: none)."""
    pos = buf.find(MAGIC, start)
    while pos >= 0 and _valid_at(view, pos) <= 0:
        pos = buf.find(MAGIC, pos + 1)
    return pos


def _parse(buf: bytes, min_seq: int, *, final: bool, limit: int | None = None) -> _Parse:
    """Parse records out of ``buf``.

    ``final``: nothing will be appended to this data (a dead writer's file, or a segment that
    has a successor), so a record that runs past the end is damage, not a write in progress.
    ``limit``: stop after that many records at or above ``min_seq`` (what the reader asked for:
    the rest of the chunk is parsed, and its checksums checked, by a later read).
    """
    records: list[tuple[Record, int]] = []
    damage: list[tuple[int, int, str]] = []
    view = memoryview(buf)
    pos = valid_end = 0
    while pos < len(buf):
        size = _valid_at(view, pos)
        if size > 0:
            seq = _SEQ.unpack_from(buf, pos + HEADER_BYTES - _SEQ.size)[0]
            valid_end = pos + size
            if seq >= min_seq:
                records.append((Record(seq, buf[pos + HEADER_BYTES : valid_end]), valid_end))
            pos = valid_end
            if limit is not None and len(records) >= limit:
                break
            continue
        if size < 0 and not final and _next_valid(buf, view, pos + 1) < 0:
            # Runs past the end and nothing valid follows: a record still being written.
            # (Writers append sequentially, so a valid record after it would prove damage.)
            return _Parse(records, pos, valid_end, damage)
        # Corruption: skip to the next offset where a valid (or possibly in-progress) record starts.
        nxt = pos + 1
        while True:
            nxt = buf.find(MAGIC, nxt)
            if nxt < 0:
                break
            found = _valid_at(view, nxt)
            if found > 0 or (found < 0 and not final):
                break
            nxt += 1
        end = len(buf) if nxt < 0 else nxt
        reason = "torn tail" if size < 0 and end == len(buf) else "checksum or header mismatch"
        damage.append((pos, end - pos, reason))
        pos = end
    return _Parse(records, pos, valid_end, damage)


class RecordLog:
    """The single writer of a log directory.

    Opening recovers from a crash: a torn or corrupt tail of the newest segment is reported and
    cut off, so appends continue right after the last valid record.
    """

    def __init__(
        self,
        directory: Path,
        *,
        segment_bytes: int = 8 * 1024 * 1024,
        on_damage: DamageHandler = _ignore,
    ) -> None:
        self.directory = directory
        self.segment_bytes = segment_bytes
        directory.mkdir(parents=True, exist_ok=True)
        self._on_damage = on_damage
        self.last_seq = 0
        self._fd = -1
        self._size = 0
        self._recover(None)

    def _recover(self, committed: int | None) -> None:
        """Continue after the newest segment's last good record, cutting off what follows it.

        ``committed``: after a failed append, the last seq whose append returned; records
        beyond it on disk belong to the failed append and are cut off too.
        """
        segments = list_segments(self.directory)
        if not segments:
            return
        first, path = segments[-1]
        data = path.read_bytes()
        parsed = _parse(data, 0, final=True)
        if committed is None:
            for offset, length, reason in parsed.damage:
                self._on_damage(Damage(path, offset, length, reason))
        kept = [(r, end) for r, end in parsed.records if committed is None or r.seq <= committed]
        end = kept[-1][1] if kept else (parsed.valid_end if committed is None else 0)
        self.last_seq = kept[-1][0].seq if kept else first - 1
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        try:
            if end < len(data):
                os.ftruncate(fd, end)
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._size = fd, end

    def append(self, records: Iterable[tuple[int, bytes]]) -> None:
        """Write records (seq strictly above ``last_seq``, increasing) with one write call."""
        parts = []
        last = self.last_seq
        for seq, body in records:
            if seq <= last:
                raise ValueError(f"seq {seq} does not follow {last} in {self.directory}")
            parts.append(encode_record(seq, body))
            last = seq
        if not parts:
            return
        if self._fd < 0 and self._size < 0:
            self._recover(self.last_seq)  # an earlier failure left the tail unknown
        if self._fd < 0 or self._size >= self.segment_bytes:
            self._rotate(self.last_seq + 1)
        buf = memoryview(b"".join(parts))
        start = self._size
        try:
            while buf:
                written = os.write(self._fd, buf)
                buf = buf[written:]
                self._size += written
        except OSError:
            self._undo(start)
            raise
        self.last_seq = last

    def _undo(self, size: int) -> None:
        """Cut a failed append (a short write, then ENOSPC or EIO) back to ``size`` bytes.

        The log is left exactly as it was before the failed append, so the caller may reuse
        the sequence numbers. If even the truncation fails, the descriptor is dropped and the
        next append first cuts the segment back to the last committed record.
        """
        try:
            os.ftruncate(self._fd, size)
            self._size = size
        except OSError:
            os.close(self._fd)
            self._fd, self._size = -1, -1

    def _rotate(self, first_seq: int) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        path = self.directory / _segment_name(first_seq)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._size = os.fstat(self._fd).st_size

    def sync(self) -> None:
        """Make everything appended so far durable against power loss."""
        if self._fd >= 0:
            os.fsync(self._fd)

    def drop_through(self, seq: int) -> int:
        """Delete whole segments whose records all have seq <= ``seq``; return bytes freed."""
        freed = 0
        segments = list_segments(self.directory)
        for (_, path), (next_first, _) in itertools.pairwise(segments):
            if next_first - 1 > seq:
                break
            try:
                freed += path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                pass
        return freed

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for _, p in list_segments(self.directory))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class LogReader:
    """Reads a log from ``start_seq`` on, following a live writer across segments.

    The reader keeps no bytes between reads: each read starts at the end of the last record it
    returned. A writer that cuts a failed append back (see :meth:`RecordLog.append`) and
    writes other records in its place is therefore read correctly.
    """

    def __init__(self, directory: Path, *, start_seq: int = 1, on_damage: DamageHandler = _ignore) -> None:
        self.directory = directory
        self.next_seq = start_seq
        self._on_damage = on_damage
        self._path: Path | None = None
        self._offset = 0

    def _open_segment(self) -> bool:
        """Point at the segment that holds ``next_seq`` (or the first after it)."""
        segments = list_segments(self.directory)
        chosen = None
        for first, path in segments:
            if first <= self.next_seq or chosen is None:
                chosen = path
            if first > self.next_seq:
                break
        if chosen is None:
            return False
        self._path, self._offset = chosen, 0
        return True

    def _next_segment(self) -> Path | None:
        assert self._path is not None
        for _, path in list_segments(self.directory):
            if path.name > self._path.name:
                return path
        return None

    def _read_segment(self, path: Path, size: int, limit: int) -> tuple[bytes, _Parse]:
        """About ``size`` bytes of ``path`` from the current offset, parsed up to ``limit`` records.

        More than ``size`` for a record larger than that.
        """
        with open(path, "rb") as f:
            f.seek(self._offset)
            chunk = f.read(size)
            parsed = _parse(chunk, self.next_seq, final=False, limit=limit)
            if chunk and not parsed.consumed:
                # A record larger than one read, or still being written: read all there is.
                chunk += f.read()
                parsed = _parse(chunk, self.next_seq, final=False, limit=limit)
        return chunk, parsed

    def _take(
        self, parsed: _Parse, out: list[Record], max_records: int, max_seq: int | None
    ) -> tuple[int, bool]:
        """Move parsed records into ``out`` up to the bounds; (bytes consumed, stopped early)."""
        for record, end in parsed.records:
            if len(out) >= max_records or (max_seq is not None and record.seq > max_seq):
                return end - HEADER_BYTES - len(record.body), True  # read again from this record
            out.append(record)
            self.next_seq = record.seq + 1
        return parsed.consumed, False

    def read(
        self, max_records: int = 1000, max_bytes: int = 4 * 1024 * 1024, max_seq: int | None = None
    ) -> list[Record]:
        """Up to ``max_records`` records with ``next_seq`` <= seq <= ``max_seq``; [] when caught up.

        ``max_seq``: the writer's committed position (its ``last_seq``). Records beyond it may
        belong to an append that is still failing and will be cut back: they are not returned.
        A reader already past ``max_seq`` returns [] without touching the disk (the sender asks
        after every wake-up, most often with nothing new).
        """
        out: list[Record] = []
        if max_seq is not None and self.next_seq > max_seq:
            return out
        size = 0
        while len(out) < max_records and size < max_bytes:
            if self._path is None and not self._open_segment():
                break
            assert self._path is not None
            try:
                # One bounded chunk at a time: a read for 1,000 records of a segment of 8 MiB
                # must not read (and check) all of it, then drop what it did not return.
                chunk, parsed = self._read_segment(self._path, _READ_BYTES, max_records - len(out))
            except FileNotFoundError:
                # Dropped under us (acked and cleaned up): start again from the segment list.
                self._path = None
                if not list_segments(self.directory):
                    break
                continue
            if not parsed.consumed:
                successor = self._next_segment()
                if successor is None:
                    break  # caught up with the writer (or it is in the middle of a write)
                if chunk:  # a torn tail in a segment that has a successor: damage
                    parsed = _parse(chunk, self.next_seq, final=True, limit=max_records - len(out))
                else:
                    self._path, self._offset = successor, 0
                    continue
            taken = len(out)
            consumed, stopped = self._take(parsed, out, max_records, max_seq)
            size += sum(len(record.body) for record in out[taken:])
            for offset, length, reason in parsed.damage:
                if offset < consumed:  # damage past a stop is reported when it is reached
                    self._on_damage(Damage(self._path, self._offset + offset, length, reason))
            self._offset += consumed
            if stopped or not consumed:
                break
        return out
