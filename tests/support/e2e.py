"""Helpers for end-to-end tests: real collector and producer processes, waits with deadlines."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq

from producer.wire import protocol
from producer.wire.recordlog import HEADER_BYTES, MAGIC, list_segments

if TYPE_CHECKING:
    from clearml_server import ClearMLServerDouble

from waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
PRODUCE = Path(__file__).resolve().parent / "produce.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def env(**extra: str) -> dict[str, str]:
    out = dict(os.environ)
    out["PYTHONPATH"] = str(ROOT) + os.pathsep + out.get("PYTHONPATH", "")
    out.update(extra)
    return out


def start_collector(
    endpoint: str,
    data_dir: Path,
    log: Path,
    *args: str,
    environ: dict[str, str] | None = None,
    prefix: tuple[str, ...] = (),
) -> subprocess.Popen[bytes]:
    """Start a collector process (JSONL backend unless ``args`` say otherwise).

    ``prefix`` goes before the command; it must ``exec`` the rest, so that the process started is
    the collector itself (signals reach it).
    """
    with log.open("ab") as out:
        return subprocess.Popen(
            [
                *prefix,
                sys.executable,
                "-m",
                "collector",
                "collector",
                "--bind",
                endpoint,
                "--data-dir",
                str(data_dir),
                "--backend",
                "jsonl",
                *args,
            ],
            env=env() if environ is None else {**environ, "PYTHONPATH": env()["PYTHONPATH"]},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def status(endpoint: str, timeout: float = 2.0) -> protocol.StatusReply | None:
    """Ask a collector for its status; None when it does not answer in time."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    try:
        sock.connect(endpoint)
        sock.send_multipart([protocol.HEADER, protocol.encode(protocol.StatusRequest())])
        if not sock.poll(int(timeout * 1000)):
            return None
        reply = protocol.decode_reply(sock.recv_multipart())
        return reply if isinstance(reply, protocol.StatusReply) else None
    finally:
        sock.close()


def completed(endpoint: str, run: str) -> bool:
    """Whether the collector at ``endpoint`` has the run completed and applied all it journaled."""
    reply = status(endpoint)
    info = next((r for r in reply.runs if r.run == run), None) if reply else None
    return info is not None and info.state == "completed" and info.applied >= info.journaled


def wait_ready(endpoint: str, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"collector exited with {proc.returncode} before it was ready")
        return status(endpoint, timeout=0.5) is not None

    wait_for(ready, timeout, "the collector to answer a status request")


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    return proc.wait(timeout=timeout)


def produce(
    endpoint: str, spool: Path, workdir: Path, name: str, events: int, *args: str, output: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start ``produce.py``; its output comes on a pipe, or goes to the file ``output``."""
    command = [
        sys.executable,
        str(PRODUCE),
        "--name",
        name,
        "--events",
        str(events),
        "--workdir",
        str(workdir),
        *args,
    ]
    environ = env(CLEARML_RELAY_ENDPOINT=endpoint, CLEARML_RELAY_SPOOL_DIR=str(spool))
    if output is None:
        return subprocess.Popen(command, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    with output.open("ab") as out:
        return subprocess.Popen(command, env=environ, stdout=out, stderr=subprocess.STDOUT)


def applied(data_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """What the collector's JSONL record backend applied, per run, in order."""
    out: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(data_dir.rglob("*.jsonl")):
        lines = path.read_text().splitlines()
        records = [json.loads(line) for line in lines if line.endswith("}")]
        if records:
            out[records[0]["event"]["run"]] = records
    return out


def applied_count(data_dir: Path) -> int:
    return sum(len(v) for v in applied(data_dir).values())


def check_exactly_once(
    data_dir: Path, manifest: Path, events: int, model: bool, files_root: Path | None = None
) -> None:
    """Every event of the run reached the backend once, in order, files byte for byte.

    ``files_root``: where the collector's root directory is seen from here, when its file store
    is in a mount namespace of its own (``/proc/<pid>/root``).
    """
    expected = json.loads(manifest.read_text())
    records = applied(data_dir)[expected["run"]]
    seqs = [r["seq"] for r in records]
    total = events + 2 + (1 if model else 0)  # RunOpen, the events, the model, RunClose
    assert seqs == list(range(1, total + 1)), f"not exactly once / in order: {len(seqs)} records"
    kinds = [r["event"]["t"] for r in records]
    assert kinds[0] == "open"
    assert kinds[-1] == "close"
    for record in records:
        event = record["event"]
        if event["t"] in ("image", "model"):
            key = str(event["iteration"]) if event["t"] == "image" else "-1"
            assert event["file"]["sha256"] == expected["files"][key]
            stored = Path(record["file"])
            content = (files_root / stored.relative_to("/") if files_root else stored).read_bytes()
            assert hashlib.sha256(content).hexdigest() == expected["files"][key]
        elif event["t"] == "scalar":
            assert event["value"] == float(event["iteration"])


def kill_while_running(
    producers: dict[str, subprocess.Popen[bytes]],
    start: Callable[[], subprocess.Popen[bytes]],
    endpoint: str,
    collector: subprocess.Popen[bytes],
    pauses: tuple[float, float],
    seed: int,
) -> tuple[subprocess.Popen[bytes], int]:
    """kill -9 the collector at random moments and restart it, until every producer has ended.

    Each kill comes a random pause after the collector answers again, so that the runs make
    progress however slowly a loaded machine starts it. Returns the collector now running and
    how many times it was killed; each producer must have exited 0 with everything delivered.
    """
    rng = random.Random(seed)
    kills = 0
    try:
        while any(p.poll() is None for p in producers.values()):
            wait_ready(endpoint, collector, timeout=120)
            alive = next((p for p in producers.values() if p.poll() is None), None)
            if alive is None:  # the last one ended while the collector came back
                break
            # Let the runs progress for a random while (returns early if they end).
            with contextlib.suppress(subprocess.TimeoutExpired):
                alive.wait(timeout=rng.uniform(*pauses))
            collector.send_signal(signal.SIGKILL)
            collector.wait(timeout=10)
            kills += 1
            collector = start()
        outputs = {name: proc.communicate(timeout=60)[0].decode() for name, proc in producers.items()}
    except BaseException:
        # The caller only knows the collector it started: leave no process behind.
        for proc in (collector, *producers.values()):
            proc.kill()
            proc.communicate()
        raise
    for name, proc in producers.items():
        assert proc.returncode == 0, f"{name}: {outputs[name]}"
        assert "delivered=True" in outputs[name], f"{name}: {outputs[name]}"
    return collector, kills


def sync(endpoint: str, spool: Path, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """``clearml-relay sync`` of ``spool`` to ``endpoint``; asserts it exits 0."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "collector",
            "sync",
            "--spool-dir",
            str(spool),
            "--endpoint",
            endpoint,
            "--timeout",
            str(timeout),
        ],
        env=env(),
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout + 30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def runs_table(data_dir: Path) -> dict[str, dict[str, Any]]:
    """``clearml-relay runs --json`` for ``data_dir``, by run id (a separate process, read-only)."""
    result = subprocess.run(
        [sys.executable, "-m", "collector", "runs", "--data-dir", str(data_dir), "--json"],
        env=env(),
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return {row["run"]: row for row in json.loads(result.stdout)}


def check_online_exactly_once(
    server: ClearMLServerDouble, manifest: dict[str, Any], name: str, events: int, every: int
) -> None:
    """The run ``name`` of ``produce.py`` reached the server once: its task, every event, file and model."""
    task = server.task(name)
    assert task is not None, f"no task {name!r} on the server"
    assert server.project_name(task["project"]) == "e2e"
    assert "e2e" in task["tags"]
    scalars = server.events(task["id"], type="training_stats_scalar")
    assert sorted(e["iter"] for e in scalars if e["metric"] == "train") == [
        i for i in range(events) if i % every
    ]
    images = server.events(task["id"], type="training_debug_image")
    assert sorted(e["iter"] for e in images) == list(range(0, events, every))
    for image in images:
        content = server.upload(image["url"])
        assert content is not None, f"image {image['url']} never reached the fileserver"
        assert hashlib.sha256(content).hexdigest() == manifest["files"][str(image["iter"])]
    models = [m for m in server.models.values() if m.get("task") == task["id"]]
    assert len(models) == 1, f"{len(models)} models registered for one run"
    weights = server.upload(models[0]["uri"])
    assert weights is not None, f"the model was registered as {models[0]['uri']} but never uploaded"
    assert hashlib.sha256(weights).hexdigest() == manifest["files"]["-1"]
    assert task["status"] == "completed"
    assert len([t for t in server.tasks.values() if t.get("name") == name]) == 1, "one task per run"


def damage_log(directory: Path, seq: int) -> None:
    """Damage a record log (outbox or journal) on disk as a crash and a bad disk would.

    Flips one byte in the body of record ``seq`` (its checksum no longer matches) and leaves a
    torn record at the end of the newest segment, as a process killed in the middle of an
    append does.
    """
    segments = [path for _, path in list_segments(directory)]
    assert segments, f"no segments in {directory}"
    for segment in segments:
        raw = bytearray(segment.read_bytes())
        pos = 0
        while pos + HEADER_BYTES <= len(raw):
            length = int.from_bytes(raw[pos + 2 : pos + 6], "little")
            if int.from_bytes(raw[pos + 10 : pos + 18], "little") == seq:
                raw[pos + HEADER_BYTES + length // 2] ^= 0xFF
                segment.write_bytes(bytes(raw))
                break
            pos += HEADER_BYTES + length
        else:
            continue
        break
    else:
        raise AssertionError(f"record {seq} is not in {directory}")
    torn = MAGIC + (500).to_bytes(4, "little") + b"\x00" * 20  # a header promising 500 bytes, cut short
    with segments[-1].open("ab") as f:
        f.write(torn)


def private_mounts(*mounts: tuple[str, Path]) -> tuple[str, ...] | None:
    """A command prefix that runs ``mount <arguments> <directory>`` for each pair, seen only by the command.

    The command runs in a mount namespace of its own (``unshare``), so nothing is mounted for
    anyone else, and the mounts vanish with it. None where this machine does not allow it.
    """
    script = " && ".join(f'mount {arguments} "${i + 1}"' for i, (arguments, _) in enumerate(mounts))
    prefix = (
        "unshare", "--mount", "--propagation", "private", "sh", "-c",
        f'{script} && shift {len(mounts)} && exec "$@"', "small-fs", *(str(d) for _, d in mounts),
    )  # fmt: skip
    for _, directory in mounts:
        directory.mkdir(parents=True, exist_ok=True)
    try:
        probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=30, check=False)
    except FileNotFoundError:
        return None
    return prefix if probe.returncode == 0 else None


def private_tmpfs(*directories: Path, size: str) -> tuple[str, ...] | None:
    """:func:`private_mounts` of a small tmpfs on each directory."""
    return private_mounts(*((f"-t tmpfs -o size={size} tmpfs", d) for d in directories))


def script_in(prefix: tuple[str, ...], script: str, *args: str, timeout: float = 120) -> tuple[Any, str]:
    """Run the Python ``script`` with ``args`` behind ``prefix`` (:func:`private_mounts`).

    Returns what it printed as JSON, and its stderr; its failure fails the test with its stderr.
    """
    result = subprocess.run(
        [*prefix, sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), result.stderr


def ext4_image(image: Path, size: str) -> str:
    """A fresh ext4 filesystem of ``size`` in the file ``image``: its :func:`private_mounts` arguments.

    A real disk filesystem (a loop device) where tmpfs will not do: ``O_DIRECT``, for one.
    """
    subprocess.run(["truncate", "-s", size, str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
    return f'-o loop "{image}"'


def fill_up(directory: Path) -> Path:
    """Write a ballast file into ``directory`` until its filesystem has no room left."""
    ballast = directory / "ballast"
    with ballast.open("wb", buffering=0) as f:
        for block in (1 << 20, 4096, 512):
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * block)
    return ballast


def run_homed_on(endpoint: str, endpoints: tuple[str, ...], name: str) -> str:
    """A run id (derived from ``name``) whose rendezvous home over ``endpoints`` is ``endpoint``."""
    from producer.wire.endpoint import home_of

    ids = (hashlib.md5(f"{name}-{i}".encode(), usedforsecurity=False).hexdigest() for i in range(10_000))
    return next(run for run in ids if home_of(run, endpoints) == endpoint)
