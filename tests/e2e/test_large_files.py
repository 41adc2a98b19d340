"""A large file between real processes: delivered intact, neither side faulting in fresh memory per chunk.

Each chunk used to cost both processes fresh pages: the sender read it into a new ``bytes``,
the collector copied it out of ZeroMQ's buffer, and malloc gave the memory back to the kernel
after each, so every page of every chunk was faulted in and zeroed again (about 170,000 faults
per GB on each side). The sender now reads every chunk into one buffer (ZeroMQ copies it as it
sends), the collector writes and hashes from ZeroMQ's buffer and keeps freed memory for the next
chunk (:mod:`collector.service.heap`).
"""

from __future__ import annotations

import hashlib
import os
import resource
from pathlib import Path

import pytest
from e2e import free_port, start_collector, stop, wait_ready

from producer import Run

SIZE = 256 * 1024 * 1024
PAGES = SIZE // 4096


def _faults(pid: int) -> int:
    """Minor page faults of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[7])


def test_a_large_file_arrives_intact_without_a_page_fault_per_chunk_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLEARML_RELAY_SPOOL_DIR", str(tmp_path / "spool"))
    model = tmp_path / "model.pt"
    with model.open("wb") as f:
        for _ in range(SIZE >> 20):
            f.write(os.urandom(1 << 20))
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    data = tmp_path / "data"
    collector = start_collector(endpoint, data, tmp_path / "collector.log")
    try:
        wait_ready(endpoint, collector)
        run = Run(project="files", name="large", endpoint=endpoint, flush_timeout=120)
        collector_before = _faults(collector.pid)
        producer_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        run.model(model, name="model.pt")
        assert run.flush(timeout=120), "the file was not acknowledged"
        producer_faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - producer_before
        collector_faults = _faults(collector.pid) - collector_before
        run.close()
    finally:
        stop(collector)
    stored = [p for p in (data / "files").rglob("*") if p.is_file()]
    assert [hashlib.sha256(p.read_bytes()).hexdigest() for p in stored] == [sha]
    # About 40,000-170,000 faults for these 65,536 pages before; under 1,500 now.
    assert collector_faults < PAGES // 16, f"the collector faulted {collector_faults} pages in"
    assert producer_faults < PAGES // 16, f"the producer faulted {producer_faults} pages in"
