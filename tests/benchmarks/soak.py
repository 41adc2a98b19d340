"""Soak: many concurrent producers for a long while, the collector killed at random; nothing lost.

Not part of the test suite (it runs for minutes by design). ``make soak`` runs the issue's
setting: 100 producer processes for 10 minutes, each a paced run with debug images every 50
events and a model at the end, while the collector is ``kill -9``-ed at random (exponential
intervals, 30 s mean) and restarted. It samples once a second:

- **delivery lag**: events the producers have handed over by now (their pace) minus events the
  collector has journaled (acknowledged);
- **apply backlog**: journaled minus applied (what the backend still has to do);
- **memory**: resident set of the collector and the sum over the producers.

At the end every run is checked exactly as the fault suite does (every (run, seq) applied once,
in order, files byte for byte) and a report is printed (and written with ``--report``). The exit
status is 0 only if every check passed. ``--producers``, ``--duration``, ``--rate`` and
``--kill-every`` scale it down for a quick look: ``python tests/benchmarks/soak.py --producers 10
--duration 60``.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

sys.path[:0] = [
    str(Path(__file__).resolve().parents[2]),
    str(Path(__file__).resolve().parents[1] / "support"),
]

from e2e import (  # noqa: E402
    applied,
    check_exactly_once,
    free_port,
    produce,
    start_collector,
    status,
    stop,
    wait_for,
    wait_ready,
)


@dataclass
class Sample:
    t: float
    expected: int
    journaled: int
    applied: int
    collector_mib: float
    producers_mib: float
    kills: int


def rss_mib(procs: list[subprocess.Popen[bytes]]) -> float:
    total = 0
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += psutil.Process(proc.pid).memory_info().rss
    return total / 2**20


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--producers", type=int, default=100)
    ap.add_argument("--duration", type=float, default=600.0, help="seconds each producer runs")
    ap.add_argument("--rate", type=float, default=20.0, help="events per second per producer")
    ap.add_argument("--file-every", type=int, default=50)
    ap.add_argument("--model-bytes", type=int, default=1_000_003)
    ap.add_argument("--kill-every", type=float, default=30.0, help="mean seconds between collector kills")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--report", type=Path, help="also write the report (Markdown) here")
    args = ap.parse_args()

    rng = random.Random(args.seed)
    events = int(args.rate * args.duration)
    tmp = Path(tempfile.mkdtemp(prefix="clearml-relay-soak-"))
    data, spool, work, log = tmp / "data", tmp / "spool", tmp / "work", tmp / "collector.log"
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    print(f"soak: {args.producers} producers x {events} events over {args.duration:.0f} s; files under {tmp}")

    collector = start_collector(endpoint, data, log)
    wait_ready(endpoint, collector, timeout=60)
    names = [f"soak{i:03d}" for i in range(args.producers)]
    options = (
        "--file-every", str(args.file_every), "--model-bytes", str(args.model_bytes),
        "--rate", str(args.rate), "--flush-timeout", "600",
    )  # fmt: skip
    producers = [produce(endpoint, spool, work, name, events, *options) for name in names]
    started = time.monotonic()
    samples: list[Sample] = []
    kills = 0
    next_kill = started + rng.expovariate(1 / args.kill_every)
    last = (0, 0)
    try:
        while any(p.poll() is None for p in producers):
            now = time.monotonic()
            if now >= next_kill and now - started < args.duration:
                collector.send_signal(signal.SIGKILL)
                collector.wait(timeout=30)
                kills += 1
                collector = start_collector(endpoint, data, log)
                wait_ready(endpoint, collector, timeout=120)
                next_kill = time.monotonic() + rng.expovariate(1 / args.kill_every)
            reply = status(endpoint, timeout=5)
            if reply is not None:
                last = (sum(r.journaled for r in reply.runs), sum(r.applied for r in reply.runs))
            elapsed = time.monotonic() - started
            samples.append(
                Sample(
                    elapsed,
                    min(events, int(elapsed * args.rate)) * args.producers,
                    *last,
                    rss_mib([collector]),
                    rss_mib(producers),
                    kills,
                )
            )
            time.sleep(max(0.0, started + len(samples) - time.monotonic()))  # one sample a second
        outputs = [p.communicate()[0].decode() for p in producers]
        total = args.producers * (events + 3)
        wait_for(lambda: sum(len(v) for v in applied(data).values()) >= total, 600, "all to be applied")
    finally:
        stop(collector, timeout=60)
        for proc in producers:
            if proc.poll() is None:
                proc.kill()

    failures = []
    for name, out in zip(names, outputs, strict=True):
        if "delivered=True" not in out:
            failures.append(f"{name}: not delivered: {out[-500:]}")
            continue
        try:
            check_exactly_once(data, work / f"{name}.json", events, model=args.model_bytes > 0)
        except AssertionError as exc:
            failures.append(f"{name}: {exc}")
    report = render(args, samples, kills, time.monotonic() - started, failures)
    print(report)
    if args.report:
        args.report.write_text(report)
    return 1 if failures else 0


def render(
    args: argparse.Namespace, samples: list[Sample], kills: int, wall: float, failures: list[str]
) -> str:
    lines = [
        f"# Soak: {args.producers} producers, {args.duration:.0f} s at {args.rate:g} events/s each",
        "",
        f"- collector kills: {kills} (mean interval {args.kill_every:g} s); wall time {wall:.0f} s",
        f"- exactly once: {'PASS' if not failures else 'FAIL'} ({len(failures)} runs failed the check)",
        f"- max delivery lag: {max((s.expected - s.journaled for s in samples), default=0)} events; "
        f"max apply backlog: {max((s.journaled - s.applied for s in samples), default=0)} events",
        f"- peak collector RSS: {max((s.collector_mib for s in samples), default=0):.0f} MiB; "
        f"peak producers RSS (sum): {max((s.producers_mib for s in samples), default=0):.0f} MiB",
        "",
        "| t (s) | handed | journaled | applied | delivery lag | apply backlog | collector MiB "
        "| producers MiB | kills |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    step = max(1, len(samples) // 40)
    for s in samples[::step]:
        lines.append(
            f"| {s.t:.0f} | {s.expected} | {s.journaled} | {s.applied} | {max(0, s.expected - s.journaled)} "
            f"| {s.journaled - s.applied} | {s.collector_mib:.0f} | {s.producers_mib:.0f} | {s.kills} |"
        )
    lines += ["", *(f"- {f}" for f in failures[:20])]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
