"""The collector's file store: content-addressed files per run, received in resumable chunks.

``data_dir/files/<run>/<sha256>`` is a complete, verified file; ``<sha256>.part`` one being
received and ``<sha256>.size`` the size it was offered with (so chunks still fit after a
collector restart, when the producer resumes without offering again). Paths are built only
from the validated run id and the sha256 digest (see :mod:`collector.storage.paths`), never from a name
on the wire. The store answers every offer and chunk with the number of bytes it holds
(``have``), so a producer always knows where to resume, and it never writes past the size the
file was offered with.

Chunks are written by :mod:`collector.pipeline.partwrite` (with ``O_DIRECT`` in a durable store,
where the filesystem allows it). An incremental sha256 of each file in progress is kept in
memory, each chunk hashed on a helper thread once it is written
(:mod:`collector.pipeline.chunkhash`), so verification costs nothing at the end; after a restart
the hash is rebuilt from the ``.part`` once.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
from pathlib import Path
from typing import Final

from collector.counters import Counters
from collector.pipeline.chunkhash import HashFailedError, Hashing, RunningHash
from collector.pipeline.partwrite import PartWriter
from collector.storage import paths
from producer.wire import protocol

log = logging.getLogger(__name__)

PART: Final = ".part"
SIZE: Final = ".size"
_HASH_READ_BYTES: Final = 1024 * 1024


class _Partial:
    """A file being received: its offered size, the bytes held and their running hash."""

    def __init__(self, size: int, have: int, hasher: RunningHash) -> None:
        self.size = size
        self.have = have
        self.hasher = hasher
        #: Bytes from the start whose writeback was started (see ``partwrite.WRITEBACK_BYTES``).
        self.written_back = have


class FileStore:
    """Content-addressed per-run files under ``directory`` (normally ``data_dir/files``).

    Args:
        directory: Root of the per-run file directories.
        fsync: Whether a completed file is fsynced before it is reported complete.
        counters: Where completions and checksum mismatches are counted.
        direct: Whether a durable store writes with ``O_DIRECT`` where the filesystem allows it
            (:mod:`collector.pipeline.partwrite`).

    """

    def __init__(
        self, directory: Path, *, fsync: bool = True, counters: Counters | None = None, direct: bool = True
    ) -> None:
        self.directory = directory
        self.fsync = fsync
        self.counters = counters if counters is not None else Counters()
        self._partials: dict[tuple[str, str], _Partial] = {}
        self._hashing = Hashing()
        self._writer = PartWriter(durable=fsync, direct=direct)
        # Offers and chunks come from the ingest thread only; the lock keeps path() and
        # is_complete() callers on other threads consistent with it.
        self._lock = threading.Lock()
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def direct(self) -> bool:
        """Whether chunks are written with ``O_DIRECT`` (False once the filesystem refused it)."""
        return self._writer.direct

    def close(self) -> None:
        """End the hash helper thread (chunks received later are hashed inline)."""
        self._hashing.close()

    def path(self, run: str, sha256: str) -> Path:
        """Where the complete file of ``run`` with content ``sha256`` is (or will be)."""
        return paths.content_path(self.directory, run, sha256)

    def is_complete(self, run: str, sha256: str) -> bool:
        return self.path(run, sha256).is_file()

    def offer(self, run: str, sha256: str, size: int) -> protocol.FileStatus:
        """Answer a ``FileOffer``: how many bytes of the file are held, and whether all."""
        final = self.path(run, sha256)
        with self._lock:
            if final.is_file():
                return _status(run, sha256, final.stat().st_size, complete=True)
            partial = self._partials.get((run, sha256))
            if partial is None or partial.size != size:
                partial = self._resume(run, sha256, size)
            if partial.have == partial.size:
                return self._finish(run, sha256, partial)
            return _status(run, sha256, partial.have)

    def chunk(self, run: str, sha256: str, offset: int, payload: bytes | memoryview) -> protocol.FileStatus:
        """Answer a ``FileChunk``: write it if it starts at ``have``, then report ``have``."""
        final = self.path(run, sha256)
        with self._lock:
            if final.is_file():
                return _status(run, sha256, final.stat().st_size, complete=True)
            partial = self._partials.get((run, sha256))
            if partial is None:
                # Not in memory (a collector restart, or a reset): the offer's size is on disk.
                size = self._offered_size(final)
                if size is None:
                    return _status(run, sha256, 0, error="no FileOffer for this file: offer it first")
                partial = self._resume(run, sha256, size)
            if offset != partial.have:
                self.counters.incr("file_chunk_out_of_order")
                return _status(run, sha256, partial.have)
            if offset + len(payload) > partial.size:
                self.counters.incr("file_chunk_past_size")
                return _status(
                    run,
                    sha256,
                    partial.have,
                    error=f"chunk ends at {offset + len(payload)}, past the offered size {partial.size}",
                )
            if payload:
                partial.written_back = self._writer.write(
                    final.with_name(sha256 + PART), offset, payload, partial.written_back
                )
                partial.hasher.update(payload)  # written: hashed on the helper thread meanwhile
                partial.have += len(payload)
            if partial.have == partial.size:
                return self._finish(run, sha256, partial)
            return _status(run, sha256, partial.have)

    # --------------------------------------------------------------------------------- internal

    def remove_run(self, run: str) -> int:
        """Delete every file of ``run`` (complete and partial); returns the bytes freed.

        For a finished run whose events the backend holds durably, when the backend keeps its
        own copy of each file (the ClearML backend: the session's copy, or the upload). A late
        file offer for the run starts from zero again. Called from the ingest thread.
        """
        with self._lock:
            for key in [key for key in self._partials if key[0] == run]:
                del self._partials[key]
        directory = paths.run_dir(self.directory, run)
        try:
            freed = sum(entry.stat().st_size for entry in os.scandir(directory) if entry.is_file())
        except FileNotFoundError:
            return 0
        shutil.rmtree(directory, ignore_errors=True)
        return freed

    def _resume(self, run: str, sha256: str, size: int) -> _Partial:
        """Start or resume receiving a file: rebuild the hash of a ``.part`` left on disk."""
        final = self.path(run, sha256)
        part = final.with_name(sha256 + PART)
        part.parent.mkdir(parents=True, exist_ok=True)
        if self._offered_size(final) != size:
            final.with_name(sha256 + SIZE).write_text(str(size))
        hasher = hashlib.sha256()
        have = 0
        try:
            with open(part, "rb") as f:
                while block := f.read(_HASH_READ_BYTES):
                    hasher.update(block)
                    have += len(block)
        except FileNotFoundError:
            pass
        if have > size:
            # Held more than the offer says: the sizes disagree, so the bytes are not trusted.
            log.warning("discarding %s: %d bytes held, file offered with %d", part, have, size)
            part.unlink()
            hasher, have = hashlib.sha256(), 0
        partial = _Partial(size, have, self._hashing.running(hasher))
        self._partials[(run, sha256)] = partial
        return partial

    @staticmethod
    def _offered_size(final: Path) -> int | None:
        try:
            return int(final.with_name(final.name + SIZE).read_text())
        except (OSError, ValueError):
            return None

    def _finish(self, run: str, sha256: str, partial: _Partial) -> protocol.FileStatus:
        """Verify a fully received file: rename it into place, or discard it."""
        final = self.path(run, sha256)
        part = final.with_name(sha256 + PART)
        try:
            digest = partial.hasher.hexdigest()
        except HashFailedError:
            log.exception("file %s of run %s: the received content could not be hashed", sha256, run)
            digest = "unknown (the collector could not hash it)"
        if digest != sha256:
            self.counters.incr("file_sha256_mismatch")
            part.unlink(missing_ok=True)
            # Keep the offer: the producer sends again from 0 without offering again.
            partial.have, partial.written_back, partial.hasher = 0, 0, self._hashing.running()
            log.warning("file %s of run %s: received content has sha256 %s", sha256, run, digest)
            return _status(run, sha256, 0, error=f"sha256 mismatch: received content hashes to {digest}")
        if not part.exists():
            part.touch()  # an empty file never got a chunk
        if self.fsync:
            paths.fsync_path(part)
        os.replace(part, final)
        if self.fsync:
            paths.fsync_path(final.parent)
        del self._partials[(run, sha256)]
        final.with_name(sha256 + SIZE).unlink(missing_ok=True)
        self.counters.incr("files_complete")
        return _status(run, sha256, partial.size, complete=True)


def _status(
    run: str, sha256: str, have: int, *, complete: bool = False, error: str = ""
) -> protocol.FileStatus:
    return protocol.FileStatus(run=run, sha256=sha256, have=have, complete=complete, error=error)
