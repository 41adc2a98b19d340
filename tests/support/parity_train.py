"""One tiny YOLO training for the parity test, run as a plain script (never under pytest).

``--mode builtin``: Ultralytics' own ClearML callback logs it (ClearML offline mode); it is what
users get today and the oracle of the parity test. Ultralytics registers its integrations only
outside pytest, hence a script. In offline mode that callback crashes the training at the very
end (clearml issue 1243, see docs/clearml-notes.md); the crash is reported, not hidden: exit status 3.

``--mode relay``: the same training with clearml-relay's hooks attached; the collector is found
through ``CLEARML_RELAY_ENDPOINT``.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path
from typing import Any


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["builtin", "relay"], required=True)
    ap.add_argument("--task", choices=["detect", "segment", "classify", "pose", "obb"], required=True)
    ap.add_argument("--data", required=True, help="dataset: data.yaml, or a folder for classify")
    ap.add_argument("--project", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--result", type=Path, required=True)
    ap.add_argument("--plots", choices=["trainer", "collector"], help="relay: the hooks' plots option")
    args = ap.parse_args()

    from ultralytics import YOLO

    from collector.service.demo_data import only_clearml_integration, tiny_training

    only_clearml_integration()
    cfg = {
        "detect": "yolov8n.yaml",
        "segment": "yolov8n-seg.yaml",
        "classify": "yolov8n-cls.yaml",
        "pose": "yolov8n-pose.yaml",
        "obb": "yolov8n-obb.yaml",
    }[args.task]
    model = YOLO(cfg)
    hooks = None
    if args.mode == "relay":
        import producer

        hooks = producer.attach(model, **({"plots": args.plots} if args.plots else {}))
    result: dict[str, object] = {"mode": args.mode}
    try:
        model.train(data=args.data, **tiny_training(args.task, Path(args.project), args.name, args.epochs))
        status = 0
    except Exception as exc:
        traceback.print_exc()
        result["error"] = f"{type(exc).__name__}: {exc}"
        status = 3
    if hooks is not None and hooks.run is not None:
        result["run"] = hooks.run.id
        result["validator"] = _validator(model.trainer)
    args.result.write_text(json.dumps(result))
    return status


def _validator(trainer: Any) -> dict[str, Any]:
    """What the final validation held: the oracle of the interactive plots (and the files drawn)."""
    metrics = trainer.validator.metrics
    part = {"(B)": "box", "(M)": "seg", "(P)": "pose"}
    curves = {}
    for title, (x, y, xlabel, ylabel) in zip(metrics.curves, metrics.curves_results, strict=True):
        owner = getattr(metrics, part[title[-3:]])
        curves[title] = {
            "x": [float(v) for v in x],
            "y": [[float(v) for v in row] for row in y],
            "classes": [int(c) for c in owner.ap_class_index],
            "xlabel": xlabel,
            "ylabel": ylabel,
        }
    matrix = metrics.confusion_matrix
    return {
        "names": {int(k): v for k, v in getattr(metrics, "names", {}).items()},
        "curves": curves,
        "confusion": matrix.matrix.tolist(),
        "confusion_names": list(matrix.names.values()),
        "confusion_task": matrix.task,
        "summary": [
            {k: v if isinstance(v, str) else float(v) for k, v in r.items()} for r in metrics.summary()
        ],
        "files": sorted(p.name for p in Path(trainer.save_dir).iterdir()),
        "save_dir": str(trainer.save_dir),
    }


if __name__ == "__main__":
    sys.exit(main())
