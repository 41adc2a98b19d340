"""Logger benchmark: what each ``run.logger`` call costs the caller's thread, against ``clearml.Logger``.

Not part of the test suite (it reports, it does not assert). ``python tests/benchmarks/bench_logger.py
[--rounds N] [--calls N] [--figures render|pickle] [--report FILE]``. Offline, in alternating
blocks (a fresh process each, so that neither side's background threads slow the other): a
``producer.Run`` logging through a collector process (ClearML backend, offline), then a
``clearml.Task`` in ClearML offline mode with its default configuration. Each call is timed on
the calling thread (``perf_counter_ns``); the ratio is ClearML's median over ours. The
collector's side is timed too: the seconds from the first call of a kind to the collector
having applied all of that kind's events (its status), divided by the events.

Payloads: a 1080p RGB uint8 image (``report_image(image=)``), a 2x2-subplot matplotlib figure
(``report_matplotlib_figure``, drawn by ClearML at 300 dpi; ours pickles it), a 1,000-row
DataFrame (``report_table``), a 10,000-point scatter (``report_scatter2d``) and a plotly dict of
10,000 points (``report_plotly``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "support")]

from e2e import completed, free_port, start_collector, status, stop, wait_ready  # noqa: E402
from waiting import wait_for  # noqa: E402

Call = Callable[[Any, int], None]


def payloads() -> dict[str, Call]:
    """Each benchmarked call, as ``call(logger, iteration)`` on any clearml.Logger-like object."""
    import matplotlib

    matplotlib.use("Agg")
    import numpy as np
    import pandas as pd
    from matplotlib.figure import Figure

    rng = np.random.default_rng(7)
    image = rng.integers(0, 256, size=(1080, 1920, 3), dtype=np.uint8)
    figure = Figure(figsize=(6.4, 4.8))
    for i, ax in enumerate(figure.subplots(2, 2).flat):
        ax.plot(rng.random(200).cumsum(), label=f"series {i}")
        ax.legend()
    frame = pd.DataFrame(
        {
            "name": [f"class {i}" for i in range(1000)],
            "ap": rng.random(1000),
            "count": rng.integers(0, 99, 1000),
        }
    )
    points = rng.random((10_000, 2))
    plotly = {
        "data": [
            {"type": "scatter", "x": points[:, 0].tolist(), "y": points[:, 1].tolist(), "mode": "markers"}
        ],
        "layout": {"title": "points"},
    }
    return {
        "report_image 1080p": lambda lg, it: lg.report_image("bench", "image", iteration=it, image=image),
        "report_matplotlib_figure 2x2": lambda lg, it: lg.report_matplotlib_figure(
            "bench", "figure", figure, iteration=it
        ),
        "report_table 1000 rows": lambda lg, it: lg.report_table(
            "bench", "table", iteration=it, table_plot=frame
        ),
        "report_scatter2d 10k": lambda lg, it: lg.report_scatter2d(
            "bench", "scatter", points, iteration=it, mode="markers"
        ),
        "report_plotly 10k": lambda lg, it: lg.report_plotly("bench", "plotly", plotly, iteration=it),
    }


def _timed(call: Call, logger: Any, iteration: int) -> float:
    started = time.perf_counter_ns()
    call(logger, iteration)
    return (time.perf_counter_ns() - started) / 1e6


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3, help="blocks per side, alternating relay/clearml")
    ap.add_argument("--calls", type=int, default=10, help="calls of each kind per block")
    ap.add_argument("--figures", choices=["render", "pickle"], default="render")
    ap.add_argument("--report", type=Path)
    ap.add_argument("--side", choices=["relay", "clearml"], help=argparse.SUPPRESS)
    ap.add_argument("--endpoint", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        return _side(args)
    work = Path(tempfile.mkdtemp(prefix="bench-logger-"))
    os.environ.update(
        CLEARML_OFFLINE_MODE="1",
        CLEARML_CACHE_DIR=str(work / "clearml-cache"),
        HOME=str(work / "home"),
        MPLBACKEND="Agg",
        CLEARML_RELAY_SPOOL_DIR=str(work / "spool"),
        CLEARML_RELAY_FIGURES=args.figures,
        PYTHONWARNINGS="ignore",
    )
    # ClearML's repository detection runs in a thread that, in a busy process, can outlive
    # task.close()'s 300 s wait: detect synchronously at Task.init (not timed here) instead.
    conf = work / "clearml.conf"
    conf.write_text("sdk { development { vcs_repo_detect_async: false } }\n")
    os.environ["CLEARML_CONFIG_FILE"] = str(conf)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    extra = ["--allow-pickled-figures"] if args.figures == "pickle" else []
    collector = start_collector(
        endpoint, work / "collector", work / "collector.log", "--backend", "clearml", "--offline", *extra
    )
    results: dict[str, list[dict[str, Any]]] = {"relay": [], "clearml": []}
    try:
        wait_ready(endpoint, collector)
        for block in range(args.rounds):
            for side in ("relay", "clearml"):
                out = work / f"{side}-{block}.json"
                command = [
                    sys.executable, __file__, "--side", side, "--endpoint", endpoint, "--out", str(out),
                    "--calls", str(args.calls),
                ]  # fmt: skip
                subprocess.run(command, check=True, timeout=1800, stdout=subprocess.DEVNULL)
                results[side].append(json.loads(out.read_text()))
    finally:
        stop(collector, timeout=120)
    text = _report(args, results)
    print(text)
    if args.report:
        args.report.write_text(text)
    return 0


def _side(args: argparse.Namespace) -> int:
    """(child) One block: every kind of call ``--calls`` times on one side; timings to ``--out``."""
    calls = payloads()
    times: dict[str, list[float]] = {name: [] for name in calls}
    applied: dict[str, float] = {}
    if args.side == "clearml":
        from clearml import Task

        task = Task.init(
            project_name="bench", task_name="clearml.Logger", auto_connect_frameworks=False,
            auto_resource_monitoring=False, auto_connect_streams=False, auto_connect_arg_parser=False,
        )  # fmt: skip
        logger: Any = task.get_logger()
        for name, call in calls.items():
            call(logger, 0)  # warm (imports, first allocations)
            times[name] = [_timed(call, logger, it) for it in range(1, args.calls + 1)]
            logger.flush(wait=True)
        task.close()
    else:
        import producer

        run = producer.Run("bench", "run.logger", endpoint=args.endpoint)
        for name, call in calls.items():
            call(run.logger, 0)
            assert run.flush(300)
            before = _applied(args.endpoint, run.id)
            started = time.perf_counter()
            times[name] = [_timed(call, run.logger, it) for it in range(1, args.calls + 1)]
            assert run.flush(600)
            done = before + args.calls
            wait_for(lambda d=done: _applied(args.endpoint, run.id) >= d, 600, f"{name} applied")
            applied[name] = (time.perf_counter() - started) / args.calls
        run.close()
        wait_for(lambda: completed(args.endpoint, run.id), 600, "the run to be applied")
    args.out.write_text(json.dumps({"times": times, "applied": applied}))
    return 0


def _report(args: argparse.Namespace, results: dict[str, list[dict[str, Any]]]) -> str:
    lines = [
        f"`run.logger` (CLEARML_RELAY_FIGURES={args.figures}) vs `clearml.Logger` (defaults), offline: "
        f"{args.rounds} alternating blocks per side (a fresh process each), {args.calls} calls of each "
        "kind per block; milliseconds on the caller's thread. Last column: seconds per event from the "
        "first call to the collector having applied them all (ClearML backend, offline).",
        "",
        "| call | relay p50 | relay p99 | clearml p50 | clearml p99 | clearml/relay (p50) "
        "| to applied, s/event |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in results["relay"][0]["times"]:
        ours = [t for block in results["relay"] for t in block["times"][name]]
        theirs = [t for block in results["clearml"] for t in block["times"][name]]
        to_applied = statistics.median(block["applied"][name] for block in results["relay"])
        ratio = statistics.median(theirs) / max(statistics.median(ours), 1e-9)
        lines.append(
            f"| {name} | {_pct(ours, 0.5):.2f} | {_pct(ours, 0.99):.2f} | {_pct(theirs, 0.5):.2f} "
            f"| {_pct(theirs, 0.99):.2f} | {ratio:.1f}x | {to_applied:.3f} |"
        )
    lines += ["", f"machine: {os.cpu_count()} CPUs, python {sys.version.split()[0]}"]
    return "\n".join(lines) + "\n"


def _applied(endpoint: str, run: str) -> int:
    reply = status(endpoint)
    info = next((r for r in reply.runs if r.run == run), None) if reply else None
    return info.applied if info is not None else 0


if __name__ == "__main__":
    sys.exit(main())
