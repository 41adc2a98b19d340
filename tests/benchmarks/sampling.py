"""A sampling profile of a running process (py-spy), reduced to its top entries for BENCHMARKS.md.

:class:`Sampler` attaches ``py-spy record`` to a process (``--nonblocking``: the process is not
paused; idle threads are not sampled) and, when stopped, reads its collapsed stacks back:
:class:`Profile` holds the share of samples each function is on top of the stack (*self*) and
anywhere on it (*inclusive*), summed over all threads.
"""

from __future__ import annotations

import collections
import contextlib
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Final

#: Samples per second (py-spy's default is 100; fewer keep its own CPU out of the measurement).
RATE: Final = 50


@dataclass(frozen=True)
class Profile:
    what: str
    samples: int
    #: (share of samples, function) with the function on top of the stack, largest first.
    self_share: list[tuple[float, str]]
    #: (share of samples, function) with the function anywhere on the stack, largest first.
    inclusive: list[tuple[float, str]]


def py_spy() -> str | None:
    """The py-spy executable beside this interpreter, or on PATH; None if there is none."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


class Sampler:
    """``py-spy record`` on ``pid`` from now until :meth:`stop` (``None`` from stop without py-spy)."""

    def __init__(self, pid: int, out: Path, what: str) -> None:
        self.out, self.what = out, what
        exe = py_spy()
        self.proc = None
        if exe is not None:
            command = [exe, "record", "-p", str(pid), "-r", str(RATE), "--nonblocking", "--gil"]
            self.proc = subprocess.Popen(
                [*command, "--format", "raw", "-o", str(out)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )

    def stop(self, top: int = 12) -> Profile | None:
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGINT)  # py-spy writes what it sampled on Ctrl-C
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        with contextlib.suppress(FileNotFoundError):
            return read(self.out, self.what, top)
        return None


def read(path: Path, what: str, top: int) -> Profile:
    """The top ``top`` entries of a py-spy ``--format raw`` file (``thread;frame;...;frame count``)."""
    own: collections.Counter[str] = collections.Counter()
    anywhere: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [_function(frame) for frame in stack.split(";")[1:]]  # [0] names the thread
        total += int(count)
        if frames:
            own[frames[-1]] += int(count)
        for frame in set(frames):
            anywhere[frame] += int(count)
    share = 1 / total if total else 0.0
    return Profile(
        what,
        total,
        [(n * share, f) for f, n in own.most_common(top)],
        [(n * share, f) for f, n in anywhere.most_common(top * 2) if not _plumbing(f)][:top],
    )


def _function(frame: str) -> str:
    """``name (path/to/module.py:line)`` -> ``name (module.py)``: one entry per function, not per line."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rpartition(":")[0]
    return f"{name} ({Path(path).name})" if path else name


def _plumbing(function: str) -> bool:
    """Thread start-up frames: on every stack, they say nothing."""
    plumbing = {"Thread.run", "Thread._bootstrap", "Thread._bootstrap_inner"}
    return function.split(" ", maxsplit=1)[0] in plumbing
