"""Backends: where journaled events finally land, each applied exactly once.

Exactly-once needs the backend to own its applied position: an applier resumes every run from
``backend.applied(run) + 1``, the position of its last checkpoint, so a backend must either make
"event applied" and "position advanced" one atomic step or undo what it applied after its last
checkpoint when it resumes. :class:`JsonlBackend` (tests, demos) does the former by writing one
JSON line per event with a single ``write``: the last complete line *is* the position, and a torn
last line left by a
``kill -9`` is cut off when the run's file is opened again. The ClearML backend lives in its own
module, imported lazily, so importing the collector never imports clearml.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, Protocol

import msgspec

from collector.pipeline.files import FileStore
from collector.storage import paths
from collector.storage.journal import through
from producer.wire import protocol

log = logging.getLogger(__name__)

_SUFFIX: Final = ".jsonl"
_TAIL_READ_BYTES: Final = 64 * 1024


class Rewind(Exception):  # noqa: N818  (a signal to the applier, not an error it reports)
    """What was applied since the last checkpoint was lost: re-apply from ``applied(run) + 1``.

    Raised by :meth:`Backend.apply`, :meth:`Backend.checkpoint` or :meth:`Backend.abort` when
    the backend finds out that work it had accepted did not land (ClearML: a batch of events the
    server refused, which the SDK drops). The backend has already reset its own state for the
    run, so that applying the events after its durable position again starts clean.
    """


class PartlyApplied(Exception):  # noqa: N818  (a report to the applier, with the cause chained)
    """:meth:`Backend.apply_batch` applied the first ``count`` events, then failed (see ``__cause__``).

    The applier counts those ``count`` as applied and retries the batch from the next one.
    """

    def __init__(self, count: int) -> None:
        super().__init__(f"the first {count} events of the batch were applied")
        self.count = count


def apply_each(
    apply: Callable[[str, protocol.Event, FileStore], None],
    run: str,
    events: Sequence[protocol.Event],
    files: FileStore,
) -> None:
    """``apply`` each event in turn: :meth:`Backend.apply_batch` for a backend that has no bulk path.

    A failure after the first event raises :class:`PartlyApplied` from it; a :class:`Rewind` (or a
    failure of the first event) is raised as it is.
    """
    for done, event in enumerate(events):
        try:
            apply(run, event, files)
        except Rewind:
            raise
        except Exception as exc:
            if not done:
                raise
            raise PartlyApplied(done) from exc


class Backend(Protocol):
    """What the appliers need from a backend; calls for one run come from one thread at a time."""

    def applied(self, run: str) -> int:
        """The backend's own durable position: every event of ``run`` up to it is applied."""
        ...

    def apply(self, run: str, event: protocol.Event, files: FileStore) -> None:
        """Apply the event that follows ``applied(run)`` and advance the position with it.

        Raising means "not applied": the applier retries the same event later. The position may
        advance only at the next :meth:`checkpoint`; after a crash the events since the last
        checkpoint are applied again, and the backend must make that harmless.
        """
        ...

    def apply_batch(self, run: str, events: Sequence[protocol.Event], files: FileStore) -> None:
        """Apply consecutive events of one kind, the first following ``applied(run)``, in order.

        As :meth:`apply` for each; in one go where the backend can (the ClearML backend writes a
        batch of scalars as one request). Raising means "none applied"; :class:`PartlyApplied`
        means "the first ``count`` applied"; :func:`apply_each` does this for any backend.
        """
        ...

    def checkpoint(self, run: str) -> None:
        """Make every event applied so far durable; ``applied(run)`` reports it afterwards.

        Raising means "not durable": the applier retries later; :class:`Rewind` means "lost
        since the last checkpoint": the applier re-applies from ``applied(run) + 1``.
        """
        ...

    def abort(self, run: str, reason: str) -> None:
        """The run's producer vanished: mark its task aborted (a later event may still come)."""
        ...

    def close(self) -> None:
        """Collector shutdown: make durable what can be; open runs continue after a restart."""
        ...


class _Line(msgspec.Struct):
    seq: int
    event: msgspec.Raw
    file: str | None


class _RunFile:
    def __init__(self, fd: int, size: int, applied: int) -> None:
        self.fd = fd
        self.size = size
        self.applied = applied


class JsonlBackend:
    """Appends ``{"seq", "event", "file"}`` per event to ``directory/<run>.jsonl``.

    Args:
        directory: Where the per-run files go (created if missing).
        fsync: fsync after every line (durable against power loss, slow).

    """

    def __init__(self, directory: Path, *, fsync: bool = False) -> None:
        self.directory = directory
        self.fsync = fsync
        self._lock = threading.Lock()
        self._files: dict[str, _RunFile] = {}
        directory.mkdir(parents=True, exist_ok=True)

    def path(self, run: str) -> Path:
        return self.path_in(self.directory, run)

    @staticmethod
    def path_in(directory: Path, run: str) -> Path:
        """Where the records of ``run`` live under ``directory``."""
        return paths.run_dir(directory, run).with_name(run + _SUFFIX)

    def applied(self, run: str) -> int:
        return self._file(run).applied

    def apply(self, run: str, event: protocol.Event, files: FileStore) -> None:
        ref = protocol.event_file(event)
        stored = str(files.path(run, ref.sha256).absolute()) if ref is not None else None
        line = msgspec.json.encode({"seq": event.seq, "event": event, "file": stored}) + b"\n"
        state = self._file(run)
        try:
            written = os.write(state.fd, line)
        except OSError:
            os.ftruncate(state.fd, state.size)  # whatever part of the line did land goes again
            raise
        if written != len(line):
            # Only a full line counts: cut a partial one off so the next attempt starts clean.
            os.ftruncate(state.fd, state.size)
            raise OSError(f"short write to {self.path(run)}: {written} of {len(line)} bytes")
        if self.fsync:
            os.fsync(state.fd)
        state.size += len(line)
        state.applied = through(event)
        if isinstance(event, protocol.RunClose):
            # An ended run keeps no file descriptor; a late event reopens the file.
            with self._lock:
                del self._files[run]
            os.close(state.fd)

    def apply_batch(self, run: str, events: Sequence[protocol.Event], files: FileStore) -> None:
        apply_each(self.apply, run, events, files)

    def checkpoint(self, run: str) -> None:
        """Nothing to do: every line is durable (against a process crash) once written."""

    def abort(self, run: str, reason: str) -> None:
        """Nothing to record: the collector's run state says "aborted"."""

    def close(self) -> None:
        with self._lock:
            for state in self._files.values():
                os.close(state.fd)
            self._files.clear()

    def records(self, run: str) -> list[dict[str, Any]]:
        """Every complete line of the run's file, decoded (for tests and the demo).

        A line being written as the file is read (a reader beside a running collector) is left
        for the next read.
        """
        try:
            data = self.path(run).read_bytes()
        except FileNotFoundError:
            return []
        data = data[: data.rfind(b"\n") + 1]
        decoded: list[dict[str, Any]] = [msgspec.json.decode(line) for line in data.splitlines()]
        return decoded

    def _file(self, run: str) -> _RunFile:
        with self._lock:
            state = self._files.get(run)
            if state is None:
                state = self._open(run)
                self._files[run] = state
            return state

    def _open(self, run: str) -> _RunFile:
        path = self.path(run)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        size = os.fstat(fd).st_size
        # Every applied event is one line ending in a newline; anything after the last newline
        # is a line torn by a crash, never applied.
        complete = _line_start(fd, size)
        if complete < size:
            log.warning("cutting a torn last line (%d bytes) off %s", size - complete, path)
            os.ftruncate(fd, complete)
        return _RunFile(fd, complete, _applied_through(fd, complete))


def read_applied(path: Path) -> int:
    """The applied position of a record file, read-only: a torn last line is skipped, not cut."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return 0
    try:
        return _applied_through(fd, _line_start(fd, os.fstat(fd).st_size))
    except msgspec.MsgspecError:
        log.warning("unreadable last record in %s", path)
        return 0
    finally:
        os.close(fd)


def _applied_through(fd: int, complete: int) -> int:
    """The position the last complete line (ending at ``complete``) accounts for; 0 if none."""
    if not complete:
        return 0
    start = _line_start(fd, complete - 1)
    line = msgspec.json.decode(os.pread(fd, complete - start, start), type=_Line)
    return through(msgspec.json.decode(line.event, type=protocol.Event))


def _line_start(fd: int, end: int) -> int:
    """The offset just after the last newline before ``end`` (0 if there is none)."""
    while end > 0:
        start = max(0, end - _TAIL_READ_BYTES)
        found = os.pread(fd, end - start, start).rfind(b"\n")
        if found >= 0:
            return start + found + 1
        end = start
    return 0
