"""A training-like producer process for end-to-end tests (run as a script, not imported by pytest).

Emits ``--events`` events through the public ``Run`` API: scalars, and every ``--file-every``-th
event a debug image with unique content (plus a multi-chunk model at the end), then closes.
Writes a manifest (run id, the sha256 of every file by iteration) so the test can check what
landed, byte for byte.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

from producer import Run


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True)
    ap.add_argument("--events", type=int, required=True)
    ap.add_argument("--file-every", type=int, default=0)
    ap.add_argument("--model-bytes", type=int, default=0)
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--flush-timeout", type=float, default=None)
    ap.add_argument("--rate", type=float, default=0.0, help="events per second (0: as fast as possible)")
    ap.add_argument("--exit-without-close", action="store_true")
    ap.add_argument("--run-id", help="the run's id (default: a new one)")
    ap.add_argument(
        "--progress",
        action="store_true",
        help="print the run id, then 'handed I T' after each event (T: time.time() as the call returned)",
    )
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    files: dict[int, str] = {}
    run = Run(
        project="e2e", name=args.name, tags=["e2e"], flush_timeout=args.flush_timeout, run_id=args.run_id
    )
    manifest = args.workdir / f"{args.name}.json"
    if args.progress:
        print(f"run {run.id}", flush=True)
    slowest = 0.0
    pace_every = max(1, int(args.rate // 20))  # about 20 pauses a second
    started = time.monotonic()
    for i in range(args.events):
        if args.rate and i % pace_every == 0:
            # Pace like a training loop, so that faults land in the middle of the run.
            time.sleep(max(0.0, started + i / args.rate - time.monotonic()))
        if args.file_every and i % args.file_every == 0:
            content = hashlib.sha256(f"{args.name}-{i}".encode()).digest() * (64 + i % 512)
            path = args.workdir / f"{args.name}-img-{i}.png"
            path.write_bytes(content)
            files[i] = hashlib.sha256(content).hexdigest()
            called = time.perf_counter()
            run.image("Mosaic", "train_batch", i, path)
        else:
            called = time.perf_counter()
            run.scalar("train", "loss", float(i), i)
        slowest = max(slowest, time.perf_counter() - called)
        if args.progress:
            print(f"handed {i} {time.time():.6f}", flush=True)
    if args.model_bytes:
        content = os.urandom(args.model_bytes)
        path = args.workdir / f"{args.name}-best.pt"
        path.write_bytes(content)
        files[-1] = hashlib.sha256(content).hexdigest()
        run.model(path, name="best.pt")
    manifest.write_text(json.dumps({"run": run.id, "files": files}))
    print(f"run {run.id} handed over {args.events} events, slowest call {slowest:.6f} s", flush=True)
    if args.exit_without_close:
        sys.stdout.flush()
        os._exit(0)  # like a crashed trainer: no close, no flush
    print(f"closing at {time.time():.6f}", flush=True)
    started = time.monotonic()
    delivered = run.close()
    print(f"close returned delivered={delivered} after {time.monotonic() - started:.2f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
