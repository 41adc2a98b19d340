"""The collector's journal: durability of accepted events, one record log per run.

``data_dir/journal/<run>/`` holds the run's :class:`~producer.wire.recordlog.RecordLog` (record seq ==
event seq, record body == the event's bytes as they crossed the wire, or an encoded ``Gap`` that
stands in for a refused event) and ``meta.json`` (project, name and state, from ``RunOpen`` and
``RunClose``). The journal owns each run's *journaled position*: the highest seq such that every
event up to it is in the journal. Acks report exactly that, so an ack is never ahead of the disk.

Appends are group commits: :meth:`Journal.append_batch` writes all events of one ingest batch
(one write per touched run), then fsyncs each touched run once (policy ``batch``), and only then
returns, so the caller may ack. Listeners (the appliers) hear about new positions after that.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Final, NamedTuple

from collector.counters import Counters
from collector.storage import paths
from collector.storage.space import Episodes, is_disk_full
from producer.wire import protocol
from producer.wire.recordlog import HEADER_BYTES, Damage, LogReader, RecordLog, last_record, list_segments

log = logging.getLogger(__name__)

META: Final = "meta.json"

#: Called as ``listener(run, position, entries)`` after a commit: ``entries`` are what it journaled.
Listener = Callable[[str, int, Sequence["Entry"]], None]


class Entry(NamedTuple):
    """One event to journal: its seq, the bytes to store and the decoded event."""

    seq: int
    body: bytes
    event: protocol.Event


#: Run states after which a run's journal may be retired (an aborted run's producer may return).
FINISHED: Final = frozenset({"completed", "failed"})


@dataclass(frozen=True)
class RunMeta:
    """What the collector knows about a run beyond its events.

    ``writer`` is the writer id of the run's ``RunOpen``: events from another writer are
    refused (see :mod:`producer.wire.protocol`). ``position`` is set when the run's journal is
    retired (see :meth:`Journal.retire`): its segments are gone, and this is the journaled
    position they carried, which keeps resends of the run deduplicated.
    """

    project: str = ""
    name: str = ""
    state: str = "open"
    position: int = 0
    #: The producer incarnation whose ``RunOpen`` opened the run ("": a protocol 1 producer).
    writer: str = ""


def through(event: protocol.Event) -> int:
    """The last seq an event accounts for (a ``Gap`` may stand for several)."""
    return max(event.seq, event.last) if isinstance(event, protocol.Gap) else event.seq


def kind(event: protocol.Event) -> str:
    """The event's kind as the wire names it (its type tag: ``scalar``, ``image``, ``close``...)."""
    return str(type(event).__struct_config__.tag)


def _meta_after(meta: RunMeta, event: protocol.Event) -> RunMeta:
    if isinstance(event, protocol.RunOpen):
        return replace(
            meta, project=event.project, name=event.name, state="open", writer=event.writer or meta.writer
        )
    if isinstance(event, protocol.RunClose):
        return replace(meta, state=event.status)
    if meta.state == "aborted":
        return replace(meta, state="open")  # its producer came back after all
    return meta


def read_meta(directory: Path) -> RunMeta:
    """A run's metadata from its journal directory (read-only)."""
    try:
        data = json.loads((directory / META).read_text())
        return RunMeta(
            project=str(data.get("project", "")),
            name=str(data.get("name", "")),
            state=str(data.get("state", "open")),
            position=int(data.get("position", 0)),
            writer=str(data.get("writer", "")),
        )
    except FileNotFoundError:
        return RunMeta()
    except (OSError, ValueError, TypeError, AttributeError):
        log.warning("unreadable %s: run metadata starts afresh", directory / META)
        return RunMeta()


def read_position(directory: Path, meta: RunMeta | None = None) -> int:
    """A run's journaled position, read-only: its newest record's seq (or a Gap's last).

    A retired journal has no records left; its position is the one ``meta.json`` kept.
    """
    retired = (read_meta(directory) if meta is None else meta).position
    last = last_record(directory)
    if last is None:
        return retired
    try:
        position = through(protocol.decode_event(last.body))
    except protocol.ProtocolError:
        position = last.seq  # refused events are journaled as Gaps: an undecodable one extends nothing
    return max(position, retired)


class _Run:
    """One run's writer and bookkeeping (guarded by the journal's lock)."""

    def __init__(self, directory: Path, log_: RecordLog, position: int, meta: RunMeta) -> None:
        self.directory = directory
        self.log = log_
        self.position = position
        self.meta = meta


class Journal:
    """Per-run record logs under ``directory`` (normally ``data_dir/journal``).

    Args:
        directory: Root of the per-run journal directories; existing runs are reopened.
        fsync: Whether a group commit fsyncs the touched journals before returning.
        segment_bytes: Segment size of each run's record log.
        counters: Where damage and write failures are counted.

    """

    def __init__(
        self,
        directory: Path,
        *,
        fsync: bool = True,
        segment_bytes: int = 8 * 1024 * 1024,
        counters: Counters | None = None,
    ) -> None:
        self.directory = directory
        self.fsync = fsync
        self.segment_bytes = segment_bytes
        self.counters = counters if counters is not None else Counters()
        self._lock = threading.Lock()
        self._runs: dict[str, _Run] = {}
        self._listeners: list[Listener] = []
        self._bytes = 0
        #: Episodes of the journal's filesystem being full (see :mod:`collector.storage.space`).
        self.space = Episodes("journal_disk", "the journal's disk", self.counters)
        #: Why the last group commit failed (other than a full disk); None once one succeeds.
        self._failure: str | None = None
        directory.mkdir(parents=True, exist_ok=True)
        for entry in sorted(os.listdir(directory)):
            if not (directory / entry).is_dir():
                continue
            if not paths.is_safe_run(entry):
                log.warning("ignoring journal directory %s: not a run id", directory / entry)
                continue
            run = self._open(entry)
            self._runs[entry] = run
            self._bytes += run.log.size_bytes()
        log.info("journal %s: %d runs, %d bytes", directory, len(self._runs), self._bytes)

    # ---------------------------------------------------------------------------------- reading

    def runs(self) -> list[str]:
        with self._lock:
            return sorted(self._runs)

    def position(self, run: str) -> int:
        """The run's journaled position (0 for a run never seen)."""
        with self._lock:
            found = self._runs.get(run)
            return found.position if found else 0

    def meta(self, run: str) -> RunMeta:
        with self._lock:
            found = self._runs.get(run)
            return found.meta if found else RunMeta()

    def set_state(self, run: str, state: str) -> None:
        """Record a state the collector decided (``aborted``: the run's producer vanished)."""
        with self._lock:
            current = self._runs.get(run)
        if current is None or current.meta.state == state:
            return
        meta = replace(current.meta, state=state)
        self._write_meta(current.directory, meta)
        with self._lock:
            current.meta = meta

    def size_bytes(self) -> int:
        """Bytes held by all journals (tracked, not measured: cheap to ask on every batch)."""
        with self._lock:
            return self._bytes

    def reader(self, run: str, start_seq: int) -> LogReader:
        """A reader of the run's journal from ``start_seq`` on; damage is reported and counted."""
        return LogReader(paths.run_dir(self.directory, run), start_seq=start_seq, on_damage=self._damage)

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(run, position, entries)`` after every group commit that advanced ``run``."""
        self._listeners.append(listener)

    # ---------------------------------------------------------------------------------- writing

    def append_batch(self, batch: Mapping[str, Sequence[Entry]]) -> set[str]:
        """Group commit: journal every run's entries, sync, then notify listeners.

        The entries of a run must follow its position in order. A run whose write fails is
        reopened (which cuts off a partial write) and left at whatever its log holds; the
        other runs are unaffected.

        Returns:
            The runs whose append or fsync failed: their events may not be journaled (durably),
            so they must not be acked.

        """
        failed: set[str] = set()
        written: list[tuple[str, _Run]] = []
        for name, entries in batch.items():
            if not entries:
                continue
            try:
                written.append((name, self._append(name, entries)))
            except OSError as exc:
                self._write_failed(exc, "journal append failed for run %s", name)
                failed.add(name)
                self._reopen(name)
        if self.fsync:
            for name, run in written:
                try:
                    run.log.sync()
                except OSError as exc:
                    # Not durable, so not acked: the producer resends and gets a duplicate's ack.
                    self._write_failed(exc, "journal fsync failed for run %s", name)
                    failed.add(name)
        if written and not failed:
            self.space.fits()
            self._failure = None
        for _, run in written:
            if run.meta.state != "open":
                run.log.close()  # ended: free its fd (a late event reopens it as a new segment)
        with self._lock:
            advanced = [(name, self._runs[name].position) for name in batch if name not in failed]
        for name, position in advanced:
            for listener in self._listeners:
                listener(name, position, batch[name])
        return failed

    def _append(self, name: str, entries: Sequence[Entry]) -> _Run:
        with self._lock:
            run = self._runs.get(name)
        if run is None:
            run = self._create(name)
        meta = run.meta
        for entry in entries:
            meta = _meta_after(meta, entry.event)
        if meta != run.meta:
            # Meta goes first: a crash after it but before the records leaves meta ahead of the
            # journal, which the resent events make true again; meta behind would stay wrong.
            self._write_meta(run.directory, meta)
        run.log.append((entry.seq, entry.body) for entry in entries)
        with self._lock:
            run.meta = meta
            run.position = through(entries[-1].event)
            self._bytes += sum(HEADER_BYTES + len(entry.body) for entry in entries)
        return run

    def reclaim(self, run: str, applied: int) -> int:
        """Delete the run's journal segments that hold only events up to ``applied``.

        The newest segment always stays: its last record is the run's journaled position.
        """
        with self._lock:
            found = self._runs.get(run)
        if found is None:
            return 0
        freed = found.log.drop_through(applied)
        if freed:
            with self._lock:
                self._bytes -= freed
            log.debug("reclaimed %d journal bytes of run %s through %d", freed, run, applied)
        return freed

    def retire(self, run: str, durable: int, *, open_too: bool = False) -> int:
        """Delete every segment of a finished run that the backend holds durably; returns bytes freed.

        Only a completed or failed run whose durable applied position has reached its journaled
        position is retired (with ``open_too``, an open run too: when the journal is at its size
        cap, a run whose newest segment holds everything it sent would otherwise keep that
        segment, and the cap, forever). Its ``meta.json`` keeps that position first, so resends of the run
        are still answered as duplicates and a late event continues the seq; the directory (a
        few hundred bytes) stays. Must be called from the thread that appends (the ingest
        thread's housekeeping), never concurrently with an append.
        """
        with self._lock:
            found = self._runs.get(run)
        if (
            found is None
            or (found.meta.state not in FINISHED and not open_too)
            or durable < found.position
            or found.meta.position >= found.position  # retired already, nothing appended since
        ):
            return 0
        meta = replace(found.meta, position=found.position)
        self._write_meta(found.directory, meta)  # first: the position must outlive the segments
        found.log.close()  # a late event opens a new segment after the position
        freed = 0
        for _, path in list_segments(found.directory):
            with contextlib.suppress(FileNotFoundError):
                size = path.stat().st_size
                path.unlink()
                freed += size
        with self._lock:
            found.meta = meta
            self._bytes -= freed
        log.info(
            "run %s: %s and applied through %d: journal retired, %d bytes freed",
            run,
            meta.state,
            meta.position,
            freed,
            extra={"run": run},
        )
        return freed

    def problem(self) -> str | None:
        """Why the journal cannot take events now, or None if it can (for health checks).

        A full disk or a failed group commit count until a commit succeeds again; on top, one
        byte is written to (and removed from) the journal directory, which finds a directory
        that went read-only, vanished or filled up while no events came.
        """
        if self.space.full:
            return f"the journal's disk is full ({self.directory})"
        if self._failure is not None:
            return self._failure
        probe = self.directory / f".probe-{os.getpid()}-{threading.get_ident()}"
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, b"\0")
            finally:
                os.close(fd)
                probe.unlink()
        except OSError as exc:
            return f"the journal directory {self.directory} is not writable: {exc}"
        return None

    def close(self) -> None:
        with self._lock:
            for run in self._runs.values():
                run.log.close()

    # --------------------------------------------------------------------------------- internal

    def _damage(self, damage: Damage) -> None:
        self.counters.incr("journal_damage")
        log.warning(
            "journal damage in %s at offset %d (%d bytes): %s",
            damage.path,
            damage.offset,
            damage.length,
            damage.reason,
        )

    def _open(self, name: str) -> _Run:
        directory = paths.run_dir(self.directory, name)
        record_log = RecordLog(directory, segment_bytes=self.segment_bytes, on_damage=self._damage)
        meta = read_meta(directory)
        position = read_position(directory, meta)  # the log was just recovered: its tail is clean
        # A retired journal has no segment left: the next one starts after the kept position.
        record_log.last_seq = max(record_log.last_seq, meta.position)
        if meta.state != "open":
            record_log.close()  # file descriptors are kept for runs that may still write
        return _Run(directory, record_log, position, meta)

    def _create(self, name: str) -> _Run:
        directory = paths.run_dir(self.directory, name)
        directory.mkdir(exist_ok=True)
        if self.fsync:
            paths.fsync_path(self.directory)
        run = _Run(directory, RecordLog(directory, segment_bytes=self.segment_bytes), 0, RunMeta())
        with self._lock:
            self._runs[name] = run
        return run

    def _write_failed(self, exc: OSError, message: str, name: str) -> None:
        """Count a failed write; a full disk is one warning per episode, anything else a traceback."""
        self.counters.incr("journal_write_error")
        if is_disk_full(exc):
            self.space.failed(f"{self.directory}: {exc.strerror}")
        else:
            self._failure = f"the last journal write failed (run {name}): {exc}"
            log.exception(message, name, extra={"run": name})

    def _reopen(self, name: str) -> None:
        with self._lock:
            run = self._runs.get(name)
        if run is None:
            return
        run.log.close()
        try:
            fresh = self._open(name)
        except OSError:
            log.exception("cannot reopen the journal of run %s", name)
            return
        with self._lock:
            self._runs[name] = fresh

    def _write_meta(self, directory: Path, meta: RunMeta) -> None:
        tmp = directory / (META + ".tmp")
        with open(tmp, "w") as f:
            json.dump(asdict(meta), f)
            if self.fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, directory / META)
        if self.fsync:
            paths.fsync_path(directory)
