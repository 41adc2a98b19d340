"""The collector's heap keeps memory freed after a message for the next one."""

from __future__ import annotations

import subprocess
import sys

_ROUNDS = """
import resource, sys
from collector.service import heap

kept = heap.keep_freed_memory() if sys.argv[1] == "keep" else None


def rounds(n):
    # What the ingest thread sees: a batch of 1 MiB chunk buffers, received, then all freed.
    for _ in range(n):
        buffers = [bytearray(1 << 20) for _ in range(4)]
        del buffers


rounds(5)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
rounds(100)
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> tuple[str, int]:
    result = subprocess.run(
        [sys.executable, "-c", _ROUNDS, mode], capture_output=True, text=True, timeout=60, check=True
    )
    kept, faults = result.stdout.split()
    return kept, int(faults)


def test_chunk_buffers_reuse_their_pages_instead_of_faulting_them_in_again() -> None:
    kept, faults = _faults("keep")
    _, default = _faults("default")
    pages = 100 * 4 * (1 << 20) // 4096
    assert kept == "True", "mallopt was not applied (this machine's C library is glibc)"
    assert default > pages // 2, f"malloc's defaults fault only {default} pages: the test shows nothing"
    assert faults < pages // 100, f"{faults} page faults for {pages} pages of reused buffers"
