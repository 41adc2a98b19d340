"""A producer process for the producer-side fault tests (run as a script, not imported by pytest).

Each scenario drives the public ``Run`` API through one fault of the producer's own disk or
process, and prints its outcome as the last line of its output: ``result {json}`` with the run
id, what ``close()`` returned and the client's counters. The spool directory and the endpoint
come from the environment (``CLEARML_RELAY_SPOOL_DIR``, ``CLEARML_RELAY_ENDPOINT``), so the
test can put the spool on a small filesystem of the process's own.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from e2e import fill_up
from waiting import wait_for

from producer import Run


def stats(run: Run) -> dict[str, int]:
    assert run.client is not None
    return run.client.stats()


def result(run: Run, delivered: bool, **extra: object) -> None:
    print(
        "result " + json.dumps({"run": run.id, "delivered": delivered, "stats": stats(run), **extra}),
        flush=True,
    )


def scalars(run: Run, first: int, count: int) -> None:
    for i in range(first, first + count):
        run.scalar("train", "loss", float(i), i)


def reuse(args: argparse.Namespace) -> None:
    """Log ``--events`` scalars under ``--run-id`` and close."""
    run = Run(project="faults", name=args.name, run_id=args.run_id)
    scalars(run, args.first, args.events)
    if args.exit_without_close:
        wait_for(lambda: stats(run).get("events_acked", 0) >= args.events + 1, 60.0, "the events to be acked")
        result(run, False)
        os._exit(0)  # a crashed trainer: the run stays open, its outbox stays in the spool
    result(run, run.close())


def full_then_free(args: argparse.Namespace) -> None:
    """100 scalars; the spool fills up; 100 scalars and a 200 kB text; room again; 100 scalars."""
    spool = Path(os.environ["CLEARML_RELAY_SPOOL_DIR"])
    run = Run(project="faults", name=args.name)
    scalars(run, 0, 100)
    if not run.flush(30):
        raise SystemExit("the first 100 events were not delivered")
    ballast = fill_up(spool)
    scalars(run, 100, 100)
    run.text("x" * 200_000)
    wait_for(
        lambda: stats(run).get("events_handled", 0) >= 202,
        60.0,
        "the writer to handle the events on a full disk",
    )
    ballast.unlink()
    scalars(run, 201, 100)
    result(run, run.close())


def model_without_room(args: argparse.Namespace) -> None:
    """A model handed over while the spool has no room for it; room comes back (or not)."""
    spool = Path(os.environ["CLEARML_RELAY_SPOOL_DIR"])
    if args.folder:  # a checkpoint folder: packed into a zip as it is copied
        model = Path(args.workdir) / "checkpoint-1"
        model.mkdir()
        (model / "weights.bin").write_bytes(os.urandom(args.model_bytes))
        (model / "config.json").write_text('{"layers": 2}')
    else:
        model = Path(args.workdir) / "best.pt"
        model.write_bytes(os.urandom(args.model_bytes))
    run = Run(project="faults", name=args.name, flush_timeout=args.flush_timeout)
    scalars(run, 0, 10)
    if not run.flush(30):
        raise SystemExit("the first events were not delivered")
    ballast = fill_up(spool)
    os.truncate(ballast, ballast.stat().st_size - 64 * 1024)  # room for events, not for the model
    run.model(model, name=model.name)
    scalars(run, 10, 10)
    wait_for(lambda: stats(run).get("waiting_for_room", 0) >= 1, 60.0, "the model to wait for room")
    wait_for(
        lambda: stats(run).get("events_handled", 0) >= 21, 60.0, "the scalars after the model to be written"
    )
    if args.free:
        ballast.unlink()
    result(run, run.close())


def sigterm(args: argparse.Namespace) -> None:
    """Log scalars until a SIGTERM arrives; ``--user-handler`` installs one first (chained)."""
    if args.user_handler:

        def handler(signum: int, frame: object) -> None:
            print(f"user handler got {signal.Signals(signum).name}", flush=True)
            sys.exit(3)

        signal.signal(signal.SIGTERM, handler)
    run = Run(project="faults", name=args.name)
    scalars(run, 0, 50)
    if not run.flush(30):
        raise SystemExit("the first events were not delivered")
    print(f"ready {run.id}", flush=True)
    i = 50
    while True:  # a training loop: SIGTERM ends it
        run.scalar("train", "loss", float(i), i)
        i += 1
        time.sleep(0.01)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("scenario", choices=["reuse", "full-then-free", "model-without-room", "sigterm"])
    ap.add_argument("--name", default="faults")
    ap.add_argument("--run-id")
    ap.add_argument("--events", type=int, default=20)
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--exit-without-close", action="store_true")
    ap.add_argument("--workdir", default=".")
    ap.add_argument("--model-bytes", type=int, default=2 * 1024 * 1024)
    ap.add_argument("--flush-timeout", type=float, default=None)
    ap.add_argument("--free", action="store_true")
    ap.add_argument("--folder", action="store_true", help="model-without-room: a checkpoint folder")
    ap.add_argument("--user-handler", action="store_true")
    args = ap.parse_args()
    {
        "reuse": reuse,
        "full-then-free": full_then_free,
        "model-without-room": model_without_room,
        "sigterm": sigterm,
    }[args.scenario](args)


if __name__ == "__main__":
    main()
