"""A directory reported as one file (a checkpoint folder as a model): packed into a zip on the fly.

``Run.model`` and ``update_output_model`` take a directory as ClearML's
``OutputModel.update_weights_package`` does: the writer thread packs it into
``<directory name>.zip`` while it copies it into the outbox, in one pass (no temporary file),
so the outbox, the collector and ClearML see one ordinary file. The zip is stored, not
deflated (weights do not compress, and the copy stays as fast as a file's); its members are
the directory's regular files, in sorted order, named by their path below it.
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from producer.transport.hashcopy import COPY_BYTES

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer


class _Sink(io.RawIOBase):
    """An unseekable stream that hands every write to ``write`` (zipfile then adds descriptors)."""

    def __init__(self, write: Callable[[memoryview], None]) -> None:
        super().__init__()
        self._write = write

    def writable(self) -> bool:
        return True

    def write(self, data: ReadableBuffer, /) -> int:
        view = memoryview(data).cast("B")
        self._write(view)
        return len(view)


def packed_name(directory: str | os.PathLike[str]) -> str:
    """The name of the packed file: ``<directory name>.zip``."""
    return f"{os.path.basename(os.path.normpath(os.fspath(directory))) or 'directory'}.zip"


def _members(root: Path) -> Iterator[Path]:
    """The regular files below ``root``, in sorted order (symbolic links to files included)."""
    for parent, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = Path(parent) / name
            if path.is_file():
                yield path


def pack(directory: str | os.PathLike[str], write: Callable[[memoryview], None]) -> None:
    """Write the zip of ``directory`` to ``write``, member by member, in 1 MiB pieces.

    Raises:
        OSError: a member cannot be read (``write``'s own errors pass through as they are).

    """
    root = Path(directory)
    with zipfile.ZipFile(_Sink(write), "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for path in _members(root):
            info = zipfile.ZipInfo.from_file(path, path.relative_to(root).as_posix())
            info.compress_type = zipfile.ZIP_STORED
            with open(path, "rb") as src, archive.open(info, "w", force_zip64=True) as dest:
                while chunk := src.read(COPY_BYTES):  # the outbox's copy size
                    dest.write(chunk)
