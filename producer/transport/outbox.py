"""One run's durable outbox on the producer's disk, and the spool directory that holds them.

Layout of ``<spool>/<run_id>/``::

    lock      flock'ed by the owning process for its whole life: a live owner is never adopted
    log/      a RecordLog; record seq == event seq, body == protocol.encode(event)
    blobs/N   the spooled copy of the file that event N refers to
    acked     8-byte little-endian cumulative acked seq, overwritten in place
    writer    this outbox's writer id (32 hex digits), written once when the outbox is made

The ``acked`` cursor is written without fsync: after a crash it may lag, and the events behind it
are sent again, which the collector dedups. Segments and blobs are deleted once acked.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import hashlib
import os
import re
import shutil
import struct
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, TypeVar

from producer.transport import hashcopy, package
from producer.wire.protocol import FileRef
from producer.wire.recordlog import HEADER_BYTES, DamageHandler, LogReader, RecordLog

LOCK_NAME: Final = "lock"
#: The collector endpoint the run goes to, written once as the outbox is made (absent: any).
HOME_NAME: Final = "home"
LOG_NAME: Final = "log"
BLOBS_NAME: Final = "blobs"
ACKED_NAME: Final = "acked"
WRITER_NAME: Final = "writer"
SEGMENT_BYTES: Final = 8 * 1024 * 1024
_ACKED: Final = struct.Struct("<Q")
# protocol.RunId, minus names that are not plain directory entries ("." and ".." match RunId)
# and dot-names, which this module uses for directories being deleted.
_RUN_DIR: Final = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$")


def valid_run_dir(run_id: str) -> bool:
    """Whether ``run_id`` may name an outbox directory."""
    return _RUN_DIR.match(run_id) is not None


def _ignore(_: object) -> None:
    pass


class Outbox:
    """One run's outbox, held under its lock. Create with :meth:`open`.

    The writer thread calls :meth:`spool_file`, :meth:`append` and :meth:`sync`; the sender thread
    calls :meth:`reader`, :meth:`mark_acked` and :meth:`remove`. A lock keeps the log's file
    descriptor from being closed under a write.
    """

    def __init__(self, directory: Path, run_id: str, lock_fd: int, log: RecordLog, acked_fd: int) -> None:
        self.directory = directory
        self.run_id = run_id
        self.log = log
        self._lock_fd = lock_fd
        self._acked_fd = acked_fd
        self._io = threading.Lock()
        #: Tells this outbox's events from another outbox's under the same run id (the wire's
        #: writer id); None for an outbox of an older version that cannot be given one.
        self.writer = _writer_id(directory)
        raw = os.pread(acked_fd, _ACKED.size, 0)
        self._acked = _ACKED.unpack(raw)[0] if len(raw) == _ACKED.size else 0
        # Blobs beyond the log's end are half-copied files of events that were never written.
        self._blobs: collections.deque[int] = collections.deque()
        self._blob_sizes: dict[int, int] = {}
        for seq in sorted(int(n) for n in os.listdir(directory / BLOBS_NAME) if n.isdigit()):
            if seq > log.last_seq:
                self.blob_path(seq).unlink(missing_ok=True)
            else:
                self._blobs.append(seq)
                self._blob_sizes[seq] = self.blob_path(seq).stat().st_size
        #: Bytes this outbox holds on disk (log segments and blobs), kept up to date.
        self.bytes_held = log.size_bytes() + sum(self._blob_sizes.values())
        self.removed = False

    @classmethod
    def open(
        cls,
        spool_dir: Path,
        run_id: str,
        *,
        create: bool = True,
        segment_bytes: int = SEGMENT_BYTES,
        on_damage: DamageHandler = _ignore,
        home: str | None = None,
    ) -> Outbox | None:
        """Open (or create) a run's outbox and take its lock without waiting.

        Args:
            spool_dir: the spool directory.
            run_id: the run; must satisfy :func:`valid_run_dir`.
            create: create the directory if missing (False: adopt an existing one only).
            segment_bytes: size at which the log starts a new segment.
            on_damage: called for each damaged stretch found while recovering the log.
            home: the collector endpoint of the run, recorded in a new outbox (see :func:`home`).

        Returns:
            The outbox, or None when another process (or another Outbox in this one) holds the
            lock, or ``create`` is False and there is no such outbox.

        Raises:
            ValueError: ``run_id`` cannot name a directory.
            OSError: the spool directory is not usable.

        """
        if not valid_run_dir(run_id):
            raise ValueError(f"run id {run_id!r} cannot name an outbox directory")
        directory = spool_dir / run_id
        fd = _create_locked(directory, home) if create and not directory.exists() else -1
        lock_path = directory / LOCK_NAME
        if fd < 0:
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0), 0o644)
            except FileNotFoundError:
                return None
            if not _lock(fd, lock_path):
                os.close(fd)
                return None
        try:
            (directory / BLOBS_NAME).mkdir(exist_ok=True)
            log = RecordLog(directory / LOG_NAME, segment_bytes=segment_bytes, on_damage=on_damage)
            acked_fd = os.open(directory / ACKED_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except BaseException:
            os.close(fd)
            raise
        return cls(directory, run_id, fd, log, acked_fd)

    @property
    def acked(self) -> int:
        """Highest seq the collector has acknowledged (cumulative)."""
        return self._acked

    @property
    def last_seq(self) -> int:
        """Highest seq written to the log."""
        return self.log.last_seq

    def fully_acked(self) -> bool:
        """Whether every event written so far is acknowledged."""
        return self._acked >= self.log.last_seq

    def blob_path(self, seq: int) -> Path:
        return self.directory / BLOBS_NAME / str(seq)

    def spool_file(self, seq: int, source: str | os.PathLike[str], *, fsync: bool = False) -> FileRef:
        """Copy ``source`` to ``blobs/<seq>``, hashing it on the way (:func:`.hashcopy.copy`).

        A directory is packed into ``<name>.zip`` as it is copied (:mod:`.package`). A failed
        copy leaves nothing behind.

        Raises:
            SpoolWriteError: the copy cannot be written into the outbox (a full spool...).
            OSError: the source cannot be read.

        """
        target = self.blob_path(seq)
        digest = hashlib.sha256()
        size = 0

        def put(fd: int, data: memoryview) -> None:
            nonlocal size
            digest.update(data)
            _spool_call(_write_all, fd, data)
            size += len(data)

        directory = os.path.isdir(source)
        try:
            if directory:  # a checkpoint folder: packed on the way (producer.transport.package)
                fd = _spool_call(os.open, target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
                try:
                    package.pack(source, lambda data: put(fd, data))
                    if fsync:
                        _spool_call(os.fsync, fd)
                finally:
                    os.close(fd)
            else:
                with open(source, "rb") as src:
                    fd = _spool_call(
                        os.open, target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644
                    )
                    try:
                        size = hashcopy.copy(src, lambda data: _spool_call(_write_all, fd, data), digest)
                        if fsync:
                            _spool_call(os.fsync, fd)
                    finally:
                        os.close(fd)
        except BaseException:
            with contextlib.suppress(OSError):
                target.unlink(missing_ok=True)
            raise
        with self._io:
            self._blobs.append(seq)
            self._blob_sizes[seq] = size
            self.bytes_held += size
        name = package.packed_name(source) if directory else os.path.basename(os.fspath(source))
        return FileRef(sha256=digest.hexdigest(), size=size, name=name[:255] or "file")

    def spool_bytes(
        self, seq: int, data: bytes | bytearray | memoryview, name: str, *, fsync: bool = False
    ) -> FileRef:
        """Write ``data`` (a Logger payload) to ``blobs/<seq>``; a failed write leaves nothing.

        Raises:
            SpoolWriteError: the blob cannot be written (a full spool...).

        """
        target = self.blob_path(seq)
        view = memoryview(data).cast("B")
        try:
            fd = _spool_call(os.open, target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                for start in range(0, len(view), hashcopy.COPY_BYTES):
                    _spool_call(_write_all, fd, view[start : start + hashcopy.COPY_BYTES])
                if fsync:
                    _spool_call(os.fsync, fd)
            finally:
                os.close(fd)
        except BaseException:
            with contextlib.suppress(OSError):
                target.unlink(missing_ok=True)
            raise
        size = len(view)
        with self._io:
            self._blobs.append(seq)
            self._blob_sizes[seq] = size
            self.bytes_held += size
        return FileRef(sha256=hashlib.sha256(view).hexdigest(), size=size, name=name[:255] or "file")

    def append(self, records: list[tuple[int, bytes]]) -> None:
        """Append encoded events (seq, body) with one write."""
        with self._io:
            self.log.append(records)
            self.bytes_held += sum(len(body) for _, body in records) + HEADER_BYTES * len(records)

    def sync(self) -> None:
        """Make the log durable with fsync (the blobs were fsynced when copied, if asked)."""
        with self._io:
            self.log.sync()

    def reader(self, start_seq: int, on_damage: DamageHandler = _ignore) -> LogReader:
        """A reader of this outbox's log from ``start_seq`` on."""
        return LogReader(self.directory / LOG_NAME, start_seq=start_seq, on_damage=on_damage)

    def mark_acked(self, seq: int) -> None:
        """Record the cumulative ack and delete the segments and blobs it covers.

        A cursor that cannot be written (a failing disk) only lags: the events behind it are
        sent again after a restart and deduplicated by the collector.
        """
        if seq <= self._acked:
            return
        self._acked = seq
        with contextlib.suppress(OSError):
            os.pwrite(self._acked_fd, _ACKED.pack(seq), 0)
        freed = self.log.drop_through(seq)
        with self._io:
            while self._blobs and self._blobs[0] <= seq:
                done = self._blobs.popleft()
                self.blob_path(done).unlink(missing_ok=True)
                freed += self._blob_sizes.pop(done, 0)
            self.bytes_held = max(0, self.bytes_held - freed)

    def close(self) -> None:
        """Close the files and release the lock (idempotent)."""
        with self._io:
            self.log.close()
            for fd in (self._acked_fd, self._lock_fd):
                if fd >= 0:
                    os.close(fd)
            self._acked_fd = self._lock_fd = -1

    def remove(self) -> None:
        """Delete the whole outbox directory, then release the lock.

        The directory is first renamed to a dot-name so that no other process can adopt a
        half-deleted outbox.
        """
        trash = self.directory.with_name(f".deleting-{self.run_id}-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(self.directory, trash)
        except OSError:
            trash = self.directory
        shutil.rmtree(trash, ignore_errors=True)
        self.removed = True
        self.close()


class SpoolWriteError(OSError):
    """Copying a file into the outbox failed on the spool's side (its source was readable)."""


_T = TypeVar("_T")


def _spool_call(call: Callable[..., _T], *args: Any) -> _T:
    try:
        return call(*args)
    except OSError as exc:
        raise SpoolWriteError(exc.errno, exc.strerror) from exc


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data) :]


def free_bytes(directory: Path) -> int | None:
    """Bytes free for an unprivileged writer on ``directory``'s filesystem (None: unknown)."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def _writer_id(directory: Path) -> str | None:
    """The outbox's writer id, made on first use (atomically: a crash leaves none or one)."""
    path = directory / WRITER_NAME
    try:
        return _valid_writer(path.read_text())
    except FileNotFoundError:
        pass
    except (OSError, UnicodeDecodeError):
        return None
    writer = uuid.uuid4().hex
    tmp = directory / f".{WRITER_NAME}.tmp"
    try:
        tmp.write_text(writer)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        return None
    return writer


def _valid_writer(text: str) -> str | None:
    text = text.strip()
    return text if re.fullmatch(r"[0-9a-f]{32}", text) else None


def home(spool_dir: Path, run_id: str) -> str | None:
    """The collector endpoint an outbox's run goes to; None for an outbox made without one.

    Recorded when the outbox is made and never changed: a run's events, sequence numbers and
    journal stay on one collector even when the list of collectors changes later.
    """
    try:
        return (spool_dir / run_id / HOME_NAME).read_text(encoding="utf-8").strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def _create_locked(directory: Path, home: str | None = None) -> int:
    """Make a new outbox directory that appears with its lock already held; its lock's fd.

    The outbox is built under a dot-name (which no adopter looks at), locked, then renamed into
    place: another process scanning the spool for leftovers can never take a new outbox's lock
    in the moment between its creation and its owner's lock. -1 when ``directory`` appeared
    meanwhile (the caller opens that one).
    """
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = directory.with_name(f".creating-{directory.name}-{uuid.uuid4().hex[:8]}")
    (staging / BLOBS_NAME).mkdir(parents=True)
    if home is not None:
        (staging / HOME_NAME).write_text(home + "\n", encoding="utf-8")
    fd = -1
    try:
        fd = os.open(staging / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(staging, directory)
    except OSError as exc:
        if fd >= 0:
            os.close(fd)
        shutil.rmtree(staging, ignore_errors=True)
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
            return -1
        raise
    return fd


def _lock(fd: int, path: Path) -> bool:
    """Take the exclusive lock without waiting; False if someone else holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # The owner may have deleted the directory between our open and our lock: then we hold
        # a lock on an unlinked file and must not use what is left.
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except (BlockingIOError, FileNotFoundError):
        return False


def list_outboxes(spool_dir: Path) -> list[str]:
    """Run ids of the outbox directories under ``spool_dir`` (locked or not), sorted."""
    try:
        names = os.listdir(spool_dir)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(n for n in names if valid_run_dir(n) and (spool_dir / n / LOCK_NAME).exists())
