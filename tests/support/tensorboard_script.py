"""A script that logs to TensorBoard only, captured into a relay run (tests/e2e/test_frameworks.py).

It opens a ``producer.Run``, calls ``producer.capture_tensorboard()`` unless ``--no-capture``,
and uses a ``SummaryWriter`` as any TensorBoard codebase does: scalars, grouped scalars, an
image, a histogram, text, a matplotlib figure and hparams. Writes ``--result`` (JSON): the run
id and the forwarding's slowest call in seconds.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from torch.utils.tensorboard import SummaryWriter

import producer
from producer.integrations import tensorboard

slowest: dict[str, float] = {}
_forward = tensorboard._forward


@functools.wraps(_forward)
def timed(name: str, *args: Any) -> None:
    start = time.perf_counter()
    try:
        _forward(name, *args)
    finally:
        slowest[name] = max(slowest.get(name, 0.0), time.perf_counter() - start)


tensorboard._forward = timed  # type: ignore[assignment]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--logdir", type=Path, required=True)
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--no-capture", action="store_true")
    opts = parser.parse_args()
    run = producer.Run("frameworks", "tensorboard", tags=["e2e"])
    if not opts.no_capture:
        producer.capture_tensorboard()
    writer = SummaryWriter(str(opts.logdir))
    torch.manual_seed(0)
    for step in range(5):
        writer.add_scalar("loss/train", 1.0 / (step + 1), step)
        writer.add_scalar("accuracy", torch.tensor(step / 10), global_step=step)
        writer.add_scalars("lr", {"head": 0.1 * step, "backbone": 0.01}, step)
    writer.add_scalar("no_step", 3.5)
    writer.add_image("samples/first", torch.linspace(0, 1, 3 * 6 * 4).reshape(3, 6, 4), 2)
    writer.add_image(
        "samples/gray", torch.arange(24, dtype=torch.uint8).reshape(4, 6, 1), 3, dataformats="HWC"
    )
    writer.add_histogram("weights/layer1", torch.randn(500), 4)
    writer.add_histogram("weights/layer2", torch.arange(10.0), 4, bins=5)
    writer.add_text("notes", "first **run**", 0)
    writer.add_text("notes/detail", "a second note", 1)
    figure = plt.figure()
    plt.plot([1, 4, 9], label="squares")
    writer.add_figure("charts/squares", figure, 1)
    writer.add_hparams({"lr": 0.1, "optimizer": "sgd"}, {"hparam/accuracy": 0.9}, run_name="hp")
    writer.close()
    producer.release_tensorboard()
    writer_after = SummaryWriter(str(opts.logdir / "after"))
    writer_after.add_scalar("after_release", 1.0, 0)  # not forwarded: released
    writer_after.close()
    run.close(wait=False)
    opts.result.write_text(json.dumps({"run": run.id, "slowest": slowest}))


if __name__ == "__main__":
    main()
