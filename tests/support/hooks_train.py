"""One tiny YOLO training through ``producer.callbacks``, run as a plain script by test_hooks.py.

Outside pytest Ultralytics registers its own ClearML callback (when clearml is installed), so
this is where the hooks must prove they switch it off. The producer is configured from the
environment alone (``CLEARML_RELAY_ENDPOINT``, ``CLEARML_RELAY_SPOOL_DIR``), as in a DDP child.
The script exits right after ``model.train()``: delivering the run's last files and its close is
the hooks' job at interpreter exit. It writes what the test cannot see from outside to
``--result`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--project", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--result", type=Path, required=True)
    args = ap.parse_args()

    from ultralytics import YOLO

    import producer
    from collector.service.demo_data import only_clearml_integration, tiny_training
    from producer.integrations.ultralytics import default_hooks

    only_clearml_integration()
    model = YOLO("yolov8n.yaml")
    seen: dict[str, list[str]] = {}

    def recorder(key: str) -> Callable[[Any], None]:
        def record(trainer: Any) -> None:
            modules = {getattr(fn, "__module__", "") for fns in trainer.callbacks.values() for fn in fns}
            seen[key] = sorted(modules)

        return record

    # Before the hooks: sees the integrations the trainer added; after them: what is left.
    model.add_callback("on_pretrain_routine_start", recorder("before"))
    for event, fn in producer.callbacks.items():
        model.add_callback(event, fn)
    model.add_callback("on_train_start", recorder("after"))
    model.train(
        data=args.data, **tiny_training("detect", Path(args.project).absolute(), args.name, args.epochs)
    )
    hooks = default_hooks()
    result = {
        "callback_modules_before_hooks": seen.get("before", []),
        "trainer_callback_modules": seen.get("after", []),
        "run": hooks.run.id if hooks.run is not None else None,
        "timings": hooks.timings(),
    }
    args.result.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
