"""``compare.py``'s output: the machine and versions, ``BENCHMARKS.md`` and its chart.

Rendering only: every figure comes in from the measuring modules (``compare_training``,
``bench_transport``, ``compare_collector``); nothing here measures.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from bench_transport import FileLatency, Transfer
from compare_collector import Latency, Scaling, Throughput
from compare_training import BY_KEY, Outcome, Summary
from sampling import RATE as SAMPLE_RATE

ROOT: Final = Path(__file__).resolve().parents[2]
PACKAGES: Final = (
    "ultralytics", "torch", "torchvision", "clearml", "wandb", "mlflow", "pyzmq", "msgspec",
    "psutil", "matplotlib", "numpy", "clearml-relay",
)  # fmt: skip
#: The issue's targets.
HOOK_P99_US: Final = 100.0
RUN_OVERHEAD: Final = 0.01
EVENTS_PER_S: Final = 20_000
FILE_MB_S: Final = 500.0
#: Applied events/s with 10 and 100 producers, and the least share of acknowledged ones applied.
APPLIED_PER_S: Final = 20_000
APPLIED_SHARE: Final = 0.5
#: Hook to applied in ClearML, p99, at 1,000 events/s.
LATENCY_P99_MS: Final = 1000.0
FILE_GROWTH_MB: Final = 100.0

# ------------------------------------------------------------------------------ the machine


def machine() -> dict[str, str]:
    """CPU, cores, memory, GPU (from torch, in a child process), OS and Python."""
    import psutil

    cpu = platform.processor() or platform.machine()
    with open("/proc/cpuinfo") as f:  # Linux; the model name is what a reader compares
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    probe = (
        "import json, torch; c = torch.cuda.is_available(); "
        "print(json.dumps(torch.cuda.get_device_name(0) + ', CUDA ' + str(torch.version.cuda) if c else ''))"
    )
    gpu = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=False, timeout=300
    )
    return {
        "CPU": f"{cpu}, {psutil.cpu_count(logical=False)} physical / {os.cpu_count()} logical cores",
        "memory": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "GPU": (json.loads(gpu.stdout or '""') or "none (torch.cuda.is_available() is False)"),
        "OS": platform.platform(),
        "Python": f"{platform.python_implementation()} {platform.python_version()} ({sys.executable})",
    }


def gpu_available() -> bool:
    """Whether the trainings run on ``device=0`` (asked in a child process: torch stays out of here)."""
    probe = "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"
    return subprocess.run([sys.executable, "-c", probe], check=False, timeout=300).returncode == 0


def versions() -> dict[str, str]:
    """Installed versions of the libraries that matter; ``not installed`` where missing."""
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "describe", "--always", "--dirty", "--abbrev=12"],
        capture_output=True,
        text=True,
        check=False,
    )
    out["clearml-relay"] += f" (git {commit.stdout.strip() or 'unknown'})"
    return out


# ------------------------------------------------------------------------------- the report


@dataclass
class Results:
    """Everything one invocation measured, plus how it was run."""

    command: str
    quick: bool
    started: datetime.datetime
    seconds: float
    machine: dict[str, str]
    versions: dict[str, str]
    network: str
    device: str
    epochs: int
    rounds: int
    outcomes: list[Outcome]
    summaries: list[Summary]
    files: list[FileLatency]
    transfer: Transfer | None
    throughput: list[Throughput]
    latency: Latency | None
    scaling: list[Scaling]
    load_note: str
    #: 10 files of a tenth of the large file's size, from 10 runs at once.
    parallel: Transfer | None = None
    #: Every large-file transfer and every 10-file one; ``transfer`` and ``parallel`` are the medians.
    transfers: list[Transfer] = field(default_factory=list)
    parallels: list[Transfer] = field(default_factory=list)
    #: What the disk the files go to sustains on its own (written and fsynced), MB/s.
    disk_mb_s: float | None = None
    notes: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _spread(value: float, span: tuple[float, float], tries: int) -> str:
    """A median with its range when there were several measurements: ``21,000 [18,000-24,000]``."""
    if tries <= 1:
        return f"{value:,.0f}"
    return f"{value:,.0f} [{span[0]:,.0f}-{span[1]:,.0f}]"


def _meets(ok: bool | None) -> str:
    return "n/a" if ok is None else ("meets" if ok else "**misses**")


def _overhead_verdict(ratio: float, ci: tuple[float, float] | None) -> str:
    """Meets when the whole interval is within the target, misses when all of it is above."""
    limit = 1 + RUN_OVERHEAD
    low, high = ci if ci is not None else (ratio, ratio)
    if high <= limit:
        return "meets"
    if low > limit:
        return "**misses**"
    return "undecided: the interval spans the target" if ratio <= limit else "**misses** (median above)"


def _ratio(value: float | None, ci: tuple[float, float] | None) -> str:
    if value is None:
        return "n/a"
    text = f"{value:.3f}"
    return text + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def _num(value: float | None, fmt: str = "{:.2f}") -> str:
    return "n/a" if value is None else fmt.format(value)


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:g} {unit}"
    return f"{n} B"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str = "") -> list[str]:
    align = align or "l" + "r" * (len(header) - 1)
    marks = ["---:" if a == "r" else "---" for a in align]
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(marks) + "|",
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


def _relay_hooks(res: Results) -> tuple[float | None, float | None, str]:
    """The relay's worst per-epoch hook p99 and its worst hook p99 overall, with that hook's name."""
    relay = next((s for s in res.summaries if s.config == "relay"), None)
    if relay is None or not relay.hooks:
        return None, None, ""
    repeated = [h for h in relay.hooks if h.calls_per_run > 1.5]
    worst = max(relay.hooks, key=lambda h: h.p99_us)
    per_epoch = max((h.p99_us for h in repeated), default=None)
    return per_epoch, worst.p99_us, worst.event


def headline(res: Results) -> list[tuple[str, str, str, str]]:
    """(measure, target, measured, meets) for each of the issue's targets."""
    rows: list[tuple[str, str, str, str]] = []
    per_epoch, worst, worst_event = _relay_hooks(res)
    target = f"p99 <= {HOOK_P99_US:.0f} us"
    if per_epoch is not None:
        rows.append(
            (
                "clearml-relay hooks called every epoch, worst p99",
                target,
                f"{per_epoch:.1f} us",
                _meets(per_epoch <= HOOK_P99_US),
            )
        )
    if worst is not None:
        rows.append(
            (
                f"clearml-relay hooks, all (worst: `{worst_event}`), p99",
                target,
                f"{worst:,.1f} us",
                _meets(worst <= HOOK_P99_US),
            )
        )
    relay = next((s for s in res.summaries if s.config == "relay"), None)
    if relay is not None:
        for what, ratio, ci in (
            ("whole run (`model.train()` wall time)", relay.train_ratio, relay.train_ratio_ci),
            ("whole process (start to exit)", relay.process_ratio, relay.process_ratio_ci),
        ):
            if ratio is not None:
                rows.append(
                    (
                        f"{what}, clearml-relay / no logging, median [95% CI]",
                        f"<= {1 + RUN_OVERHEAD:.2f}",
                        _ratio(ratio, ci),
                        _overhead_verdict(ratio, ci),
                    )
                )
    for load in res.throughput:
        goal = load.producers >= 10
        rows.append(
            (
                f"applied in ClearML events/s, {load.producers} producer process(es), {load.mode}",
                f">= {APPLIED_PER_S:,}" if goal else "(no target set)",
                f"{load.applied_per_s:,.0f}",
                _meets(load.applied_per_s >= APPLIED_PER_S) if goal else "-",
            )
        )
        share = load.applied_per_s / load.acked_per_s
        rows.append(
            (
                f"applied / acknowledged, {load.producers} producer process(es), {load.mode}",
                f">= {APPLIED_SHARE}",
                f"{share:.2f}",
                _meets(share >= APPLIED_SHARE),
            )
        )
    for load in res.throughput:
        if load.mode == "offline":
            rows.append(
                (
                    f"acknowledged events/s, {load.producers} concurrent producer process(es)",
                    f">= {EVENTS_PER_S:,}",
                    f"{load.acked_per_s:,.0f}",
                    _meets(load.acked_per_s >= EVENTS_PER_S),
                )
            )
    if res.latency is not None:
        lt = res.latency
        rows.append(
            (
                f"hook to applied in ClearML, p99, at {lt.producers * lt.rate:,.0f} events/s",
                f"< {LATENCY_P99_MS / 1000:g} s",
                f"{lt.applied_p99_ms:,.0f} ms",
                _meets(lt.applied_p99_ms < LATENCY_P99_MS),
            )
        )
    for big, runs in ((res.transfer, res.transfers), (res.parallel, res.parallels)):
        if big is None:
            continue
        growth = max_growth(runs or [big])
        what = (
            f"{_size(big.size)} file"
            if big.files == 1
            else f"{big.files} files of {_size(big.size)}, {big.files} runs at once,"
        )
        rows.append(
            (
                f"{what} delivered" + (f" (median of {len(runs)})" if len(runs) > 1 else ""),
                f">= {FILE_MB_S:.0f} MB/s" if big.files == 1 else "(no target set)",
                f"{big.mb_per_s:,.0f} MB/s",
                _meets(big.mb_per_s >= FILE_MB_S) if big.files == 1 else "-",
            )
        )
        rows.append(
            (
                "memory growth during it, producer / collector" + (" (largest)" if len(runs) > 1 else ""),
                f"< {FILE_GROWTH_MB:.0f} MB each",
                f"{growth[0]:.0f} / {growth[1]:.0f} MB",
                _meets(max(growth) < FILE_GROWTH_MB),
            )
        )
    if res.disk_mb_s is not None:
        rows.append(
            (
                "the disk itself: the large file's size written and fsynced (for reference)",
                "-",
                f"{res.disk_mb_s:,.0f} MB/s",
                "-",
            )
        )
    return rows


def _training_section(res: Results) -> list[str]:
    if not res.outcomes:
        return []
    base = next((s for s in res.summaries if s.config == "none"), None)
    base_train = base.train_s if base is not None else None
    lines = [
        "## 1. The same YOLO training, five ways",
        "",
        f"YOLOv8n (`yolov8n.yaml`, random init) on a generated detection dataset (32 train / 8 val "
        f"images of 96 px), imgsz 64, batch 8, workers 0, seed 0, {res.epochs} epochs, device "
        f"`{res.device}`; each training in a fresh Python process; {res.rounds} rounds, each round "
        "one training per configuration in round-robin order, rotated by one per round. Ratios are "
        "per round (against that round's no-logging run), then the median over rounds, with a 95% "
        "bootstrap interval. *train* = `model.train()` wall time; *process* = from starting the "
        "interpreter to its exit (imports, the logger's own shutdown at exit, e.g. W&B's sync of its "
        "offline run, ClearML's reporting subprocess); *CPU* = user + system seconds of the training "
        "process and the children it waited for.",
        "",
    ]
    rows = []
    for s in res.summaries:
        logger = BY_KEY[s.config]
        share = (
            f" ({s.in_logger_s / base_train:.2%})"
            if s.in_logger_s is not None and base_train and logger.module
            else ""
        )
        rows.append(
            [
                logger.label,
                f"{s.runs - len(s.failed)}/{s.runs}",
                _num(s.train_s),
                _ratio(s.train_ratio, s.train_ratio_ci),
                _num(s.process_s),
                _ratio(s.process_ratio, s.process_ratio_ci),
                _num(s.cpu_s, "{:.1f}"),
                _num(s.cpu_ratio, "{:.3f}"),
                (_num(s.in_logger_s, "{:.3f}") + share) if logger.module else "-",
                _num(s.in_ultralytics_s, "{:.4f}"),
            ]
        )
    lines += _table(
        [
            "configuration",
            "ok runs",
            "train s",
            "train / none [95% CI]",
            "process s",
            "process / none [95% CI]",
            "CPU s",
            "CPU / none",
            "in logger callbacks s per run (% of no-logging train)",
            "in Ultralytics' own callbacks s",
        ],
        rows,
        "lrrrrrrrrr",
    )
    lines += [
        "",
        "**Where the CPU goes** besides the training thread: CPU seconds of the training process "
        "outside its main thread, from its start to the end of `model.train()` (median per run), with "
        "the busiest other threads by name (`(threads that ended)`: threads gone by then, e.g. a "
        "logger's finished writer threads); and, for clearml-relay, its collector process.",
        "",
    ]
    rows = []
    for s in res.summaries:
        busiest = ", ".join(f"{name} {cpu:.2f}" for name, cpu in s.busiest_threads)
        collector = f"{s.collector_cpu_s:.2f}" if s.collector_cpu_s is not None else "-"
        rows.append([BY_KEY[s.config].label, _num(s.off_main_cpu_s), busiest or "-", collector])
    lines += _table(
        [
            "configuration",
            "CPU s outside the main thread",
            "busiest other threads (CPU s)",
            "collector CPU s",
        ],
        rows,
        "lrlr",
    )
    lines += ["", "Configurations:", ""]
    lines += [f"- **{BY_KEY[s.config].label}**: {BY_KEY[s.config].note}." for s in res.summaries]
    failures = [f"- {BY_KEY[s.config].label}, {f}" for s in res.summaries for f in s.failed]
    if failures:
        lines += ["", "**Failed runs** (left out of the medians):", "", *failures]
    lines += [
        "",
        "### Time inside each logger's callbacks, per hook",
        "",
        "The logger's own callbacks only (its Ultralytics integration module, or clearml-relay's "
        "hooks), per invocation of each event, pooled over all rounds; target for clearml-relay: "
        f"p99 <= {HOOK_P99_US:.0f} us. Events a logger does not register are absent.",
        "",
    ]
    rows = []
    for s in res.summaries:
        logger = BY_KEY[s.config]
        for h in s.hooks:
            verdict = _meets(h.p99_us <= HOOK_P99_US) if s.config == "relay" else "(reference)"
            rows.append(
                [
                    logger.label,
                    f"`{h.event}`",
                    f"{h.calls_per_run:g}",
                    f"{h.p50_us:,.1f}",
                    f"{h.p99_us:,.1f}",
                    f"{h.max_us:,.1f}",
                    verdict,
                ]
            )
    lines += _table(
        ["logger", "hook", "calls per run", "p50 us", "p99 us", "max us", "p99 target"], rows, "llrrrrl"
    )
    lines += ["", "### Every run", ""]
    configs = [s.config for s in res.summaries]
    rows = []
    for r in range(res.rounds):
        cells = [str(r + 1)]
        for c in configs:
            o = next((o for o in res.outcomes if o.round == r and o.config == c), None)
            if o is None:
                cells.append("-")
            elif o.error is not None:
                cells.append("failed")
            else:
                cells.append(f"{_num(o.train_s)} / {o.process_s:.2f}")
        rows.append(cells)
    lines += _table(["round", *(f"{BY_KEY[c].label}: train / process s" for c in configs)], rows)
    return lines


def _files_section(res: Results) -> list[str]:
    if not res.files:
        return []
    lines = [
        "## 2. Hook latency against attached file size",
        "",
        "`Run.image` and `Run.model` on the calling thread (what a training loop pays), 1 KB to "
        f"{_size(max((f.size for f in res.files), default=0))}; sparse files, calls back to back "
        "(every copy and transfer competing with the caller, the worst case) and paced one per 20 ms "
        "(like a training loop); collector process with the JSONL record backend on the same cores "
        "(the call's cost does not involve the backend). From `bench_transport.file_call_latency`.",
        "",
    ]
    rows = [
        [
            _size(f.size),
            "paced 20 ms" if f.paced else "back to back",
            str(f.calls),
            f"{f.p50_us:.1f}",
            f"{f.p99_us:.1f}",
            _meets(f.p99_us <= HOOK_P99_US),
        ]
        for f in res.files
    ]
    return lines + _table(
        ["file", "calls", "n", "p50 us", "p99 us", f"p99 <= {HOOK_P99_US:.0f} us"], rows, "llrrrl"
    )


def _collector_section(res: Results) -> list[str]:
    if not (res.throughput or res.latency or res.transfer):
        return []
    lines = [
        "## 3. What the collector sustains",
        "",
        "A fresh collector process per measurement (`python -m collector collector --backend clearml "
        "[--offline]`: every run becomes a ClearML task; *offline*: its session on disk; *online*: sent "
        "to the ClearML server double `tests/support/clearml_server.py`, which runs in the benchmark's "
        f"own process on the same cores) and producer processes on the same cores. {res.load_note}",
        "",
        "**Throughput**: scalars as fast as acknowledgements allow, split evenly over the producers "
        "(bursts, each followed by a flush). *acked/s*: from the start signal to the last "
        "acknowledgement; *applied/s*: until the ClearML backend had closed the last run's task (each "
        "run's close is its last event; the time is the one the backend wrote into the run's state as "
        "the close returned, so it does not include the delay of the status poll that saw it); "
        "*CPU s per 1,000 events*: user + system time over that span of the collector process, of the "
        "producer processes (all of them; they stay alive until the measurement ends) and, online, of "
        "the benchmark's own process, where the server double answers. On 2 cores, 2 CPU seconds per "
        "second are all there is. Each configuration is measured several times, each with fresh "
        "processes (one measurement of 100 producers varies by a quarter between runs of the same code "
        "here): a row is the measurement with the median applied/s, with the range over all of them in "
        "brackets.",
        "",
    ]
    rows = [
        [
            t.mode,
            str(t.producers),
            f"{t.events:,}",
            _spread(t.acked_per_s, t.acked_range, t.tries),
            _meets(t.acked_per_s >= EVENTS_PER_S),
            _spread(t.applied_per_s, t.applied_range, t.tries),
            f"{t.applied_per_s / t.acked_per_s:.2f}",
            f"{t.cpu_s_per_1000:.3f}",
            f"{t.producers_cpu_s_per_1000:.3f}",
            "-" if t.double_cpu_s_per_1000 is None else f"{t.double_cpu_s_per_1000:.3f}",
            f"{t.collector_peak_mb:.0f}",
            f"{t.producers_peak_mb:,.0f}",
        ]
        for t in res.throughput
    ]
    lines += _table(
        [
            "ClearML",
            "producers",
            "events",
            "acked/s",
            f">= {EVENTS_PER_S:,}/s",
            "applied/s",
            "applied / acked",
            "collector CPU s / 1,000 events",
            "producers CPU s / 1,000 events",
            "server double CPU s / 1,000 events",
            "collector peak RSS MiB",
            "producers peak RSS MiB (sum)",
        ],
        rows,
        "lrrrlrrrrrrr",
    )
    lines += _profiles(res)
    if res.latency is not None:
        lt = res.latency
        lines += [
            "",
            f"**End-to-end latency** at a fixed load: {lt.producers} producers x {lt.rate:g} scalars/s for "
            f"{lt.seconds:g} s ({lt.producers * lt.rate:,.0f} events/s, {lt.events:,} scalars timed). From "
            "the producer's call (`event.ts`) to the real ClearML backend's `apply` returning (the event "
            "is in the task's queue), and to the run's next checkpoint returning (written to the "
            "offline session; what survives a crash).",
            "",
        ]
        lines += _table(
            ["hook to", "p50 ms", "p99 ms"],
            [
                ["applied in ClearML", f"{lt.applied_p50_ms:.1f}", f"{lt.applied_p99_ms:.1f}"],
                ["durable in the ClearML session", f"{lt.durable_p50_ms:.1f}", f"{lt.durable_p99_ms:.1f}"],
            ],
        )
    if res.transfer is not None:
        t = res.transfer
        runs = res.transfers or [t]
        growth = max_growth(runs)
        peak = (max(r.peak_mb[0] for r in runs), max(r.peak_mb[1] for r in runs))
        lines += [
            "",
            f"**Large file**: one {_size(t.size)} model file of random bytes (copy into the outbox, sha256, "
            f"chunked transfer, verify, fsync), call to acknowledgement, {_median_of(runs)}: "
            f"{t.seconds:.1f} s, **{t.mb_per_s:,.0f} MB/s** ({_meets(t.mb_per_s >= FILE_MB_S)} >= "
            f"{FILE_MB_S:.0f} MB/s). Peak resident memory, the largest of the runs: producer "
            f"{peak[0]:.0f} MiB (growth {growth[0]:.0f}), collector {peak[1]:.0f} MiB (growth "
            f"{growth[1]:.0f}); target growth < {FILE_GROWTH_MB:.0f} MB: "
            f"{_meets(max(growth) < FILE_GROWTH_MB)}. From `bench_transport.big_file_transfer` "
            "(JSONL backend; applying a model in ClearML offline is a file copy into the session).",
        ]
    if res.parallel is not None:
        t = res.parallel
        runs = res.parallels or [t]
        lines += [
            "",
            f"**{t.files} files of {_size(t.size)} from {t.files} runs at once** (one producer process), "
            f"{_median_of(runs)}: {t.seconds:.1f} s, **{t.mb_per_s:,.0f} MB/s** over all of them; "
            f"memory growth, the largest of the runs: producer {max_growth(runs)[0]:.0f} MB, collector "
            f"{max_growth(runs)[1]:.0f} MB.",
        ]
    if res.disk_mb_s is not None:
        lines += [
            "",
            f"**The disk itself** (the one the outbox and the collector's store share here): "
            f"{res.disk_mb_s:,.0f} MB/s for the large file's size written in 128 KiB blocks through "
            "the page cache and fsynced. On this machine that measures the page cache more than the "
            "disk: a virtual machine whose freed memory goes back to the host pays for every fresh "
            "page, which is why the collector writes received files with `O_DIRECT` "
            "(`collector/pipeline/partwrite.py`).",
        ]
    return lines


def max_growth(runs: list[Transfer]) -> tuple[float, float]:
    """The largest memory growth of the producer and of the collector over ``runs``."""
    return max(r.growth_mb[0] for r in runs), max(r.growth_mb[1] for r in runs)


def _median_of(runs: list[Transfer]) -> str:
    """How a transfer figure was taken: "the median of 3 runs (612, 640, 655 MB/s)", or "one run"."""
    if len(runs) == 1:
        return "one run"
    rates = ", ".join(f"{r.mb_per_s:,.0f}" for r in sorted(runs, key=lambda r: r.mb_per_s))
    return f"the median of {len(runs)} runs ({rates} MB/s)"


def _profiles(res: Results) -> list[str]:
    """The top entries of each sampling profile of the collector (py-spy, GIL held)."""
    lines: list[str] = []
    for t in res.throughput:
        prof = t.profile
        if prof is None:
            continue
        lines += [
            "",
            f"**Where the collector's interpreter time goes**, {prof.what}: `py-spy record --gil` at "
            f"{SAMPLE_RATE} Hz from the start signal to the last event applied ({prof.samples:,} samples "
            "with the interpreter lock held, all threads): the functions on top of the stack (*self*) "
            "and anywhere on it (*inclusive*).",
            "",
        ]
        width = max(len(prof.self_share), len(prof.inclusive))
        rows = []
        for i in range(width):
            own = prof.self_share[i] if i < len(prof.self_share) else (0.0, "")
            anywhere = prof.inclusive[i] if i < len(prof.inclusive) else (0.0, "")
            rows.append([f"{own[0]:.1%}", f"`{own[1]}`", f"{anywhere[0]:.1%}", f"`{anywhere[1]}`"])
        lines += _table(["self", "function", "inclusive", "function"], rows, "rlrl")
    return lines


def _scaling_section(res: Results) -> list[str]:
    if not res.scaling:
        return []
    lines = [
        "## 4. Collector memory and CPU against concurrent runs",
        "",
        "A fresh collector per row (ClearML backend, offline); every run open and sending one scalar "
        "per second; measured over a window once every run had its ClearML task. Runs spread over at "
        "most 100 producer processes (above 100 runs a process holds several, sharing one "
        f"connection). {res.load_note}",
        "",
    ]
    rows = [
        [
            str(s.runs),
            str(s.processes),
            f"{s.idle_mb:.0f}",
            f"{s.rss_mb:.0f}",
            f"{s.rss_max_mb:.0f}",
            f"{(s.rss_mb - s.idle_mb) / s.runs:.2f}",
            f"{s.cpu_percent:.1f}",
            str(s.threads),
            str(s.backlog),
        ]
        for s in res.scaling
    ]
    return lines + _table(
        [
            "runs",
            "producer processes",
            "collector RSS idle MiB",
            "RSS MiB (mean)",
            "RSS MiB (max)",
            "MiB per run",
            "collector CPU %",
            "threads",
            "backlog at end",
        ],
        rows,
    )


def render(res: Results) -> str:
    """BENCHMARKS.md."""
    mode = "quick mode (`--quick`: smoke check, not the figures to quote)" if res.quick else "full run"
    lines = [
        "# Benchmarks: what clearml-relay costs a training, and what its collector sustains",
        "",
        f"Generated by `tests/benchmarks/compare.py` ({mode}) on {res.started:%Y-%m-%d %H:%M} UTC in "
        f"{res.seconds / 60:.1f} minutes. Re-run it with the command below; every figure in this file "
        "comes from that one invocation.",
        "",
        "```bash",
        res.command,
        "```",
        "",
        "## Targets",
        "",
    ]
    lines += _table(["measure", "target", "measured", "verdict"], headline(res), "lllr")
    if res.errors:
        lines += ["", "**Parts that could not be measured:**", "", *(f"- {e}" for e in res.errors)]
    lines += ["", "![chart](benchmarks.png)", ""]
    for section in (_training_section, _files_section, _collector_section, _scaling_section):
        part = section(res)
        if part:
            lines += [*part, ""]
    if res.notes:
        lines += ["## Notes", "", *(f"- {n}" for n in res.notes), ""]
    lines += ["## Machine, versions, commands", ""]
    lines += _table(["", ""], [[k, v] for k, v in res.machine.items()], "ll")
    lines += ["", f"Network: {res.network}", ""]
    lines += _table(["library", "version"], [[k, v] for k, v in res.versions.items()], "ll")
    lines += ["", "What ran (paths are this invocation's temporary directory):", "", "```"]
    lines += [*res.commands, "```", ""]
    return "\n".join(lines)


def chart(res: Results, path: Path) -> None:
    """The PNG: training time per logger, file-call latency, collector throughput and scaling."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    ax = axes[0][0]
    done = [s for s in res.summaries if s.train_s is not None]
    labels = [BY_KEY[s.config].label.replace("Ultralytics ", "").replace(" callback", "") for s in done]
    trains = [s.train_s or 0.0 for s in done]
    inside = [s.in_logger_s or 0.0 for s in done]
    ax.bar(labels, trains, color="#9db4d0", label="model.train() wall time (median)")
    ax.bar(labels, inside, color="#d0623b", label="inside the logger's callbacks")
    for i, s in enumerate(done):
        if s.train_ratio is not None:
            ax.annotate(f"x{s.train_ratio:.3f}", (i, trains[i]), ha="center", va="bottom", fontsize=9)
    ax.set_ylim(top=max(trains, default=1.0) * 1.3)
    ax.set_ylabel("seconds")
    ax.set_title(f"Same YOLO training ({res.epochs} epochs, {res.device}): ratio to no logging")
    ax.legend(fontsize=8, loc="upper left")
    ax.tick_params(axis="x", labelsize=8)

    ax = axes[0][1]
    for paced, style in ((False, "o-"), (True, "s--")):
        pts = [f for f in res.files if f.paced == paced]
        if pts:
            ax.plot(
                [f.size for f in pts],
                [f.p99_us for f in pts],
                style,
                label=f"p99, {'paced 20 ms' if paced else 'back to back'}",
            )
    ax.axhline(HOOK_P99_US, color="red", lw=1, ls=":", label=f"target {HOOK_P99_US:.0f} us")
    ax.set_xscale("log")
    ax.set_xlabel("attached file size (bytes)")
    ax.set_ylabel("us per call")
    ax.set_title("Run.image / Run.model latency on the caller")
    ax.legend(fontsize=8)

    ax = axes[1][0]
    if res.throughput:
        for mode, style in (("offline", "-"), ("online", ":")):
            loads = [t for t in res.throughput if t.mode == mode]
            xs = [str(t.producers) for t in loads]
            ax.plot(xs, [t.acked_per_s for t in loads], "o" + style, label=f"acknowledged/s, {mode}")
            ax.plot(xs, [t.applied_per_s for t in loads], "s" + style, label=f"applied in ClearML/s, {mode}")
        ax.axhline(EVENTS_PER_S, color="red", lw=1, ls=":", label=f"target {EVENTS_PER_S:,}/s")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7)
    ax.set_xlabel("concurrent producer processes")
    ax.set_ylabel("events per second")
    ax.set_title("Collector throughput (ClearML backend)")

    ax = axes[1][1]
    if res.scaling:
        runs = [s.runs for s in res.scaling]
        ax.plot(runs, [s.rss_mb for s in res.scaling], "o-", color="#3b6fd0", label="RSS MiB")
        ax.set_ylabel("collector RSS (MiB)")
        twin = ax.twinx()
        twin.plot(runs, [s.cpu_percent for s in res.scaling], "s--", color="#d0623b", label="CPU %")
        twin.set_ylabel("collector CPU (% of one core)")
        ax.set_ylim(bottom=0)
        twin.set_ylim(bottom=0)
        ax.legend(loc="upper left", fontsize=8)
        twin.legend(loc="lower right", fontsize=8)
    ax.set_xlabel("concurrent open runs (1 scalar/s each)")
    ax.set_title("Collector memory and CPU against concurrent runs")

    fig.suptitle(f"clearml-relay benchmarks ({res.machine.get('CPU', '')})", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
