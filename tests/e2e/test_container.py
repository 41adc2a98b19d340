"""The collector image, built with podman (``docker/build-image.sh``) and run as a container.

The image is built once per session from ``docker/collector.Dockerfile`` as it is; each test runs
its own container on a volume of its own, publishes the ZeroMQ and HTTP ports on loopback, and
talks to it from this host as producers and monitoring would: a real producer's run lands in the
container's ClearML offline session, read back from the volume. Skipped only where podman cannot
run at all (no podman and not root, so it cannot be installed).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from e2e import free_port, produce, status, wait_for
from sessions import raw_events

from collector.backends.clearml import state as clearml_state

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "docker" / "build-image.sh"
TAG = "clearml-relay-collector:test"
TRAINER_TAG = "clearml-relay-trainer:test"
#: The base root filesystem's cache, kept between runs of the suite, outside the user's home
#: (which the suite must leave as it found it).
IMAGE_CACHE = "/var/tmp/clearml-relay-image-cache"
COMPOSE = ROOT / "docker" / "compose.yaml"
SUPPORT = ROOT / "tests" / "support"
#: Ultralytics and torch of this suite's environment, mounted into the trainer container (PyPI's
#: torch is the 6 GB CUDA build: the trainer image is built without it here).
SITE_PACKAGES = Path(sysconfig.get_paths()["purelib"])
UID = 10001
#: podman's and docker's default stop timeout (``podman stop`` without ``--time``).
STOP_TIMEOUT = 10

pytestmark = pytest.mark.slow


def _podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)}: exit {result.returncode}\n{result.stderr}")
    return result


@pytest.fixture(scope="session")
def image() -> str:
    if shutil.which("podman") is None and os.geteuid() != 0:
        pytest.skip("podman is not installed and this user cannot install it (not root)")
    result = subprocess.run(
        ["bash", str(BUILD), TAG],
        env={
            **os.environ,
            "TRAINER_TAG": TRAINER_TAG,
            "TRAINER_ULTRALYTICS": "",
            "CLEARML_RELAY_IMAGE_CACHE": IMAGE_CACHE,
            "CLEARML_RELAY_IMAGE_PULL": "0",  # no registry is tried: the suite sends nothing off the machine
        },
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return TAG


@dataclass
class Container:
    name: str
    volume: str
    port: int
    metrics_port: int

    @property
    def endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    @property
    def data(self) -> Path:
        """The volume as this host sees it (``/data`` in the container)."""
        return Path(_podman("volume", "inspect", "--format", "{{.Mountpoint}}", self.volume).stdout.strip())

    def host_path(self, inside: str | Path) -> Path:
        return self.data / Path(inside).relative_to("/data")

    def logs(self) -> str:
        result = _podman("logs", self.name, check=False)
        return result.stdout + result.stderr

    def state(self) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(_podman("inspect", "--format", "{{json .State}}", self.name).stdout)
        return out

    def healthz(self) -> int | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/healthz", timeout=2) as reply:
                return int(reply.status)
        except OSError:
            return None


def _run(image: str, name: str, volume: str, port: int, metrics_port: int, *env: str) -> None:
    flags = [f"--env={e}" for e in ("CLEARML_RELAY_OFFLINE=1", *env)]
    _podman(
        "run", "--detach", f"--name={name}", f"--volume={volume}:/data",
        f"--publish=127.0.0.1:{port}:5555", f"--publish=127.0.0.1:{metrics_port}:9555", *flags, image,
    )  # fmt: skip


@pytest.fixture
def container(image: str) -> Iterator[Container]:
    name = f"relay-test-{uuid.uuid4().hex[:8]}"
    box = Container(name=name, volume=f"{name}-data", port=free_port(), metrics_port=free_port())
    _podman("volume", "create", box.volume)
    _run(image, box.name, box.volume, box.port, box.metrics_port)
    try:
        wait_for(lambda: box.healthz() == 200, 60, f"the container's /healthz\n{box.logs()}")
        yield box
    finally:
        _podman("rm", "--force", "--time=0", box.name, check=False)
        _podman("volume", "rm", "--force", box.volume, check=False)


def _session(box: Container, run: str) -> Path:
    state = clearml_state.load(box.data / "clearml", run)
    assert state is not None, f"no ClearML state for run {run}"
    return box.host_path(state.session)


def test_it_runs_as_uid_10001_with_data_on_the_volume_and_answers_its_health_checks(
    container: Container,
) -> None:
    assert _podman("exec", container.name, "id", "-u").stdout.strip() == str(UID)
    assert _podman("healthcheck", "run", container.name, check=False).returncode == 0
    assert container.healthz() == 200
    journal = container.data / "journal"
    assert journal.is_dir()
    assert journal.stat().st_uid == UID
    inspect = json.loads(_podman("image", "inspect", TAG).stdout)[0]
    assert inspect["Healthcheck"]["Test"] == ["CMD", "clearml-relay", "healthcheck"]  # kept: docker format


def test_a_host_producers_run_lands_in_the_containers_offline_session(
    container: Container, tmp_path: Path
) -> None:
    from PIL import Image

    from producer import Run

    picture, model = tmp_path / "batch.png", tmp_path / "best.pt"
    Image.new("RGB", (32, 24), (200, 30, 30)).save(picture)
    model.write_bytes(os.urandom(300_000))
    with Run("container", "host-run", endpoint=container.endpoint, spool_dir=tmp_path / "spool") as run:
        for epoch in range(5):
            run.scalar("train", "loss", 1.0 / (epoch + 1), epoch)
        run.image("Mosaic", "train_batch", 0, picture)
        run.model(model, name="best.pt")
    wait_for(lambda: _completed(container, run.id), 60, f"run {run.id} to complete in the container")
    session = _session(container, run.id)
    events = raw_events(session)
    scalars = sorted(
        e["iter"] for e in events if e["type"] == "training_stats_scalar" and e["metric"] == "train"
    )
    assert scalars == [0, 1, 2, 3, 4]
    assert [(e["metric"], e["variant"]) for e in events if e["type"] == "training_debug_image"] == [
        ("Mosaic", "train_batch")
    ]
    task = json.loads((session / "task.json").read_text())
    assert [m["init"]["name"] for m in task["offline_output_models"]] == ["best.pt"]


def _completed(box: Container, run: str) -> bool:
    reply = status(box.endpoint)
    info = next((r for r in reply.runs if r.run == run), None) if reply else None
    return info is not None and info.state == "completed" and info.applied >= info.journaled


def _backlog(box: Container, tmp_path: Path, events: int) -> str:
    """A run of ``events`` scalars, acknowledged (journaled) but not all applied yet."""
    producer = produce(box.endpoint, tmp_path / "spool", tmp_path / "work", "backlog", events)
    output, _ = producer.communicate(timeout=120)
    assert producer.returncode == 0, output.decode()
    manifest = json.loads((tmp_path / "work" / "backlog.json").read_text())
    run: str = manifest["run"]
    reply = status(box.endpoint)
    info = next(r for r in reply.runs if r.run == run) if reply else None
    assert info is not None
    assert info.journaled == events + 2
    return run


def test_podman_stop_drains_and_exits_0_within_the_stop_timeout(container: Container, tmp_path: Path) -> None:
    _backlog(container, tmp_path, 60_000)
    started = time.monotonic()
    _podman("stop", container.name, timeout=60)  # the default stop timeout: 10 s, then SIGKILL
    took = time.monotonic() - started
    state = container.state()
    assert state["ExitCode"] == 0, container.logs()
    assert took < STOP_TIMEOUT, f"stopped after {took:.1f} s"
    # The collector applies 60,000 scalars in about 2 s now, so the drain may finish the backlog
    # or stop with some of it journaled for the next start (the kill test below covers that).
    logs = container.logs()
    assert "Traceback" not in logs, logs
    reply = status(container.endpoint)
    assert reply is None, "still answering"


def test_a_killed_container_restarted_on_its_volume_delivers_everything_exactly_once(
    container: Container, tmp_path: Path
) -> None:
    events = 30_000
    run = _backlog(container, tmp_path, events)
    _podman("kill", "--signal=KILL", container.name)
    wait_for(lambda: not container.state()["Running"], 30, "the container to die")
    assert container.state()["ExitCode"] == 137
    _podman("start", container.name)
    wait_for(lambda: _completed(container, run), 180, f"run {run} to complete after the restart")
    events_in_session = raw_events(_session(container, run))
    iterations = [
        e["iter"]
        for e in events_in_session
        if e["type"] == "training_stats_scalar" and e["metric"] == "train"
    ]
    assert sorted(iterations) == list(range(events)), "not every scalar exactly once"


def test_a_bad_setting_stops_the_container_with_a_message_naming_it(image: str) -> None:
    name = f"relay-test-{uuid.uuid4().hex[:8]}"
    try:
        result = _podman(
            "run", f"--name={name}", "--env=CLEARML_RELAY_JOURNAL_FSYNC=sometimes", image,
            check=False, timeout=60,
        )  # fmt: skip
    finally:
        _podman("rm", "--force", "--time=0", name, check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "CLEARML_RELAY_JOURNAL_FSYNC='sometimes': expected one of" in result.stderr, result.stderr


def _compose_files(tmp_path: Path, data: Path) -> list[str]:
    """docker/compose.yaml as it is, beside a collector.env, and an override for this machine:
    the images built above, offline, and a trainer that trains on a generated dataset."""
    folder = tmp_path / "docker"
    (folder / "curve").mkdir(parents=True)
    shutil.copy(COMPOSE, folder / "compose.yaml")
    (folder / "collector.env").write_text("CLEARML_RELAY_OFFLINE=1\nCLEARML_RELAY_LOG_FORMAT=text\n")
    volumes = [f"{SITE_PACKAGES}:/host-site:ro", f"{SUPPORT}:/relay-test:ro", f"{data}:{data}:ro"]
    override = {
        "collector": {"image": TAG, "depends_on": "!reset {}"},
        "trainer": {
            "image": TRAINER_TAG,
            "depends_on": "!reset {}",
            "environment": {"PYTHONPATH": "/host-site", "CLEARML_RELAY_FLUSH_TIMEOUT": "120"},
            "volumes": volumes,
            "command": ["python", "/relay-test/compose_train.py", str(data / "data.yaml")],
        },
    }
    lines = ["services:"]
    for service, keys in override.items():
        lines.append(f"  {service}:")
        for key, value in keys.items():  # JSON values are YAML; the !reset tags are not JSON
            lines.append(f"    {key}: {value if isinstance(value, str) else json.dumps(value)}")
    (folder / "compose.test.yaml").write_text("\n".join(lines) + "\n")
    return ["-f", str(folder / "compose.yaml"), "-f", str(folder / "compose.test.yaml")]


def test_compose_brings_up_the_collector_and_the_trainers_yolo_run_lands(image: str, tmp_path: Path) -> None:
    """``podman-compose``: the collector service, then the trainer service (profile ``trainer``).

    Without the clearml-server services (``--no-deps``: their images cannot be fetched here; the
    collector runs offline), and without waiting on the health condition (podman runs no health
    checks without systemd).
    """
    from collector.service.demo_data import make_dataset

    data = make_dataset(tmp_path / "data", "detect").parent
    project = f"relay-test-{uuid.uuid4().hex[:8]}"
    compose = [
        sys.executable,
        "-m",
        "podman_compose",
        "--project-name",
        project,
        *_compose_files(tmp_path, data),
    ]

    def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*compose, *args], capture_output=True, text=True, timeout=timeout, check=False)

    try:
        up = run("up", "--detach", "--no-deps", "--no-build", "collector")
        assert up.returncode == 0, up.stdout + up.stderr
        box = Container(
            name=f"{project}_collector_1", volume=f"{project}_relay-data", port=5555, metrics_port=9555
        )
        wait_for(lambda: box.healthz() == 200, 60, f"the compose collector's /healthz\n{box.logs()}")
        trained = run("--profile", "trainer", "run", "--rm", "--no-deps", "trainer", timeout=600)
        assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
        runs = [line.split()[1] for line in trained.stdout.splitlines() if line.startswith("run ")]
        assert len(runs) == 1, trained.stdout[-3000:]
        wait_for(lambda: _completed(box, runs[0]), 120, f"the trainer's run {runs[0]} to complete")
        events = raw_events(_session(box, runs[0]))
        titles = {e["metric"] for e in events if e["type"] == "training_stats_scalar"}
        assert {"train", "lr", "metrics"} <= titles, titles
        assert any(e["type"] == "plot" for e in events)
    finally:
        run("--profile", "trainer", "down", "--volumes", "--timeout", "0", timeout=120)


def test_the_node_agent_is_in_the_image(image: str) -> None:
    result = _podman("run", "--rm", "--entrypoint=clearml-relay", image, "agent", "--help", check=False)
    assert result.returncode == 0, result.stderr
    assert "--spool-dir" in result.stdout
