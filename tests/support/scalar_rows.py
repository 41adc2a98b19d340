"""Report the same scalars through the SDK (``Logger.report_scalar``) and the collector's rows.

Run by tests/integration/test_clearml_rows.py, in a process of its own (offline or online is
process-wide): two tasks get the same calls at the same frozen clock, one through ClearML's
own ``Logger.report_scalar`` / ``report_single_value``, one through
``compat.TaskWriters.report_scalars`` (the collector's batch path), drained after the same calls. Prints one
JSON line: ``{"sdk": [task id, session], "rows": [task id, session]}`` (sessions empty online).

    python scalar_rows.py
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from clearml import Task

from collector.backends.clearml import compat

#: (title, series, value, iteration): the shapes a scalar can take.
CALLS = [
    ("loss", "train", 0.5, 0),
    ("loss", "train", 1e-07, 1),
    ("metrics/mAP50(B)", "val/box", 1e20, 2),
    ('ünïcode "quoted"', "séries\\n", -3.25, 3),
    ("int value", "x", 7, -1),
    ("big iteration", "x", 2.0, 2**40),
    ("nan", "x", math.nan, 4),
    ("inf", "x", -math.inf, 5),
    ("Summary", "acc", 0.875, -(2**31)),
]


def main() -> int:
    frozen = 1796000000.123
    time.time = lambda: frozen  # both paths take their timestamp from the clock
    compat.install()
    compat.start_shared_pools()
    tasks = {}
    for how in ("sdk", "rows"):
        task = compat.create_task("rows-pin", how, Task.TaskTypes.training)
        writers = compat.TaskWriters(task)
        assert writers._scalar_extra is not None, "the batch path fell back to the SDK's"
        for batch in (CALLS[:4], CALLS[4:]):  # two drains: two lines offline, two requests online
            if how == "rows":
                writers.report_scalars(batch)
            else:
                for title, series, value, iteration in batch:
                    if title == "Summary":
                        writers.logger.report_single_value(series, value)
                    else:
                        writers.logger.report_scalar(title, series, value, iteration)
            writers.drain()
        folder = task.get_offline_mode_folder() if task.is_offline() else None
        tasks[how] = [task.id, str(folder) if folder else ""]
    print(json.dumps(tasks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
