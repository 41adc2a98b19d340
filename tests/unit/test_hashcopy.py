"""The pipelined copy: its digest is the sha256 of exactly what was written, whatever the source does."""

from __future__ import annotations

import hashlib
import io
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from producer.transport import hashcopy
from producer.transport.hashcopy import BLOCK_BYTES, BUFFERS, PIPELINE_BYTES, copy_hashed


def _hashers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "clearml-relay-hash"]


@settings(max_examples=25, deadline=None)
@given(size=st.integers(0, 3 * BUFFERS * BLOCK_BYTES + 5), seed=st.integers(0, 2**32 - 1))
def test_the_digest_and_the_copy_are_those_of_the_source(size: int, seed: int) -> None:
    content = (seed.to_bytes(4, "little") * (size // 4 + 1))[:size]
    written = bytearray()
    digest = hashlib.sha256()
    assert copy_hashed(io.BytesIO(content), written.extend, digest) == size
    assert bytes(written) == content
    assert digest.hexdigest() == hashlib.sha256(content).hexdigest()
    assert not _hashers(), "the helper thread outlived the copy"


def test_a_source_rewritten_during_the_copy_hashes_what_was_copied(tmp_path: Path) -> None:
    # The trainer saves its next checkpoint over the file while it is being spooled: the digest
    # must name the bytes in the outbox, never bytes read from the source a second time.
    source = tmp_path / "last.pt"
    source.write_bytes(b"a" * (6 * BLOCK_BYTES))
    written = bytearray()

    def write(block: memoryview) -> None:
        if not written:  # after the first block, the rest of the file changes under the copy
            with source.open("r+b") as f:
                f.seek(BLOCK_BYTES)
                f.write(b"b" * (5 * BLOCK_BYTES))
        written.extend(block)

    digest = hashlib.sha256()
    with source.open("rb") as src:
        copy_hashed(src, write, digest)
    assert written == b"a" * BLOCK_BYTES + b"b" * (5 * BLOCK_BYTES)
    assert digest.hexdigest() == hashlib.sha256(written).hexdigest()


def test_a_failing_write_passes_through_once_the_helper_has_ended() -> None:
    blocks = 0

    def write(_: memoryview) -> None:
        nonlocal blocks
        blocks += 1
        if blocks == BUFFERS + 2:  # with hashes still in flight
            raise OSError(28, os.strerror(28))

    with pytest.raises(OSError, match="No space left on device"):
        copy_hashed(io.BytesIO(os.urandom(4 * BUFFERS * BLOCK_BYTES)), write, hashlib.sha256())
    assert blocks == BUFFERS + 2, "the copy went on after a failed write"
    assert not _hashers()


def test_a_failing_read_passes_through_once_the_helper_has_ended() -> None:
    class Failing(io.BytesIO):
        def readinto(self, buffer: object) -> int:
            if self.tell() >= 2 * BLOCK_BYTES:
                raise OSError(5, os.strerror(5))
            return super().readinto(buffer)  # type: ignore[arg-type]

    written = bytearray()
    with pytest.raises(OSError, match="Input/output error"):
        copy_hashed(Failing(os.urandom(5 * BLOCK_BYTES)), written.extend, hashlib.sha256())
    assert len(written) == 2 * BLOCK_BYTES
    assert not _hashers()


@pytest.mark.parametrize(
    ("size", "pipelined"), [(0, False), (PIPELINE_BYTES - 1, False), (PIPELINE_BYTES, True)]
)
def test_copy_takes_the_helper_thread_from_its_size_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int, pipelined: bool
) -> None:
    calls: list[int] = []

    def counted(*args: Any) -> int:
        calls.append(1)
        return copy_hashed(*args)

    monkeypatch.setattr(hashcopy, "copy_hashed", counted)
    content = os.urandom(size)
    source = tmp_path / "best.pt"
    source.write_bytes(content)
    written = bytearray()
    digest = hashlib.sha256()
    with source.open("rb") as src:
        assert hashcopy.copy(src, written.extend, digest) == size
    assert bytes(written) == content
    assert digest.hexdigest() == hashlib.sha256(content).hexdigest()
    assert calls == ([1] if pipelined else [])
