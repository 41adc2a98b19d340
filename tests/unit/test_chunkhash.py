"""The collector's running sha256 per received file, hashed on one helper thread."""

from __future__ import annotations

import hashlib
import threading
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.pipeline.chunkhash import THREAD_NAME, HashFailedError, Hashing

DEADLINE = 10.0


def _helpers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD_NAME]


@settings(max_examples=60, deadline=None)
@given(
    files=st.lists(st.lists(st.binary(max_size=300), max_size=12), min_size=1, max_size=4),
    inline=st.sampled_from([0, 64, 1 << 20]),
)
def test_the_digest_is_of_every_chunk_in_order_for_any_mix_of_files_and_sizes(
    files: list[list[bytes]], inline: int
) -> None:
    """Chunks of several files interleaved, some queued and some inline: each digest is exact."""
    hashing = Hashing(queue_chunks=2, inline_bytes=inline)
    try:
        running = [hashing.running() for _ in files]
        for step in range(max(len(chunks) for chunks in files)):
            for chunks, hasher in zip(files, running, strict=True):
                if step < len(chunks):
                    hasher.update(chunks[step])
        for chunks, hasher in zip(files, running, strict=True):
            assert hasher.hexdigest() == hashlib.sha256(b"".join(chunks)).hexdigest()
    finally:
        hashing.close()


def test_a_resumed_hash_goes_on_from_what_was_read_back() -> None:
    hashing = Hashing(inline_bytes=1)
    prefix = hashlib.sha256(b"held before a restart ")
    running = hashing.running(prefix)
    running.update(b"and received after")
    assert running.hexdigest() == hashlib.sha256(b"held before a restart and received after").hexdigest()
    hashing.close()


class _GatedHasher:
    """A sha256 whose updates wait until the test opens the gate (to hold the helper thread)."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.started = threading.Event()
        self._sha = hashlib.sha256()

    def update(self, data: Any) -> None:
        self.started.set()
        assert self.gate.wait(DEADLINE)
        self._sha.update(data)

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


def test_the_queue_is_bounded_so_a_fast_sender_waits_instead_of_growing_memory() -> None:
    hashing = Hashing(queue_chunks=2, inline_bytes=1)
    gated = _GatedHasher()
    running = hashing.running(gated)
    running.update(b"a")  # taken by the helper thread, which then waits at the gate
    assert gated.started.wait(DEADLINE)
    running.update(b"b")
    running.update(b"c")  # the queue holds two
    blocked = threading.Thread(target=running.update, args=(b"d",), daemon=True)
    blocked.start()
    blocked.join(0.2)
    assert blocked.is_alive(), "a third chunk was queued past the bound"
    gated.gate.set()
    blocked.join(DEADLINE)
    assert not blocked.is_alive()
    assert running.hexdigest() == hashlib.sha256(b"abcd").hexdigest()
    hashing.close()


def test_hexdigest_waits_for_the_chunks_still_queued() -> None:
    hashing = Hashing(inline_bytes=1)
    gated = _GatedHasher()
    running = hashing.running(gated)
    running.update(b"queued")
    assert gated.started.wait(DEADLINE)
    result: list[str] = []
    waiter = threading.Thread(target=lambda: result.append(running.hexdigest()), daemon=True)
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive(), "the digest came before its chunk was hashed"
    assert not result
    gated.gate.set()
    waiter.join(DEADLINE)
    assert result == [hashlib.sha256(b"queued").hexdigest()]
    hashing.close()


class _BrokenHasher:
    def update(self, data: Any) -> None:
        raise MemoryError("no memory for this chunk")

    def hexdigest(self) -> str:
        raise AssertionError("the digest of a failed hash must not be asked for")


def test_a_chunk_the_helper_cannot_hash_fails_that_file_only() -> None:
    hashing = Hashing(inline_bytes=1)
    broken = hashing.running(_BrokenHasher())
    broken.update(b"x")
    with pytest.raises(HashFailedError, match="no memory for this chunk"):
        broken.hexdigest()
    healthy = hashing.running()
    healthy.update(b"y")
    assert healthy.hexdigest() == hashlib.sha256(b"y").hexdigest(), "the helper thread died with the failure"
    hashing.close()


def test_the_helper_starts_with_the_first_queued_chunk_and_ends_with_close() -> None:
    before = len(_helpers())
    hashing = Hashing(inline_bytes=100)
    running = hashing.running()
    running.update(b"small")  # inline: no thread for small files
    assert len(_helpers()) == before
    running.update(b"x" * 100)
    assert len(_helpers()) == before + 1
    hashing.close()  # waits for the helper thread to end
    assert len(_helpers()) == before, "the helper thread outlived close()"
    running.update(b"y" * 100)  # after close: hashed inline
    assert running.hexdigest() == hashlib.sha256(b"small" + b"x" * 100 + b"y" * 100).hexdigest()
    assert len(_helpers()) == before
