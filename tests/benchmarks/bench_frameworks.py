"""Framework benchmark: what each integration costs a training, against the framework's own loggers.

Not part of the test suite (it reports, it does not assert). ``python tests/benchmarks/bench_frameworks.py``
runs a collector (ClearML backend, offline) in this process and each training in a fresh child
process, offline and in private directories, round-robin over ``--rounds`` rounds (the order
rotated each round):

- **Lightning**: a small MLP on random tensors, logging every step; no logger, a logger that does
  nothing (what Lightning's own logging costs: it turns each metric into a float), ``RelayLogger``,
  Lightning's ``MLFlowLogger`` (local store) and ``WandbLogger`` (offline).
- **Transformers**: a tiny BERT from a config on generated tokens, ``logging_steps=1``; no
  callback, ``RelayCallback``, Transformers' ``ClearMLCallback`` (ClearML offline, in process),
  ``MLflowCallback`` and ``WandbCallback`` (offline).
- **TensorBoard**: a training loop that writes three scalars a step, and a histogram and an image
  every ten steps, to a ``SummaryWriter``: uncaptured, captured by clearml-relay
  (``capture_tensorboard``), and captured by ClearML's own binding (``Task.init``, offline).

Per logger: the time inside its callbacks (every method the logger's class defines, timed where
the framework calls it; for TensorBoard, inside the writer's ``add_*`` calls, the writer's own
work included) per training step, and the training's wall time as a ratio to no logging in the
same round (median and range over the rounds). W&B and MLflow come with the ``bench`` extra
(``pip install -e '.[bench]'``); a logger whose package is missing is left out and said so.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))

from hook_timing import own_methods, time_methods

from collector.config import CollectorConfig
from collector.service import demo
from collector.service.server import Collector

#: Per framework: the loggers compared, and the package each needs (None: always there).
LOGGERS: Final[dict[str, dict[str, str | None]]] = {
    "lightning": {"none": None, "noop": None, "relay": None, "mlflow": "mlflow", "wandb": "wandb"},
    "transformers": {"none": None, "relay": None, "clearml": "clearml", "mlflow": "mlflow", "wandb": "wandb"},
    "tensorboard": {"none": None, "relay": None, "clearml": "clearml"},
}
STEPS: Final = 200
BATCH: Final = 16


@dataclass
class Timing:
    """One training's measurements: each hook call's seconds, and the training call's wall and CPU."""

    hooks: list[float] = field(default_factory=list)
    #: clearml-relay's own part of the hook calls (TensorBoard: the forwarding inside ``add_*``).
    own: list[float] = field(default_factory=list)
    wall: float = 0.0
    cpu: float = 0.0
    steps: int = 0

    @contextlib.contextmanager
    def training(self) -> Iterator[None]:
        """Measure the training call (the process's CPU, all threads: the producer's too)."""
        before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        yield
        self.wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_SELF)
        self.cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def _time_methods(cls: type, seconds: list[float]) -> None:
    """Time every method ``cls`` defines itself (its hooks), adding each call's seconds to ``seconds``."""
    time_methods(cls, own_methods(cls), lambda _, duration: seconds.append(duration))


def _offline(work: Path, logger: str) -> None:
    os.environ.update(
        {
            "WANDB_MODE": "offline",
            "WANDB_DIR": str(work),
            "WANDB_SILENT": "true",
            "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "CLEARML_TASK": f"bench-{logger}",
        }
    )


def _lightning(endpoint: str, work: Path, logger: str, timing: Timing) -> None:
    import lightning as pl
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    class Net(pl.LightningModule):
        def __init__(self, lr: float = 0.01) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.net = torch.nn.Sequential(torch.nn.Linear(32, 512), torch.nn.ReLU(), torch.nn.Linear(512, 1))

        def training_step(self, batch: Any, _: int) -> torch.Tensor:
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x), y)
            self.log("train/loss", loss)
            self.log("train/lr", self.hparams.lr)
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    chosen: Any = False
    if logger == "noop":  # a logger that does nothing: what Lightning's own logging costs (metrics to floats)
        from lightning.pytorch.loggers import Logger

        class Noop(Logger):
            name, version = "noop", "0"

            def log_metrics(self, metrics: Any, step: Any = None) -> None:
                pass

            def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
                pass

        _time_methods(Noop, timing.hooks)
        chosen = Noop()
    elif logger == "relay":
        from producer.integrations.lightning import RelayLogger

        _time_methods(RelayLogger, timing.hooks)
        chosen = RelayLogger(project="bench", name="lightning", endpoint=endpoint)
    elif logger == "mlflow":
        from lightning.pytorch.loggers import MLFlowLogger

        _time_methods(MLFlowLogger, timing.hooks)
        chosen = MLFlowLogger(experiment_name="bench", tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    elif logger == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        _time_methods(WandbLogger, timing.hooks)
        chosen = WandbLogger(project="bench", offline=True, save_dir=str(work))
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(STEPS * BATCH, 32), torch.randn(STEPS * BATCH, 1))
    trainer = pl.Trainer(
        max_epochs=1,
        logger=chosen,
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(work),
        accelerator="cpu",
    )
    with timing.training():
        trainer.fit(Net(), DataLoader(data, batch_size=BATCH))
    timing.steps = trainer.global_step


def _transformers(endpoint: str, work: Path, logger: str, timing: Timing) -> None:
    import torch
    from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments
    from transformers.integrations import integration_utils
    from transformers_train import Generated

    callbacks: list[Any] = []
    if logger == "relay":
        from producer.integrations.transformers import RelayCallback

        _time_methods(RelayCallback, timing.hooks)
        callbacks = [RelayCallback(project="bench", name="transformers", endpoint=endpoint)]
    else:
        classes = {"clearml": "ClearMLCallback", "mlflow": "MLflowCallback", "wandb": "WandbCallback"}
        if logger in classes:
            _time_methods(getattr(integration_utils, classes[logger]), timing.hooks)
    config = BertConfig(vocab_size=32, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=16, num_labels=2)  # fmt: skip
    torch.manual_seed(0)
    args = TrainingArguments(
        output_dir=str(work / "out"),
        max_steps=STEPS,
        per_device_train_batch_size=BATCH,
        logging_steps=1,
        save_strategy="no",
        report_to=logger if logger in ("clearml", "mlflow", "wandb") else "none",
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=BertForSequenceClassification(config),
        args=args,
        train_dataset=Generated(STEPS * BATCH, 1),
        callbacks=callbacks,
    )
    with timing.training():
        trainer.train()
    timing.steps = trainer.state.global_step


def _tensorboard(endpoint: str, work: Path, logger: str, timing: Timing) -> None:
    from torch.utils.tensorboard import SummaryWriter

    import producer

    if logger == "relay":
        from producer.integrations import tensorboard

        run = producer.Run("bench", "tensorboard", endpoint=endpoint)
        producer.capture_tensorboard(run)
        forward = tensorboard._forward

        def forwarding(*args: Any) -> None:
            start = time.perf_counter()
            try:
                forward(*args)
            finally:
                timing.own.append(time.perf_counter() - start)

        tensorboard._forward = forwarding
    elif logger == "clearml":
        from clearml import Task

        Task.init(
            project_name="bench", task_name="tensorboard", auto_connect_frameworks={"tensorboard": True}
        )
    for name in ("add_scalar", "add_histogram", "add_image"):  # outermost: the capture's forwarding included
        original = getattr(SummaryWriter, name)

        def timed(*args: Any, __original: Callable[..., Any] = original, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return __original(*args, **kwargs)
            finally:
                timing.hooks.append(time.perf_counter() - start)

        setattr(SummaryWriter, name, timed)
    with timing.training():
        _tensorboard_loop(SummaryWriter(str(work / "tb")))
    timing.steps = STEPS


def _tensorboard_loop(writer: Any) -> None:
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 512), torch.nn.ReLU(), torch.nn.Linear(512, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for step in range(STEPS):
        x, y = torch.randn(BATCH, 32), torch.randn(BATCH, 1)
        loss = torch.nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        writer.add_scalar("train/loss", loss.item(), step)
        writer.add_scalar("train/lr", 0.01, step)
        writer.add_scalar("train/grad", float(model[0].weight.grad.norm()), step)
        if step % 10 == 0:
            writer.add_histogram("weights/first", model[0].weight.detach(), step)
            writer.add_image("inputs/x", x.reshape(1, BATCH, 32), step)
    writer.flush()


_FRAMEWORKS: Final[dict[str, Callable[[str, Path, str, Timing], None]]] = {
    "lightning": _lightning,
    "transformers": _transformers,
    "tensorboard": _tensorboard,
}


def _child(endpoint: str, work: str, framework: str, logger: str, out: str) -> None:
    path = Path(work)
    _offline(path, logger)
    timing = Timing()
    _FRAMEWORKS[framework](endpoint, path, logger, timing)
    if framework != "tensorboard":
        timing.own = timing.hooks if logger == "relay" else []
    Path(out).write_text(json.dumps(asdict(timing)))


def _one(endpoint: str, work: Path, framework: str, logger: str, index: int) -> dict[str, Any]:
    here = work / f"{framework}-{logger}-{index}"
    here.mkdir(parents=True)
    out = here / "result.json"
    proc = multiprocessing.get_context("spawn").Process(
        target=_child, args=(endpoint, str(here), framework, logger, str(out))
    )
    proc.start()
    proc.join(900)
    if proc.exitcode != 0 or not out.exists():
        raise RuntimeError(f"{framework} with {logger} failed (exit {proc.exitcode})")
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[int(0.99 * (len(ordered) - 1))] if ordered else 0.0


def _spread(values: list[float], fmt: str = "{:.3f}") -> str:
    return f"{fmt.format(statistics.median(values))} [{fmt.format(min(values))}-{fmt.format(max(values))}]"


def bench(endpoint: str, work: Path, framework: str, count: int) -> str:
    loggers = [k for k, need in LOGGERS[framework].items() if need is None or importlib.util.find_spec(need)]
    missing = [k for k in LOGGERS[framework] if k not in loggers]
    columns: dict[str, dict[str, list[float]]] = {k: {} for k in loggers}
    for r in range(count):
        order = loggers[r % len(loggers) :] + loggers[: r % len(loggers)]
        this_round = {k: _one(endpoint, work, framework, k, r) for k in order}
        for k, result in this_round.items():
            values = {
                "hooks": sum(result["hooks"]) / result["steps"] * 1e6,
                "p99": _p99(result["hooks"]) * 1e6,
                "own": sum(result["own"]) / result["steps"] * 1e6,
                "own_p99": _p99(result["own"]) * 1e6,
                "wall": result["wall"],
                "ratio": result["wall"] / this_round["none"]["wall"],
                "cpu": result["cpu"],
                "cpu_ratio": result["cpu"] / this_round["none"]["cpu"],
            }
            for name, value in values.items():
                columns[k].setdefault(name, []).append(value)
        print(f"  {framework} round {r + 1}/{count} done", flush=True)
    what = "in SummaryWriter's add_* calls" if framework == "tensorboard" else "in its callbacks"
    lines = [
        f"{framework}: {STEPS} steps, {count} rounds (interleaved), {_machine()}; medians [min-max]",
        "",
        f"| logger | time {what} per step, us | p99 call, us | clearml-relay's own part per step, us "
        "| its p99 call, us | training wall s | wall ratio to none | training CPU s | CPU ratio to none |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for k in loggers:
        c = columns[k]
        own = f"{_spread(c['own'], '{:.0f}')} | {_spread(c['own_p99'], '{:.0f}')}" if k == "relay" else "| "
        lines.append(
            f"| {k} | {_spread(c['hooks'], '{:.0f}')} | {_spread(c['p99'], '{:.0f}')} | {own} "
            f"| {_spread(c['wall'], '{:.2f}')} | {_spread(c['ratio'])} | {_spread(c['cpu'], '{:.2f}')} "
            f"| {_spread(c['cpu_ratio'])} |"
        )
    if missing:
        lines += ["", f"Left out (package not installed): {', '.join(missing)}."]
    return "\n".join(lines)


def _machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())  # fmt: skip
    return f"{os.cpu_count()} cores ({cpu}), CPU, Python {platform.python_version()}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--framework", choices=tuple(LOGGERS), action="append", help="default: all three")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-frameworks-") as tmp:
        work = Path(tmp)
        demo._isolate(work)
        config = CollectorConfig.from_env(
            bind="tcp://127.0.0.1:0", data_dir=work / "collector", backend="clearml", offline=True
        )
        with Collector(config) as collector:
            for framework in args.framework or list(LOGGERS):
                print(bench(collector.bound_endpoint, work, framework, args.rounds), "\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
