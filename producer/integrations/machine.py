"""Machine statistics of the training host, as ClearML's resource monitor names them.

CPU and memory come from ``/proc`` (Linux; elsewhere they are left out), so the producer needs
no psutil. GPU figures come from torch, and only when the training process imported torch
already and initialised CUDA: this module never imports torch, and it never touches a GPU the
process does not use (querying another device would create a CUDA context there, hundreds of MiB
on a GPU that belongs to another DDP rank). Sampling runs on a background thread; nothing here
is meant for the training thread.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Final

from producer.once import Once

log = logging.getLogger(__name__)

_PROC_STAT: Final = Path("/proc/stat")
_PROC_MEMINFO: Final = Path("/proc/meminfo")
_GIB: Final = float(2**30)


class MachineSampler:
    """Turns successive looks at the machine into ``{name: value}`` samples.

    CPU usage is the busy share of all CPU time between two calls of :meth:`sample` (the first
    call has no interval yet and leaves it out).

    """

    def __init__(self) -> None:
        self._cpu: tuple[int, int] | None = _cpu_times()
        self._once = Once()

    def sample(self) -> dict[str, float]:
        """One sample; whatever cannot be measured is left out.

        Names: ``cpu_usage`` (%), ``memory_used_gb``, ``memory_free_gb``, and for the GPU the
        process trains on ``gpu_<i>_utilization`` (%), ``gpu_<i>_mem_usage`` (%),
        ``gpu_<i>_mem_used_gb``, ``gpu_<i>_mem_free_gb``.
        """
        values: dict[str, float] = {}
        cpu = _cpu_times()
        if cpu is not None and self._cpu is not None:
            busy, total = cpu[0] - self._cpu[0], cpu[1] - self._cpu[1]
            if total > 0:
                values["cpu_usage"] = round(100.0 * busy / total, 2)
        self._cpu = cpu
        memory = _memory_kib()
        if memory is not None:
            total_kib, available_kib = memory
            values["memory_used_gb"] = round((total_kib - available_kib) * 1024 / _GIB, 3)
            values["memory_free_gb"] = round(available_kib * 1024 / _GIB, 3)
        try:
            values.update(_gpu())
        except Exception as exc:  # noqa: BLE001 - a monitor must not fail the run's other samples
            self._once.log(log, logging.INFO, type(exc).__name__, "clearml-relay: no GPU statistics: %r", exc)
        return values


def _cpu_times() -> tuple[int, int] | None:
    """``(busy, total)`` jiffies of all CPUs since boot, from the first line of ``/proc/stat``."""
    try:
        with _PROC_STAT.open("rb") as f:
            fields = f.readline().split()
        times = [int(v) for v in fields[1:]]
    except (OSError, ValueError):
        return None
    if len(times) < 4:
        return None
    # user nice system idle iowait irq softirq steal [guest guest_nice: already inside user/nice]
    total = sum(times[:8])
    idle = times[3] + (times[4] if len(times) > 4 else 0)
    return total - idle, total


def _memory_kib() -> tuple[int, int] | None:
    """``(MemTotal, MemAvailable)`` in KiB from ``/proc/meminfo``."""
    try:
        found = {}
        for line in _PROC_MEMINFO.read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("MemTotal", "MemAvailable"):
                found[key] = int(rest.split()[0])
        return found["MemTotal"], found["MemAvailable"]
    except (OSError, ValueError, KeyError, IndexError):
        return None


def _gpu() -> dict[str, float]:
    torch: Any = sys.modules.get("torch")  # only if the training imported it: never import it here
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return {}
    index = int(torch.cuda.current_device())  # the device this process trains on: it has a context
    free, total = (int(v) for v in torch.cuda.mem_get_info(index))
    prefix = f"gpu_{index}_"
    values = {
        prefix + "mem_used_gb": round((total - free) / _GIB, 3),
        prefix + "mem_free_gb": round(free / _GIB, 3),
        prefix + "mem_usage": round(100.0 * (total - free) / total, 2) if total else 0.0,
    }
    try:
        values[prefix + "utilization"] = float(torch.cuda.utilization(index))  # NVML: needs pynvml
    except Exception as exc:  # noqa: BLE001 - NVML missing or refused: memory figures still count
        log.debug("clearml-relay: no GPU utilisation: %r", exc)
    return values
