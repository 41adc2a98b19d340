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


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["builtin", "relay"], required=True)
    ap.add_argument("--task", choices=["detect", "segment", "classify", "pose", "obb"], required=True)
    ap.add_argument("--data", required=True, help="dataset: data.yaml, or a folder for classify")
    ap.add_argument("--project", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--result", type=Path, required=True)
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

        hooks = producer.attach(model)
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
    args.result.write_text(json.dumps(result))
    return status


if __name__ == "__main__":
    sys.exit(main())
