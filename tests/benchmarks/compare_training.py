"""Part 1 of ``compare.py``: one tiny YOLO training, logged five ways, each in a fresh process.

Run as a script, this module is the training process (``--config`` names the logger); imported,
it is the parent's side: :func:`run_rounds` starts one training per configuration per round,
round-robin (the order rotated by one each round, so that no configuration always follows the
same neighbour), and :func:`summarize` turns the per-run results into medians and ratios to the
no-logging runs of the same invocation.

Every configuration trains the same model (``yolov8n.yaml``, built from its config), on the same
generated dataset, with the same seed, epochs, image size and device; only the Ultralytics
settings differ: each enables at most one integration (``clearml``, ``wandb``, ``mlflow``; every
other integration key is false in all five), and ``relay`` attaches clearml-relay's hooks to a
collector (ClearML backend, offline) that the parent runs as a separate process on the same
machine. Nothing leaves the machine: each process gets private Ultralytics, ClearML, W&B and
MLflow directories and every logger's offline mode (:func:`isolate`).

Time inside callbacks: the training process replaces ``run_callbacks`` of Ultralytics' trainer
and validator with a copy that times each callback it calls (what the trainer's loop pays per
callback, and the same loop otherwise). That covers callbacks registered at any time: W&B adds
its ``finish`` callbacks during ``on_pretrain_routine_end``, after the trainer was built. Each
callback belongs to the logger under test (its Ultralytics integration module, or
clearml-relay's ``producer.integrations.ultralytics``), to Ultralytics itself (the no-op
defaults, its Platform and
analytics callbacks) or to something else; one invocation of an event records the seconds of
each group.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

ROOT: Final = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "support"), str(ROOT / "tests" / "benchmarks")]

#: Ultralytics' integration switches (ultralytics/utils/callbacks/base.py
#: ``add_integration_callbacks``); every one is set in every configuration.
INTEGRATIONS: Final = ("clearml", "comet", "dvc", "mlflow", "raytune", "tensorboard", "wandb")
MODEL: Final = "yolov8n.yaml"
SEED: Final = 0
PROJECT: Final = "clearml-relay-compare"


@dataclass(frozen=True)
class Logger:
    """One configuration: what it is called, the setting it enables, the module of its callbacks."""

    key: str
    label: str
    setting: str | None
    module: str | None
    note: str


LOGGERS: Final = (
    Logger("none", "no logging", None, None, "every integration setting false"),
    Logger(
        "clearml",
        "Ultralytics ClearML callback",
        "clearml",
        "ultralytics.utils.callbacks.clearml",
        "CLEARML_OFFLINE_MODE=1; offline model-registration crash worked around (docs/clearml-notes.md)",
    ),
    Logger(
        "wandb",
        "Ultralytics W&B callback",
        "wandb",
        "ultralytics.utils.callbacks.wb",
        "WANDB_MODE=offline",
    ),
    Logger(
        "mlflow",
        "Ultralytics MLflow callback",
        "mlflow",
        "ultralytics.utils.callbacks.mlflow",
        "MLFLOW_TRACKING_URI=sqlite:///<private>/mlflow.db (MLflow's default local store)",
    ),
    Logger(
        "relay",
        "clearml-relay hooks",
        None,
        "producer.integrations.ultralytics",
        "collector (ClearML backend, offline) on the same machine",
    ),
)
BY_KEY: Final = {logger.key: logger for logger in LOGGERS}

#: Groups a callback belongs to (see the module docstring).
OWN, ULTRALYTICS, OTHER = "logger", "ultralytics", "other"
_ULTRALYTICS_MODULES: Final = (
    "ultralytics.utils.callbacks.base",
    "ultralytics.utils.callbacks.platform",
    "ultralytics.utils.events",
)


# ------------------------------------------------------------------------- the training process


def isolate(work: Path) -> None:
    """Every logger offline, in private directories under ``work``; set before anything loads.

    Ultralytics and ClearML as in ``clearml-relay demo`` (``collector.service.demo._isolate``: offline,
    private config directory with a font, private ClearML cache and relay spool), plus an empty
    ClearML configuration file, W&B offline and MLflow's local SQLite store, and the working
    directory (where MLflow puts its artifacts) in ``work``. The same for every configuration.
    """
    from collector.service import demo

    work.mkdir(parents=True, exist_ok=True)
    demo._isolate(work)
    clearml_conf = work / "clearml.conf"
    clearml_conf.write_text("sdk {}\n")  # nothing from ~/clearml.conf
    for name in ("wandb", "wandb-cache", "wandb-config", "wandb-data"):
        (work / name).mkdir(exist_ok=True)
    for noisy in ("PYTEST_CURRENT_TEST", "GITHUB_ACTIONS", "CLEARML_API_HOST", "WANDB_API_KEY"):
        os.environ.pop(noisy, None)
    os.environ.update(
        {
            "CLEARML_CONFIG_FILE": str(clearml_conf),
            "WANDB_MODE": "offline",
            "WANDB_SILENT": "true",
            "WANDB_ERROR_REPORTING": "false",
            "WANDB_DIR": str(work / "wandb"),
            "WANDB_CACHE_DIR": str(work / "wandb-cache"),
            "WANDB_CONFIG_DIR": str(work / "wandb-config"),
            "WANDB_DATA_DIR": str(work / "wandb-data"),
            "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "DO_NOT_TRACK": "1",
        }
    )
    os.chdir(work)


def training_args(work: Path, name: str, epochs: int, device: str) -> dict[str, Any]:
    """``model.train`` arguments: the demo's tiny training, with the seed and device fixed."""
    from collector.service.demo_data import tiny_training

    return {**tiny_training("detect", work / "runs", name, epochs), "device": device, "seed": SEED}


def _owner(callback: object, module: str | None) -> str:
    name = getattr(callback, "__module__", None) or type(callback).__module__
    if module is not None and (name == module or name.startswith(module + ".")):  # a package's modules too
        return OWN
    return ULTRALYTICS if name in _ULTRALYTICS_MODULES else OTHER


def _time_callbacks(module: str | None, calls: list[tuple[str, float, float, float]]) -> None:
    """Make the trainer and validator time every callback they run (appended to ``calls``)."""
    from ultralytics.engine.trainer import BaseTrainer
    from ultralytics.engine.validator import BaseValidator

    clock = time.perf_counter

    def run_callbacks(self: Any, event: str) -> None:
        spent = {OWN: 0.0, ULTRALYTICS: 0.0, OTHER: 0.0}
        for callback in self.callbacks.get(event, []):  # the list itself: hooks may edit it
            started = clock()
            callback(self)
            spent[_owner(callback, module)] += clock() - started
        calls.append((event, spent[OWN], spent[ULTRALYTICS], spent[OTHER]))

    # Replaced on the classes (this process trains once): every trainer and validator it makes.
    BaseTrainer.run_callbacks = run_callbacks  # type: ignore[method-assign]
    BaseValidator.run_callbacks = run_callbacks  # type: ignore[method-assign]


def _offline_model_workaround() -> None:
    """ClearML's offline ``update_output_model`` raises (clearml issue 1243, see docs/clearml-notes.md).

    The built-in callback would crash the training at its very end; an offline model is never
    published, which is all the failing property has to say (the collector does the same).
    """
    from clearml import OutputModel

    OutputModel.published = property(lambda _model: False)  # type: ignore[method-assign,assignment]


#: The key :func:`thread_cpu` gives the CPU seconds of threads that have ended.
ENDED: Final = "(threads that ended)"


def thread_cpu() -> dict[str, float]:
    """CPU seconds so far of this process's threads, by name; empty where /proc is missing (not Linux).

    Python threads by their ``threading`` name, the others (torch's, ZeroMQ's) by their kernel
    name; threads that have ended are summed under :data:`ENDED` (the process's total minus the
    live ones), so the values add up to the process's own CPU time.
    """
    tasks = Path("/proc/self/task")
    if not tasks.is_dir():
        return {}
    import threading

    tick = os.sysconf("SC_CLK_TCK")
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    for task in tasks.iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            comm = (task / "comm").read_text().strip()
        except OSError:  # the thread ended meanwhile
            continue
        name = names.get(int(task.name), comm)
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    times = os.times()
    out[ENDED] = max(0.0, times.user + times.system - sum(out.values()))
    return out


def train(
    config: str, data: Path, work: Path, epochs: int, device: str, endpoint: str | None
) -> dict[str, Any]:
    """The training process: one configuration's training, timed; returns what the parent needs."""
    logger = BY_KEY[config]
    isolate(work)
    from ultralytics.models import YOLO
    from ultralytics.utils import SETTINGS

    SETTINGS.update(  # type: ignore[no-untyped-call]  # ultralytics' SettingsManager is untyped
        {"sync": False, **{key: key == logger.setting for key in INTEGRATIONS}}
    )
    if config == "clearml":
        _offline_model_workaround()
    calls: list[tuple[str, float, float, float]] = []
    _time_callbacks(logger.module, calls)
    model = YOLO(MODEL)
    hooks = None
    if config == "relay":
        import producer

        hooks = producer.attach(model, endpoint=endpoint, project=PROJECT, name=config)
    result: dict[str, Any] = {"config": config, "error": None}
    started = time.perf_counter()
    try:
        model.train(data=str(data), **training_args(work, config, epochs, device))
    except Exception as exc:
        traceback.print_exc()
        result["error"] = f"{type(exc).__name__}: {exc}"[:300]
    result["train_s"] = time.perf_counter() - started
    result["threads"] = thread_cpu()
    result["calls"] = calls
    result["run"] = hooks.run.id if hooks is not None and hooks.run is not None else None
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description="one training of compare.py (run by it)")
    ap.add_argument("--config", choices=list(BY_KEY), required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--epochs", type=int, required=True)
    ap.add_argument("--device", required=True)
    ap.add_argument("--endpoint")
    ap.add_argument("--result", type=Path, required=True)
    args = ap.parse_args()
    result = train(args.config, args.data, args.work, args.epochs, args.device, args.endpoint)
    args.result.write_text(json.dumps(result))
    return 0 if result["error"] is None else 3


# ------------------------------------------------------------------------------- the parent's side


@dataclass
class Outcome:
    """One training: its configuration, round, wall times and where its time went."""

    config: str
    round: int
    process_s: float
    train_s: float | None = None
    cpu_s: float = 0.0
    collector_cpu_s: float | None = None
    calls: list[tuple[str, float, float, float]] = field(default_factory=list)
    threads: dict[str, float] = field(default_factory=dict)  # CPU s by thread, at the training's end
    error: str | None = None
    run: str | None = None  # the relay run's id


def run_one(
    config: str,
    round_: int,
    *,
    data: Path,
    work: Path,
    epochs: int,
    device: str,
    endpoint: str | None,
    timeout: float,
) -> Outcome:
    """Train ``config`` once in a fresh Python process; its output goes to ``work/train.log``."""
    import resource

    work.mkdir(parents=True, exist_ok=True)
    result = work / "result.json"
    command = [
        sys.executable, __file__, "--config", config, "--data", str(data), "--work", str(work),
        "--epochs", str(epochs), "--device", device, "--result", str(result),
        *(["--endpoint", endpoint] if endpoint else []),
    ]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    with (work / "train.log").open("wb") as log:
        # A session of its own: on a timeout the whole group goes (ClearML forks helpers).
        proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, cwd=work, start_new_session=True
        )
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = None
    process_s = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    outcome = Outcome(config, round_, process_s, cpu_s=cpu)
    if result.exists():
        reported = json.loads(result.read_text())
        outcome.train_s = float(reported["train_s"])
        outcome.calls = [(str(e), float(a), float(b), float(c)) for e, a, b, c in reported["calls"]]
        outcome.threads = {str(k): float(v) for k, v in reported["threads"].items()}
        outcome.error = reported["error"]
        outcome.run = reported["run"]
    if code is None:
        finished = "the training finished, then the process " if outcome.train_s is not None else ""
        outcome.error = f"{finished}did not exit within {timeout:.0f} s (killed)" + (
            f"; the training itself had raised {outcome.error}" if outcome.error else ""
        )
    elif code != 0 and outcome.error is None:
        tail = (work / "train.log").read_text(errors="replace")[-300:]
        outcome.error = f"exit status {code}: {tail}"
    return outcome


def schedule(configs: Sequence[str], rounds: int) -> list[tuple[int, str]]:
    """Round-robin over ``configs``, the order rotated by one each round: [(round, config)]."""
    out = []
    for r in range(rounds):
        shift = r % len(configs)
        out += [(r, c) for c in [*configs[shift:], *configs[:shift]]]
    return out


@dataclass
class HookStats:
    """The logger's own time per invocation of one event, pooled over every run."""

    event: str
    calls_per_run: float
    p50_us: float
    p99_us: float
    max_us: float


@dataclass
class Summary:
    """One configuration over all rounds, against the no-logging runs of the same invocation."""

    config: str
    runs: int
    failed: list[str]
    train_s: float | None = None
    process_s: float | None = None
    cpu_s: float | None = None
    train_ratio: float | None = None
    train_ratio_ci: tuple[float, float] | None = None
    process_ratio: float | None = None
    process_ratio_ci: tuple[float, float] | None = None
    cpu_ratio: float | None = None
    in_logger_s: float | None = None
    in_ultralytics_s: float | None = None
    collector_cpu_s: float | None = None
    #: Medians of the training process's CPU seconds outside its main thread, and of the busiest
    #: other threads by name (up to three).
    off_main_cpu_s: float | None = None
    busiest_threads: list[tuple[str, float]] = field(default_factory=list)
    hooks: list[HookStats] = field(default_factory=list)


def _paired_ratios(
    outcomes: list[Outcome], config: str, value: Callable[[Outcome], float | None]
) -> list[float]:
    """``value`` of ``config`` over that of the no-logging run, per round (rounds with both)."""
    by_round: dict[int, dict[str, float]] = {}
    for o in outcomes:
        v = value(o)
        if o.error is None and v is not None:
            by_round.setdefault(o.round, {})[o.config] = v
    return [r[config] / r["none"] for r in by_round.values() if config in r and "none" in r]


def _ci(ratios: list[float], seed: int = 1) -> tuple[float, float] | None:
    """95 % bootstrap interval of the median of ``ratios`` (None with fewer than 3)."""
    if len(ratios) < 3:
        return None
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(2000))
    return medians[int(0.025 * len(medians))], medians[int(0.975 * len(medians)) - 1]


def _thread_summary(s: Summary, ok: list[Outcome]) -> None:
    measured = [o.threads for o in ok if o.threads]
    if not measured:
        return
    s.off_main_cpu_s = statistics.median(sum(v for k, v in t.items() if k != "MainThread") for t in measured)
    names = {k for t in measured for k in t} - {"MainThread"}
    medians = {n: statistics.median(t.get(n, 0.0) for t in measured) for n in names}
    s.busiest_threads = sorted(medians.items(), key=lambda kv: -kv[1])[:3]


def summarize(outcomes: list[Outcome]) -> list[Summary]:
    """Medians per configuration, paired ratios to no logging, per-event hook percentiles."""
    from bench_transport import percentile

    out = []
    for logger in LOGGERS:
        mine = [o for o in outcomes if o.config == logger.key]
        if not mine:
            continue
        ok = [o for o in mine if o.error is None and o.train_s is not None]
        s = Summary(logger.key, len(mine), [f"round {o.round + 1}: {o.error}" for o in mine if o.error])
        out.append(s)
        if not ok:
            continue
        s.train_s = statistics.median(o.train_s for o in ok if o.train_s is not None)
        s.process_s = statistics.median(o.process_s for o in ok)
        s.cpu_s = statistics.median(o.cpu_s for o in ok)
        s.in_logger_s = statistics.median(sum(c[1] for c in o.calls) for o in ok)
        s.in_ultralytics_s = statistics.median(sum(c[2] for c in o.calls) for o in ok)
        collector = [o.collector_cpu_s for o in ok if o.collector_cpu_s is not None]
        s.collector_cpu_s = statistics.median(collector) if collector else None
        _thread_summary(s, ok)
        for name, get in (("train", lambda o: o.train_s), ("process", lambda o: o.process_s)):
            ratios = _paired_ratios(outcomes, logger.key, get)
            if ratios:
                setattr(s, f"{name}_ratio", statistics.median(ratios))
                setattr(s, f"{name}_ratio_ci", _ci(ratios))
        cpu_ratios = _paired_ratios(outcomes, logger.key, lambda o: o.cpu_s)
        s.cpu_ratio = statistics.median(cpu_ratios) if cpu_ratios else None
        if logger.module is None:
            continue
        per_event: dict[str, list[float]] = {}
        for o in ok:
            for event, own, _, _ in o.calls:
                if own > 0:
                    per_event.setdefault(event, []).append(own * 1e6)
        for event, values in per_event.items():
            s.hooks.append(
                HookStats(
                    event, len(values) / len(ok), percentile(values, 50), percentile(values, 99), max(values)
                )
            )
        s.hooks.sort(key=lambda h: -h.p99_us)
    return out


def run_rounds(
    configs: Sequence[str],
    rounds: int,
    *,
    data: Path,
    work: Path,
    epochs: int,
    device: str,
    endpoint: str | None,
    collector_pid: int | None,
    wait_applied: Callable[[str], bool],
    progress: Callable[[str], None],
) -> list[Outcome]:
    """Every configuration ``rounds`` times, interleaved; the relay run waits for its collector.

    A relay run counts as done when the collector has applied all of it (``wait_applied``), so
    that its collector's work never overlaps the next training; the collector's CPU seconds
    from the training's start to then are recorded with it.
    """
    import psutil

    collector = psutil.Process(collector_pid) if collector_pid else None
    outcomes = []
    plan = schedule(configs, rounds)
    for i, (round_, config) in enumerate(plan):
        cpu_before = sum(collector.cpu_times()[:2]) if collector else 0.0
        outcome = run_one(
            config,
            round_,
            data=data,
            work=work / f"r{round_}-{config}",
            epochs=epochs,
            device=device,
            endpoint=endpoint,
            timeout=max(180.0, 30.0 * epochs),
        )
        if config == "relay" and collector is not None:
            run = outcome.run
            if run and not wait_applied(run):
                outcome.error = outcome.error or "the collector did not apply the whole run in time"
            outcome.collector_cpu_s = sum(collector.cpu_times()[:2]) - cpu_before
        outcomes.append(outcome)
        train = f"{outcome.train_s:.1f} s" if outcome.train_s is not None else "-"
        state = "ok" if outcome.error is None else f"FAILED: {outcome.error[:120]}"
        progress(
            f"[training {i + 1}/{len(plan)}] round {round_ + 1} {config:8s} train {train}, "
            f"process {outcome.process_s:.1f} s, cpu {outcome.cpu_s:.1f} s: {state}"
        )
    return outcomes


if __name__ == "__main__":
    sys.exit(main())
