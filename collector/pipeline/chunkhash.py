"""The running sha256 of each file being received, updated on one helper thread.

The ingest thread writes a chunk, hands it to :class:`Hashing` and goes on with the next message
while the helper thread hashes the chunk: writing and hashing a chunk cost about the same (1 GB
here: about 0.3 s to write, 0.55 s to hash) and both release the interpreter lock, so the two
overlap instead of adding up on the thread that every producer waits for. A file's chunks are
hashed in the order they were handed over, from the very buffers that were written, so a digest
covers exactly the bytes on disk. :meth:`RunningHash.hexdigest` waits for the chunks still queued.

The queue is bounded (:data:`QUEUE_CHUNKS`): a producer that sends faster than the helper hashes
does not grow the collector's memory, the ingest thread waits at :meth:`RunningHash.update` (as
it waited for the inline hash before). Chunks below :data:`INLINE_BYTES` are hashed on the calling
thread (a hand-off would cost more than the hash), after the file's queued chunks.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from typing import Any, Final

#: Chunks queued for the helper thread at most, over all files (1 MiB chunks: 8 MiB held).
QUEUE_CHUNKS: Final = 8
#: Chunks smaller than this are hashed on the thread that hands them over.
INLINE_BYTES: Final = 64 * 1024
THREAD_NAME: Final = "clearml-relay-chunk-hash"


class HashFailedError(Exception):
    """The helper thread could not hash a chunk of this file: its digest is unknown."""


class RunningHash:
    """The sha256 of a file so far; chunks are added with :meth:`update`, in the order written."""

    def __init__(self, hashing: Hashing, hasher: Any = None) -> None:
        self._hashing = hashing
        self._hasher = hasher if hasher is not None else hashlib.sha256()
        self._cond = threading.Condition()
        self._queued = 0  # chunks handed to the helper thread
        self._hashed = 0  # of those, hashed (or failed)
        self._failure: BaseException | None = None

    def update(self, data: bytes | memoryview) -> None:
        """Add ``data`` (written, and not to be changed afterwards) to the hash."""
        if len(data) >= self._hashing.inline_bytes:
            with self._cond:
                self._queued += 1
            if self._hashing.submit(self, data):
                return
            with self._cond:
                self._queued -= 1
        self._wait()
        self._hasher.update(data)

    def hexdigest(self) -> str:
        """The digest of every chunk added, once the queued ones are hashed.

        Raises:
            HashFailedError: a chunk could not be hashed on the helper thread.

        """
        self._wait()
        if self._failure is not None:
            raise HashFailedError(str(self._failure)) from self._failure
        return str(self._hasher.hexdigest())

    def _wait(self) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._hashed == self._queued)

    def _hash(self, data: bytes | memoryview) -> None:
        """On the helper thread: add one queued chunk."""
        try:
            if self._failure is None:
                self._hasher.update(data)
        except BaseException as exc:  # noqa: BLE001  (the waiting ingest thread learns of it)
            self._failure = exc
        finally:
            with self._cond:
                self._hashed += 1
                self._cond.notify_all()


class Hashing:
    """The helper thread that hashes received chunks, started with the first large one.

    Args:
        queue_chunks: Chunks queued at most before :meth:`RunningHash.update` waits.
        inline_bytes: Chunks smaller than this are hashed on the calling thread.

    """

    def __init__(self, queue_chunks: int = QUEUE_CHUNKS, inline_bytes: int = INLINE_BYTES) -> None:
        self.inline_bytes = inline_bytes
        self._queue: queue.Queue[tuple[RunningHash, bytes | memoryview] | None] = queue.Queue(queue_chunks)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False

    def running(self, hasher: Any = None) -> RunningHash:
        """A new running hash (of ``hasher`` so far: a ``hashlib`` sha256, or a fresh one)."""
        return RunningHash(self, hasher)

    def submit(self, running: RunningHash, data: bytes | memoryview) -> bool:
        """Queue ``data`` for ``running``; False once closed (the caller hashes it itself)."""
        with self._lock:
            if self._closed:
                return False
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
                self._thread.start()
            # Under the lock, so that nothing is queued behind close()'s end marker; the helper
            # thread never takes it, so a full queue still drains.
            self._queue.put((running, data))
        return True

    def close(self, timeout: float | None = None) -> None:
        """Hash what is queued, then end the helper thread; later chunks are hashed inline."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            running, data = item
            running._hash(data)  # the helper thread's half of RunningHash
