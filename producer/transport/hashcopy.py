"""A file copied into the outbox and hashed on the way; a large one hashed on a helper thread meanwhile.

Reading and writing a block and hashing it cost about the same (1 GB here: read and write about
0.4 s, sha256 about 0.55 s), and both release the interpreter lock, so the writer thread copies
block k+1 while a helper thread hashes block k: 1 GB is copied and hashed in about 0.53 s instead
of 0.72-0.98 s one after the other (``tests/benchmarks/bench_transport.py``'s large file). The
digest covers exactly the bytes written, in order: a block is hashed from the buffer it was
written from, and a buffer is read into again only once its hash is done, so a source that
changes while it is copied cannot make the two disagree. Files below :data:`PIPELINE_BYTES` are
copied and hashed inline, block by block (a thread's start would cost more than it saves).
"""

from __future__ import annotations

import io
import itertools
import os
import queue
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import hashlib

#: Bytes copied (and hashed) at a time inline: a block that stays in the CPU's cache between its
#: read, its hash and its write; 128 KiB copied 1 GB at twice the speed of 1 MiB.
COPY_BYTES: Final = 128 * 1024
#: Files at least this large are hashed on a helper thread.
PIPELINE_BYTES: Final = 8 * 1024 * 1024
#: Block size and buffers of the pipeline (256 KiB blocks stay in the CPU's cache between the
#: copy and the hash; four of them let either side run ahead of the other by a few blocks).
BLOCK_BYTES: Final = 256 * 1024
BUFFERS: Final = 4


def copy(src: io.BufferedReader, write: Callable[[memoryview], None], digest: hashlib._Hash) -> int:
    """Copy the open file ``src`` to ``write``, ``digest`` updated with every block; returns the bytes copied.

    A file of :data:`PIPELINE_BYTES` or more goes through :func:`copy_hashed`; a smaller one is
    read, hashed and written in :data:`COPY_BYTES` blocks on this thread. Errors from ``src`` and
    ``write`` pass through.
    """
    if os.fstat(src.fileno()).st_size >= PIPELINE_BYTES:
        return copy_hashed(src, write, digest)
    buf = bytearray(COPY_BYTES)
    view = memoryview(buf)
    size = 0
    while n := src.readinto(buf):
        digest.update(view[:n])
        write(view[:n])
        size += n
    return size


def copy_hashed(src: io.BufferedIOBase, write: Callable[[memoryview], None], digest: hashlib._Hash) -> int:
    """Copy ``src`` to ``write`` block by block, ``digest`` updated with each block on a helper thread.

    Returns the bytes copied. An exception from ``src`` or ``write`` passes through once the
    helper thread has ended (``digest`` then covers a prefix of what was written).
    """
    todo: queue.SimpleQueue[memoryview | None] = queue.SimpleQueue()
    hashed: queue.SimpleQueue[None] = queue.SimpleQueue()

    def hash_blocks() -> None:
        while (block := todo.get()) is not None:
            digest.update(block)
            hashed.put(None)

    helper = threading.Thread(target=hash_blocks, name="clearml-relay-hash", daemon=True)
    helper.start()
    buffers = [bytearray(BLOCK_BYTES) for _ in range(BUFFERS)]
    size = in_hashing = 0
    try:
        for i in itertools.count():
            buf = buffers[i % BUFFERS]
            if in_hashing == BUFFERS:  # hashes finish in order: the oldest one is this buffer's
                hashed.get()
                in_hashing -= 1
            n = src.readinto(buf)
            if not n:
                break
            block = memoryview(buf)[:n]
            write(block)
            todo.put(block)
            in_hashing += 1
            size += n
    finally:
        todo.put(None)
        helper.join()
    return size
