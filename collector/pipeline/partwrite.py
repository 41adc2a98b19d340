"""Writing a received chunk into its file's ``.part``: straight to the disk, or through the page cache.

A durable store (fsync on) writes with ``O_DIRECT``: each chunk is copied into one page-aligned
buffer, kept for the store's life, and the disk reads it from there. The page cache then takes no
new memory for a received file. Filling it was most of the collector's CPU for a large file on
this machine (a virtual machine whose freed memory goes back to the host and comes back zeroed
on the next touch): writing 1 GB through the page cache with writeback started as it went took
0.9-2.7 s, nearly all of it in the kernel; the same with ``O_DIRECT`` 0.5 s, 0.07 s of it CPU.
The parts of a chunk that are not whole aligned blocks (the file's last bytes, a chunk resumed at
an odd offset) go through the page cache, as everything does where the filesystem refuses
``O_DIRECT`` (found at the first write, then logged once) or nothing is fsynced.

Through the page cache, a durable store asks the disk to start writing a file's received bytes
every :data:`WRITEBACK_BYTES` (``posix_fadvise(POSIX_FADV_DONTNEED)``: writeback begins, the call
does not wait for it), so the fsync that completes the file waits for the last few MiB instead of
all of it, and received files do not crowd the page cache.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import mmap
import os
from pathlib import Path
from typing import Final

log = logging.getLogger(__name__)

#: Offsets and lengths written with ``O_DIRECT`` are multiples of this (the largest logical
#: block size of common disks, and the page size).
ALIGN: Final = 4096
#: The aligned buffer a direct write is copied into (a chunk: ``protocol.CHUNK_BYTES``).
DIRECT_BUFFER_BYTES: Final = 1024 * 1024
#: Through the page cache, with fsync, writeback of a file is started every this many bytes.
WRITEBACK_BYTES: Final = 16 * 1024 * 1024
_O_DIRECT: Final = getattr(os, "O_DIRECT", 0)
_ADVISE: Final = getattr(os, "posix_fadvise", None)


class PartWriter:
    """Writes chunks at their offsets into ``.part`` files (the file store's; one thread at a time).

    Args:
        durable: Whether the files are fsynced once complete (the store's ``fsync``).
        direct: Whether to write with ``O_DIRECT`` where the filesystem allows it (durable only).

    """

    def __init__(self, *, durable: bool, direct: bool = True) -> None:
        self.durable = durable
        self.direct = bool(direct and durable and _O_DIRECT)
        self._buffer: mmap.mmap | None = None

    def write(self, part: Path, offset: int, payload: bytes | memoryview, written_back: int) -> int:
        """Write ``payload`` at ``offset`` of ``part`` (created if missing).

        ``written_back``: where the writeback of ``part`` was last started from (see
        :data:`WRITEBACK_BYTES`); returns where it is to start next time. A failed write raises
        and leaves the bytes before ``offset`` as they were; bytes of it that landed past
        ``offset`` are overwritten when the chunk is sent again.
        """
        view = memoryview(payload).cast("B")
        end = offset + len(view)
        if self.direct:
            head = min(len(view), -offset % ALIGN)
            body = (len(view) - head) // ALIGN * ALIGN
            if body and self._direct(part, offset + head, view[head : head + body]):
                _pwrite_all(part, offset, view[:head])
                _pwrite_all(part, offset + head + body, view[head + body :])
                return end
        if self.durable and end - written_back >= WRITEBACK_BYTES:
            _pwrite_all(part, offset, view, advise_from=written_back)
            return end
        _pwrite_all(part, offset, view)
        return written_back

    def _direct(self, part: Path, offset: int, view: memoryview) -> bool:
        """Write the aligned ``view`` at ``offset`` with O_DIRECT; False if the filesystem refuses it."""
        try:
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | _O_DIRECT, 0o644)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            return self._refused(part, exc)
        try:
            if self._buffer is None:
                self._buffer = mmap.mmap(-1, DIRECT_BUFFER_BYTES)  # page-aligned, as O_DIRECT needs
            buffer = memoryview(self._buffer)
            done = 0
            while done < len(view):
                n = min(len(buffer), len(view) - done)
                buffer[:n] = view[done : done + n]
                try:
                    written = os.pwrite(fd, buffer[:n], offset + done)
                except OSError as exc:
                    if exc.errno != errno.EINVAL or done:
                        raise
                    return self._refused(part, exc)
                if written < n:  # the disk filled part way: the rest raises the error, if any
                    _pwrite_all(part, offset + done + written, view[done + written :])
                    return True
                done += n
        finally:
            os.close(fd)
        return True

    def _refused(self, part: Path, exc: OSError) -> bool:
        self.direct = False
        log.info(
            "%s refuses O_DIRECT (%s): received files are written through the page cache",
            part.parent,
            exc.strerror,
        )
        return False


def _pwrite_all(part: Path, offset: int, view: memoryview, advise_from: int | None = None) -> None:
    """Write ``view`` at ``offset`` through the page cache; then start writeback from ``advise_from``."""
    if not view and advise_from is None:
        return
    fd = os.open(part, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while view:
            written = os.pwrite(fd, view, offset)
            view, offset = view[written:], offset + written
        if advise_from is not None and _ADVISE is not None:
            with contextlib.suppress(OSError):  # advice: the fsync at the end still makes it durable
                _ADVISE(fd, advise_from, offset - advise_from, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
