"""Work the caller's thread hands to the writer thread with an event: a snapshot to finish.

A Logger call on the training thread only snapshots its argument (a copy of an array's bytes,
a figure's pickle, a DataFrame's copy) and hands it off with the event as a :class:`Payload`.
The writer thread calls :meth:`Payload.make`: it finishes the event (fills in the fields that
need work, such as a table's columns) and returns the bytes of the event's file, if it has one.
Those bytes go into the outbox like a copied file (``Outbox.spool_bytes``), so a large payload
travels by chunks and sha256, never in an event body.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from producer.wire import protocol

#: What ``make`` may return: the file's bytes, or None for an event that has no file.
Made = bytes | bytearray | memoryview | None


class PayloadError(Exception):
    """The snapshot cannot become an event (a figure that fails to draw...): the event is dropped."""


class Payload:
    """A snapshot waiting for the writer thread.

    Args:
        name: the display name of the event's file (``figure.png``...).
        size: bytes the snapshot holds in memory until it is written (bounds the queue).
        make: finishes the event and returns the file's bytes; runs on the writer thread, once.

    """

    __slots__ = ("_made", "_make", "name", "size")

    def __init__(self, name: str, size: int, make: Callable[[protocol.Event], Made]) -> None:
        self.name = name
        self.size = size
        self._make: Callable[[protocol.Event], Made] | None = make
        self._made: Made = None

    def make(self, event: protocol.Event) -> Made:
        """The file's bytes (made once: an event held for room in the spool is not made again)."""
        if self._make is not None:
            make, self._make = self._make, None
            try:
                self._made = make(event)
            except PayloadError:
                raise
            except Exception as exc:
                raise PayloadError(f"{type(exc).__name__}: {exc}") from exc
        return self._made

    def release(self) -> None:
        """Drop the snapshot and the bytes once written (or dropped)."""
        self._make = None
        self._made = None

    def __repr__(self) -> str:
        return self.name


#: A hand-off's source: a file to copy, a payload to make, or nothing.
Source = str | Payload | None


class PendingBytes:
    """The memory held by payloads between the caller's hand-off and the writer's write.

    ``take`` on the caller's thread (refused above ``limit``), ``give`` on the writer's.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self._lock = threading.Lock()

    def take(self, n: int) -> bool:
        with self._lock:
            if self.held + n > self.limit and self.held:
                return False
            self.held += n
            return True

    def give(self, n: int) -> None:
        with self._lock:
            self.held = max(0, self.held - n)


def source_name(source: str | Payload) -> str:
    """What a message calls the source: the file's base name, or the payload's name."""
    return source.name if isinstance(source, Payload) else os.path.basename(source)


def source_size(source: str | Payload) -> int | None:
    """The source's size in bytes, None when unknown (a file that cannot be stat'ed)."""
    if isinstance(source, Payload):
        return source.size
    try:
        if os.path.isdir(source):  # a folder packed as a zip: about the sum of its files
            return sum(os.stat(os.path.join(d, f)).st_size for d, _, files in os.walk(source) for f in files)
        return os.stat(source).st_size
    except OSError:
        return None
