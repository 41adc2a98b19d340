"""The compose test's training, run in the trainer container (``tests/e2e/test_container.py``).

A one-epoch YOLO training on the generated dataset at ``argv[1]``, with the hooks attached, offline
(Ultralytics' private config directory with a font, as the demo does). Prints ``run <id>``.
"""

import os
import shutil
import sys
from pathlib import Path

import matplotlib

config = Path.home() / "yolo-config"
(config / "Ultralytics").mkdir(parents=True, exist_ok=True)
font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
for folder in (config, config / "Ultralytics"):
    shutil.copy(font, folder / "Arial.ttf")
os.environ.update(YOLO_CONFIG_DIR=str(config), YOLO_OFFLINE="true")

from ultralytics import YOLO  # noqa: E402 - after its configuration

import producer  # noqa: E402
from collector.service.demo_data import only_clearml_integration, tiny_training  # noqa: E402

only_clearml_integration()
model = YOLO("yolov8n.yaml")
hooks = producer.attach(model, project="compose", name="trainer")
model.train(data=sys.argv[1], **tiny_training("detect", Path.home() / "runs", "trainer", 1))
assert hooks.wait(120), "the run was not delivered"
print(f"run {hooks.run.id}", flush=True)
