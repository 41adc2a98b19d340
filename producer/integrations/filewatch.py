"""Image and plot files that a trainer writes late: found, sent once each, never half-written.

Ultralytics writes its image mosaics from background threads, so a file may appear (or be
rewritten) after the hook that would look for it. A :class:`FileWatcher` is polled by a
background thread, never by the training thread: each poll lists the watched directories and
returns the files that are ready to send. A file is ready when it is complete (a JPEG ends with
the EOI marker ``FFD9``, a PNG with its ``IEND`` chunk) and no longer changing (the same size and
modification time at two looks, or last modified more than :data:`SETTLE_SECONDS` ago). Each
version of a file (path, mtime, size) is sent at most once, and a rewrite with the same bytes
as the image already sent in its slot (title, series, iteration) is not sent again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

log = logging.getLogger(__name__)

#: A file unchanged for this long is taken as finished at the first look.
SETTLE_SECONDS: Final = 1.0
_BATCH: Final = re.compile(r"_batch(\d+)")
_JPEG_END: Final = b"\xff\xd9"
_PNG_END: Final = b"IEND\xaeB`\x82"

Kind = Literal["image", "plot"]
Version = tuple[int, int]  # (mtime_ns, size)


@dataclass(frozen=True)
class Ready:
    """A file to report now: ``Run.image`` or ``Run.plot`` with these arguments."""

    kind: Kind
    title: str
    series: str
    iteration: int
    path: Path


@dataclass(frozen=True)
class _Glob:
    directory: Path
    pattern: str
    title: str


def debug_image_slot(name: str) -> tuple[str, int]:
    """Series and iteration of a mosaic the way Ultralytics' ClearML callback names them.

    ``val_batch2_pred.jpg`` -> ``("val_pred.jpg", 2)``; a name without ``_batchN`` -> ``(name, 0)``.
    """
    found = _BATCH.search(name)
    return (name.replace(found.group(), ""), int(found.group(1))) if found else (name, 0)


def complete(path: Path) -> bool:
    """Whether an image file is whole: JPEG and PNG by their end marker, other files always."""
    suffix = path.suffix.lower()
    end = _JPEG_END if suffix in (".jpg", ".jpeg") else _PNG_END if suffix == ".png" else b""
    if not end:
        return True
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() < len(end):
                return False
            f.seek(-len(end), os.SEEK_END)
            return f.read(len(end)) == end
    except OSError:
        return False


class FileWatcher:
    """Finds the files to report; owned by one background thread (not thread-safe).

    Args:
        sent: versions already reported by an earlier process (a resumed training), by path.

    """

    def __init__(self, sent: dict[Path, Version] | None = None) -> None:
        self._globs: list[_Glob] = []
        self._files: dict[Path, tuple[Kind, str, str, int]] = {}
        self._looks: dict[Path, Version] = {}
        self._sent: dict[Path, Version] = dict(sent or {})
        self._digests: dict[tuple[Kind, str, str, int], bytes] = {}

    def watch(self, directory: Path, pattern: str, title: str) -> None:
        """Report every file matching ``pattern`` in ``directory`` as a debug image titled ``title``."""
        entry = _Glob(Path(directory), pattern, title)
        if entry not in self._globs:
            self._globs.append(entry)

    def add(self, path: Path, kind: Kind, title: str, series: str, iteration: int = 0) -> None:
        """Report one file (a plot) once it is ready."""
        self._files.setdefault(Path(path), (kind, title, series, iteration))

    @property
    def sent(self) -> dict[Path, Version]:
        """The version of each file reported so far (to remember across a resume)."""
        return dict(self._sent)

    def poll(self) -> tuple[list[Ready], int]:
        """Look at every candidate once.

        Returns:
            The files ready to report now (each is then taken as sent), and how many existing
            files are still being written.

        """
        ready: list[Ready] = []
        waiting = 0
        now = time.time()
        for path, (kind, title, series, iteration) in self._candidates().items():
            try:
                st = path.stat()
            except OSError:
                continue  # not written yet, or gone
            version = (st.st_mtime_ns, st.st_size)
            if self._sent.get(path) == version:
                continue
            settled = self._looks.get(path) == version or now - st.st_mtime_ns / 1e9 > SETTLE_SECONDS
            if not (settled and complete(path)):
                self._looks[path] = version
                waiting += 1
                continue
            self._looks.pop(path, None)
            self._sent[path] = version
            slot = (kind, title, series, iteration)
            digest = _digest(path)
            if digest is not None and self._digests.get(slot) == digest:
                continue  # rewritten with the same bytes (the final validation redraws its mosaics)
            if digest is not None:
                self._digests[slot] = digest
            ready.append(Ready(kind, title, series, iteration, path))
        return ready, waiting

    def _candidates(self) -> dict[Path, tuple[Kind, str, str, int]]:
        found: dict[Path, tuple[Kind, str, str, int]] = {}
        for entry in self._globs:
            try:
                paths = sorted(entry.directory.glob(entry.pattern))
            except OSError:
                continue
            for path in paths:
                series, iteration = debug_image_slot(path.name)
                found.setdefault(path, ("image", entry.title, series, iteration))
        for path, spec in self._files.items():
            found.setdefault(path, spec)
        return found


def _digest(path: Path) -> bytes | None:
    try:
        return hashlib.blake2b(path.read_bytes(), digest_size=16).digest()
    except OSError as exc:
        log.debug("clearml-relay: cannot read %s: %s", path, exc)
        return None
