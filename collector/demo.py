"""``clearml-relay demo``: a collector and a separate training process that logs through it.

The demo owns nothing but its presentation: it starts a :class:`~collector.server.Collector`
(JSONL record backend) on a free loopback port, runs a training-like loop in a child process that
logs through the public :class:`producer.Run` API, waits until the collector has applied every
event, and prints what landed and how long the logging calls took against the training time.
Everything stays on this machine.
"""

from __future__ import annotations

import argparse
import collections
import json
import multiprocessing
import os
import struct
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

from collector.backend import JsonlBackend
from collector.config import CollectorConfig
from collector.server import Collector


def _png(width: int, height: int, seed: int) -> bytes:
    """A small RGB gradient PNG (stdlib only: the producer side imports no imaging library)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(
        b"\x00"
        + b"".join(bytes(((x * 4 + seed * 40) % 256, (y * 4) % 256, (x + y) % 256)) for x in range(width))
        for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def _train(endpoint: str, workdir: str, epochs: int) -> None:
    """The training process: only the producer is imported here."""
    from producer import Run  # noqa: PLC0415  (the child imports the light side only)

    work = Path(workdir)
    os.environ["CLEARML_RELAY_SPOOL_DIR"] = str(work / "spool")
    hook_ns = 0
    calls = 0

    def timed(fn: Any, *args: Any, **kwargs: Any) -> None:
        nonlocal hook_ns, calls
        t0 = time.perf_counter_ns()
        fn(*args, **kwargs)
        hook_ns += time.perf_counter_ns() - t0
        calls += 1

    started = time.perf_counter()
    run = Run(project="clearml-relay demo", name="generic training loop", tags=["demo"], endpoint=endpoint)
    timed(run.hyperparams, "General", {"epochs": epochs, "lr0": 0.01, "batch": 8, "model": "tiny"})
    loss = 2.0
    for epoch in range(epochs):
        # Stand-in for an epoch of compute (a training loop would do its forward/backward here).
        acc = 0.0
        for i in range(3_000_000):
            acc += (i % 7) * 1e-6
        loss = loss * 0.8 + acc * 1e-6
        for series, value in (("box_loss", loss), ("cls_loss", loss / 2), ("dfl_loss", loss / 3)):
            timed(run.scalar, "train", series, value, epoch)
        timed(run.scalar, "lr", "pg0", 0.01 * (1 - epoch / epochs), epoch)
        timed(run.scalar, "metrics", "mAP50-95(B)", 1 - loss / 2, epoch)
        image = work / f"train_batch{epoch}.png"
        image.write_bytes(_png(96, 64, epoch))
        timed(run.image, "Mosaic", "train_batch", epoch, image)
        timed(run.text, f"epoch {epoch + 1}/{epochs}: loss {loss:.4f}\n")
    plot = work / "results.png"
    plot.write_bytes(_png(160, 120, 99))
    timed(run.plot, "results", "plot image", 0, plot)
    timed(run.single_value, "mAP50-95(B)", 1 - loss / 2)
    weights = work / "best.pt"
    weights.write_bytes(os.urandom(3 * 1024 * 1024))
    timed(run.model, weights, name="best.pt")
    train_seconds = time.perf_counter() - started
    delivered = run.close()
    (work / "training.json").write_text(
        json.dumps(
            {
                "run": run.id,
                "calls": calls,
                "hook_seconds": hook_ns / 1e9,
                "train_seconds": train_seconds,
                "delivered": delivered,
            }
        )
    )


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the exit status (0 when everything landed)."""
    parser = argparse.ArgumentParser(prog="clearml-relay demo", description=__doc__)
    parser.add_argument(
        "--workdir", type=Path, help="keep everything here (default: a new temporary directory)"
    )
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="clearml-relay-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    config = CollectorConfig.from_env(bind="tcp://127.0.0.1:0", data_dir=work / "collector", backend="jsonl")
    with Collector(config) as collector:
        endpoint = collector.bound_endpoint
        print(f"collector  listening on {endpoint}, data in {config.data_dir}")
        child = multiprocessing.get_context("spawn").Process(
            target=_train, args=(endpoint, str(work), args.epochs)
        )
        child.start()
        child.join(timeout=300)
        if child.exitcode != 0:
            print(f"training process failed (exit code {child.exitcode})", file=sys.stderr)
            return 1
        training = json.loads((work / "training.json").read_text())
        run = training["run"]
        deadline = time.monotonic() + 60
        info = None
        while time.monotonic() < deadline:
            info = next((r for r in collector.status().runs if r.run == run), None)
            if info is not None and info.state != "open" and info.applied >= info.journaled:
                break
            time.sleep(0.05)
        backend = collector.backend
        records = backend.records(run) if isinstance(backend, JsonlBackend) else []
    kinds = collections.Counter(r["event"]["t"] for r in records)
    files = [Path(r["file"]) for r in records if r["file"]]
    hook_ms, train_s = training["hook_seconds"] * 1e3, training["train_seconds"]
    print(
        f"training   {args.epochs} epochs in {train_s:.2f} s; {training['calls']} logging calls took "
        f"{hook_ms:.2f} ms in total ({hook_ms / 1e3 / train_s:.3%} of the training time)"
    )
    print(f"run        {run}: {info.state if info else 'unknown'}, {len(records)} events applied")
    print("landed     " + ", ".join(f"{kind} {n}" for kind, n in sorted(kinds.items())))
    print(
        f"files      {len(files)} files, {sum(f.stat().st_size for f in files) / 1e6:.1f} MB, sha256-verified"
    )
    print(f"records    {backend.path(run) if isinstance(backend, JsonlBackend) else '-'}")
    ok = (
        bool(training["delivered"]) and info is not None and info.state == "completed" and kinds["close"] == 1
    )
    print("result     " + ("everything landed" if ok else "INCOMPLETE: see the collector log above"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
