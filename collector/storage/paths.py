"""Where the collector keeps things on disk: the only place that turns wire values into paths.

Run ids and sha256 digests are validated by :mod:`producer.wire.protocol` before they get here, but
the run id pattern also admits ``.`` and ``..``, which would name a parent directory; this
module refuses them, so no value from the wire can reach outside its own directory.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Final

JOURNAL: Final = "journal"
FILES: Final = "files"
CLEARML: Final = "clearml"
RECORDS: Final = "records"

_RUN: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_SHA256: Final = re.compile(r"[0-9a-f]{64}")


class UnsafeNameError(ValueError):
    """A run id or digest that must not become part of a path."""


def is_safe_run(run: str) -> bool:
    """Whether ``run`` can name a directory (the protocol's pattern, minus ``.`` and ``..``)."""
    return _RUN.fullmatch(run) is not None and run not in {".", ".."}


def run_dir(root: Path, run: str) -> Path:
    """The directory of ``run`` under ``root``.

    Raises:
        UnsafeNameError: ``run`` is not a safe run id.

    """
    if not is_safe_run(run):
        raise UnsafeNameError(f"run id {run[:80]!r} cannot name a directory")
    return root / run


def content_path(root: Path, run: str, sha256: str) -> Path:
    """The file of ``run`` with content ``sha256`` under ``root``.

    Raises:
        UnsafeNameError: the run id or the digest is malformed.

    """
    if _SHA256.fullmatch(sha256) is None:
        raise UnsafeNameError(f"{sha256[:80]!r} is not a sha256 hex digest")
    return run_dir(root, run) / sha256


def fsync_path(path: Path) -> None:
    """Make a file durable, or a directory's entries (after a rename or a new file in it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
