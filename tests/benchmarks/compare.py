"""clearml-relay against Ultralytics' built-in loggers, and what its collector sustains.

One command writes ``BENCHMARKS.md`` (and ``benchmarks.png`` beside it) at the repository root::

    python tests/benchmarks/compare.py            # the full run: about 35 minutes on 2 cores
    python tests/benchmarks/compare.py --quick    # a few minutes: a smoke check of everything

1. The same tiny YOLO training (GPU ``device=0`` when torch sees one, else CPU), each in a fresh
   process: no logging, Ultralytics' ClearML (offline), W&B (offline) and MLflow (local store)
   callbacks, and clearml-relay's hooks with a collector on the same machine; round-robin over
   repeated rounds; wall time, CPU and the time inside every callback, as ratios to the
   no-logging runs of the same invocation (``compare_training``).
2. ``Run.image`` / ``Run.model`` latency against the attached file's size, 1 KB to 1 GB
   (``bench_transport.file_call_latency``).
3. The collector: acknowledged and applied events/s against 1, 10 and 100 producer processes,
   offline and online (the ClearML server double), with a sampling profile (py-spy) of the
   collector under the 100-producer load; hook-to-ClearML latency at a fixed load, CPU seconds
   per 1,000 events, a 1 GB transfer and 10 files of 100 MB from 10 runs at once with both
   sides' memory (``compare_collector``, ``bench_transport.big_file_transfer``).
4. Collector memory and CPU against 1 to 200 concurrent runs (``compare_collector.scaling``).

Nothing leaves the machine: every logger runs offline in private directories and, where
``unshare`` allows it (root, or unprivileged user namespaces), the whole benchmark runs in a
private network namespace that has nothing but a loopback interface. A part that fails is
reported in BENCHMARKS.md instead of ending the run. Progress goes to stdout.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, TypeVar

ROOT: Final = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "support"), str(ROOT / "tests" / "benchmarks")]

#: The training configurations (``compare_training.LOGGERS``), named here to keep this module light.
LOGGER_KEYS: Final = ("none", "clearml", "wandb", "mlflow", "relay")
#: Set inside the private network namespace (and by --allow-network): do not re-enter it.
_NETNS_ENV: Final = "CLEARML_RELAY_BENCH_NETNS"
T = TypeVar("T")

if TYPE_CHECKING:
    from compare_report import Results


@dataclass(frozen=True)
class Plan:
    """How much of everything: the full run, or ``--quick``."""

    epochs: int
    rounds: int
    file_sizes: tuple[int, ...]
    big_file: int
    producers: tuple[int, ...]
    events: int
    latency: tuple[int, float, float]  # producers, scalars/s each, seconds
    runs: tuple[int, ...]
    window: float
    #: Throughput measurements per configuration; the report gives the median and the range.
    repeats: int = 1
    #: Transfers of the large file, and of the 10 files at once; the report gives the median and
    #: every rate (this machine's memory is sometimes several times slower for a while).
    file_repeats: int = 1


FULL: Final = Plan(
    epochs=5,
    rounds=12,
    file_sizes=(1_000, 1_000_000, 100_000_000, 1_000_000_000),
    big_file=1_000_000_000,
    producers=(1, 10, 100),
    events=300_000,
    latency=(10, 100.0, 20.0),
    runs=(1, 10, 50, 100, 200),
    window=20.0,
    repeats=3,
    file_repeats=5,
)
QUICK: Final = Plan(
    epochs=2,
    rounds=2,
    file_sizes=(1_000, 1_000_000, 10_000_000),
    big_file=100_000_000,
    producers=(1, 10),
    events=20_000,
    latency=(5, 50.0, 5.0),
    runs=(1, 10),
    window=5.0,
)


def _progress(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


def _enter_private_network() -> str:
    """Re-run this command in a network namespace with only loopback, if ``unshare`` allows it.

    Returns what the report says about the network (when it comes back at all: on success this
    process is replaced by the same command inside the namespace).
    """
    if os.environ.get(_NETNS_ENV) == "inside":
        return (
            "a private network namespace with only a loopback interface (`unshare --net`): "
            "no traffic could leave the machine"
        )
    if os.environ.get(_NETNS_ENV) == "allowed":
        return "the host's (`--allow-network`); every logger offline, in private directories"
    unshare, ip = shutil.which("unshare"), shutil.which("ip")
    if unshare and ip:
        for flags in (["--net"], ["--net", "--map-root-user"]):
            probe = subprocess.run(
                [unshare, *flags, ip, "link", "set", "lo", "up"], capture_output=True, check=False
            )
            if probe.returncode == 0:
                script = f'{shlex.quote(ip)} link set lo up && exec "$@"'
                os.environ[_NETNS_ENV] = "inside"
                os.execv(unshare, [unshare, *flags, "sh", "-c", script, "sh", sys.executable, *sys.argv])
    return "the host's (`unshare --net` is not allowed here); every logger offline, in private directories"


def _attempt(what: str, errors: list[str], fn: Callable[[], T]) -> T | None:
    """``fn()``, or None with the failure recorded for the report (one part never ends the run)."""
    started = time.monotonic()
    try:
        result = fn()
        _progress(f"{what}: done in {time.monotonic() - started:.0f} s: {result or ''}")
        return result
    except Exception as exc:  # a benchmark part that fails is a finding, not a crash
        traceback.print_exc()
        errors.append(f"{what}: {type(exc).__name__}: {exc}")
        _progress(f"{what} FAILED: {exc}")
        return None


def _training(plan: Plan, tmp: Path, device: str, loggers: list[str], res: Results) -> None:
    """Part 1: every configuration ``plan.rounds`` times, the relay's collector beside them."""
    from compare_collector import clearml_collector
    from compare_training import run_rounds, summarize
    from e2e import completed, wait_for

    from collector.service.demo_data import make_dataset

    data = make_dataset(tmp / "dataset", "detect")
    with clearml_collector(tmp / "relay-collector") as (endpoint, proc):

        def applied(run: str) -> bool:
            try:
                wait_for(lambda: completed(endpoint, run), 300, f"run {run} to be applied")
            except AssertionError:
                return False
            return True

        res.outcomes = run_rounds(
            loggers,
            plan.rounds,
            data=data,
            work=tmp / "trainings",
            epochs=plan.epochs,
            device=device,
            endpoint=endpoint,
            collector_pid=proc.pid,
            wait_applied=applied,
            progress=_progress,
        )
    res.summaries = summarize(res.outcomes)
    failed = sorted({o.config for o in res.outcomes if o.error})
    res.errors += [f"training `{c}`: at least one run failed (see section 1)" for c in failed]
    script = Path(__file__).with_name("compare_training.py")
    res.commands += [
        f"{sys.executable} {script} --config {{none,clearml,wandb,mlflow,relay}} --data {data} "
        f"--work {tmp}/trainings/r<round>-<config> --epochs {plan.epochs} --device {device} "
        f"--result .../result.json [--endpoint {endpoint}]",
        f"{sys.executable} -m collector collector --bind {endpoint} --data-dir {tmp}/relay-collector/data "
        "--backend jsonl --backend clearml --offline   # the relay's collector",
    ]


def _files(plan: Plan, tmp: Path, res: Results) -> None:
    """Part 2 and the large file of part 3, through ``bench_transport``'s collector (JSONL backend)."""
    from bench_transport import (
        big_file_transfer,
        disk_write_mb_s,
        file_call_latency,
        median_transfer,
        transport_collector,
    )

    tmp.mkdir(parents=True)
    res.disk_mb_s = disk_write_mb_s(tmp, plan.big_file)
    _progress(f"[files] the disk writes {res.disk_mb_s:,.0f} MB/s (fsynced)")
    with transport_collector(tmp) as (endpoint, proc):
        _progress("[files] Run.image / Run.model latency against file size ...")
        res.files = file_call_latency(endpoint, tmp, list(plan.file_sizes))
        _progress(
            f"[files] {_size_range(plan.file_sizes)} done; {_size_range((plan.big_file,))} transfer ..."
        )
        for _ in range(plan.file_repeats):
            res.transfers.append(big_file_transfer(endpoint, tmp, plan.big_file, proc.pid))
            _progress(f"[files] {res.transfers[-1]}")
        res.transfer = median_transfer(res.transfers)
        _progress("[files] 10 runs at once ...")
        for _ in range(plan.file_repeats):
            res.parallels.append(big_file_transfer(endpoint, tmp, plan.big_file // 10, proc.pid, files=10))
            _progress(f"[files] {res.parallels[-1]}")
        res.parallel = median_transfer(res.parallels)
    res.commands.append(
        f"{sys.executable} -m collector collector --bind <free port> --data-dir {tmp}/data --backend jsonl"
    )


def _size_range(sizes: tuple[int, ...]) -> str:
    return " to ".join(f"{n:,} bytes" for n in sorted({min(sizes), max(sizes)}))


def _collector(plan: Plan, tmp: Path, res: Results) -> None:
    """Part 3: throughput against concurrent producers, and latency at a fixed load."""
    from compare_collector import latency, median_throughput, throughput

    for online in (False, True):
        mode = "online" if online else "offline"
        for n in plan.producers:
            tries = []
            for attempt in range(plan.repeats):
                what = f"throughput, {n} producers, {mode}, {attempt + 1} of {plan.repeats}"
                run = functools.partial(
                    throughput,
                    tmp / f"p{n}-{mode}-{attempt}",
                    n,
                    plan.events,
                    online=online,
                    profile=n == max(plan.producers) and attempt == 0,
                )
                t = _attempt(what, res.errors, run)
                if t is not None:
                    tries.append(t)
                    _progress(
                        f"[collector] {what}: acked {t.acked_per_s:,.0f}/s, applied {t.applied_per_s:,.0f}/s"
                    )
            if tries:
                res.throughput.append(median_throughput(tries))
    producers, rate, seconds = plan.latency
    res.latency = _attempt(
        f"latency, {producers} producers",
        res.errors,
        lambda: latency(tmp / "latency", producers, rate, seconds),
    )
    res.commands += [
        f"{sys.executable} -m collector collector --bind <free port> --data-dir {tmp}/p<N>/data "
        "--backend jsonl --backend clearml --offline",
        f"{sys.executable} {Path(__file__).with_name('compare_collector.py')} --bind <free port> "
        f"--data-dir {tmp}/latency/data --record {tmp}/latency/latency.json",
    ]


def _scaling(plan: Plan, tmp: Path, res: Results) -> None:
    """Part 4: collector memory and CPU against concurrent open runs."""
    from compare_collector import scaling

    for n in plan.runs:
        what = f"scaling, {n} runs"
        s = _attempt(what, res.errors, functools.partial(scaling, tmp / f"r{n}", n, 1.0, plan.window))
        if s is not None:
            res.scaling.append(s)


#: What a reader must know to judge the figures (rendered under "Notes").
NOTES: Final = (
    "Everything shares one machine: the trainings, the clearml-relay collector (section 1), the "
    "producers and collectors of sections 2-4. In production the collector usually runs on another "
    "host; here its CPU competes with the training's, which is the worst case for clearml-relay's "
    "whole-run figure.",
    "Runs are opened one at a time in sections 3 and 4 (each once the collector has applied the "
    "previous one's opening), so that task creation stays out of the timed span. Opening them at "
    "the same moment once crashed or hung the collector in ClearML's task set-up (its process-wide "
    "upload pools, created without a lock); the backend now creates them before any applier thread "
    "(docs/clearml-compat.md, `tests/integration/test_clearml_backend.py`). "
    "`compare_collector.Producers(..., all_at_once=True)` opens them together.",
    "Ultralytics' ClearML callback crashes every offline training at its end (clearml issue 1243, "
    "docs/clearml-notes.md); its training process here patches `OutputModel.published` to False, as "
    "the collector does, so that its runs complete and log the model.",
    "A training process that has not exited 180 s after its start (30 s per epoch above 6 "
    "epochs) is killed and its run counted as failed (listed under the table of section 1). Seen "
    "with the ClearML callback while this benchmark was written (1 in 11 and 1 in 12 trainings in "
    "two full runs): the reporting subprocess that `Task.init` forks from the training process "
    "deadlocked at its start (a thread join after fork), and ClearML's exit handler waits for it "
    "forever, after the training itself had finished.",
    "MLflow 3.17 refuses the `file://` store (maintenance mode) unless MLFLOW_ALLOW_FILE_STORE is "
    "set; its default local store, SQLite in a private directory, is used instead.",
    "Each configuration enables only its own Ultralytics integration (settings `clearml`, `comet`, "
    "`dvc`, `mlflow`, `raytune`, `tensorboard`, `wandb`; `sync` false) in a private "
    "YOLO_CONFIG_DIR; the clearml-relay configuration has the built-in ClearML callback off (a "
    "training node needs no clearml).",
    "Time in callbacks is measured by replacing `run_callbacks` of Ultralytics' trainer and "
    "validator with an identical loop that times each callback (all configurations, the "
    "no-logging one included), so callbacks registered late (W&B adds its `finish` during "
    "`on_pretrain_routine_end`) are counted too.",
)

PARTS: Final = {"training": "1", "files": "2", "collector": "3", "scaling": "4"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a few minutes: 2 epochs, 2 rounds, small sizes")
    ap.add_argument(
        "--out", type=Path, default=ROOT / "BENCHMARKS.md", help="the report (default: %(default)s)"
    )
    ap.add_argument("--rounds", type=int, help="override the number of training rounds")
    ap.add_argument("--epochs", type=int, help="override the epochs per training")
    ap.add_argument("--repeats", type=int, help="override the measurements per throughput configuration")
    ap.add_argument(
        "--loggers",
        default=",".join(LOGGER_KEYS),
        help="training configurations, comma-separated (default: all)",
    )
    ap.add_argument("--skip", action="append", default=[], choices=list(PARTS), help="leave a part out")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--allow-network", action="store_true", help="do not enter a private network namespace")
    args = ap.parse_args()
    if args.allow_network:
        os.environ.setdefault(_NETNS_ENV, "allowed")
    network = _enter_private_network()
    command = shlex.join([os.path.relpath(sys.executable), *sys.argv])

    from compare_report import Results, chart, gpu_available, machine, render, versions

    loggers = [key for key in args.loggers.split(",") if key]
    if "none" not in loggers or not set(loggers) <= set(LOGGER_KEYS):
        ap.error(f"--loggers: a subset of {','.join(LOGGER_KEYS)} that includes none (the baseline)")
    plan = QUICK if args.quick else FULL
    overrides = {k: v for k in ("rounds", "epochs", "repeats") if (v := getattr(args, k))}
    plan = Plan(**{**plan.__dict__, **overrides})
    started_at = datetime.datetime.now(datetime.timezone.utc)
    started = time.monotonic()
    device = "0" if gpu_available() else "cpu"
    tmp = Path(tempfile.mkdtemp(prefix="clearml-relay-compare-"))
    _progress(f"compare: {'quick' if args.quick else 'full'} run on {device}, work directory {tmp}")
    _progress(f"network: {network}")
    res = Results(
        command=command, quick=args.quick, started=started_at, seconds=0.0, machine=machine(),
        versions=versions(), network=network, device=device, epochs=plan.epochs, rounds=plan.rounds,
        outcomes=[], summaries=[], files=[], transfer=None, throughput=[], latency=None, scaling=[],
        load_note="Producers are processes on the same cores as the collector.", notes=list(NOTES),
    )  # fmt: skip
    steps: dict[str, Callable[[], None]] = {
        "training": lambda: _training(plan, tmp / "part1", device, loggers, res),
        "files": lambda: _files(plan, tmp / "part2", res),
        "collector": lambda: _collector(plan, tmp / "part3", res),
        "scaling": lambda: _scaling(plan, tmp / "part4", res),
    }
    try:
        for name, step in steps.items():
            if name not in args.skip:
                _progress(f"part {PARTS[name]}: {name}")
                _attempt(name, res.errors, step)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    res.seconds = time.monotonic() - started
    out = args.out.resolve()
    out.write_text(render(res))
    chart(res, out.with_name("benchmarks.png"))
    _progress(f"wrote {out} and {out.with_name('benchmarks.png')} in {res.seconds / 60:.1f} minutes")
    return 1 if res.errors else 0


if __name__ == "__main__":
    sys.exit(main())
