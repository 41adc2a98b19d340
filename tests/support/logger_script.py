"""The same ClearML-style script run two ways, for the logger parity test (never under pytest).

``--mode clearml``: ``clearml.Task.init`` in ClearML offline mode, every call on the real
``clearml.Logger`` and ``Task``; its session is the oracle. ``--mode relay``: the same calls on a
``producer.Run`` and its ``run.logger``; the collector is found through ``CLEARML_RELAY_ENDPOINT``.

A plain script because ClearML's own warnings (DeprecationWarning, UserWarning) would fail under
pytest's ``filterwarnings = error``. It writes ``{"mode", "run"}`` (the relay's run id) to
``--result``, and exits 0 only when every call returned.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from logger_calls import report_everything

PROJECT = "logger-parity"
NAME = "every call"


class Options:
    """An object whose class attributes ``Task.connect`` keeps (ClearML connects an object's attributes)."""

    batch = 16
    optimizer = "SGD"
    augment = True
    _private = "never connected"


def task_calls(task: Any, workdir: Path) -> None:
    """``Task``'s hyperparameter and configuration entry points, as a training script calls them."""
    task.set_parameters({"Args/epochs": 3, "Args/lr": 0.01})
    task.connect({"momentum": 0.9, "nesterov": False, "betas": [0.9, 0.999]}, name="optimizer")
    task.connect(argparse.Namespace(imgsz=64, device="cpu"), name="cli")
    task.connect(Options, name="options")
    task.update_parameters({"Args/seed": 7})
    task.connect_configuration(
        {"model": {"depth": 3, "width": 0.25}, "classes": ["a", "b"]}, name="model cfg"
    )
    cfg = workdir / "data.yaml"
    cfg.write_text("path: /data\ntrain: images/train\nnames:\n  0: cat\n")
    task.connect_configuration(cfg, name="dataset", description="the dataset file")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["clearml", "relay"], required=True)
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--result", type=Path, required=True)
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"mode": args.mode}
    if args.mode == "clearml":
        from clearml import Task

        Task.set_offline(True)
        task = Task.init(
            project_name=PROJECT,
            task_name=NAME,
            auto_connect_arg_parser=False,
            auto_connect_frameworks=False,
            auto_resource_monitoring=False,
            auto_connect_streams=False,
        )
        task_calls(task, args.workdir)
        report_everything(task.get_logger(), args.workdir / "files")
        task.close()
    else:
        import producer

        run = producer.Run(PROJECT, NAME)
        result["run"] = run.id
        task_calls(run, args.workdir)
        report_everything(run.logger, args.workdir / "files")
        result["closed"] = run.close()
    args.result.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
