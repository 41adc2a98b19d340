"""Helpers for the service tests: a real collector process with its HTTP endpoint, and scrapes of it."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from e2e import free_port, start_collector, stop, wait_for, wait_ready
from prometheus_client.parser import text_string_to_metric_families

# Loopback only, never through a proxy the environment may name.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class Service:
    proc: subprocess.Popen[bytes]
    endpoint: str
    http: str  # http://127.0.0.1:PORT
    data: Path
    log: Path

    def healthz(self) -> tuple[int, str]:
        return healthz(self.http)

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return scrape(self.http)


def healthz(http: str, timeout: float = 5.0) -> tuple[int, str]:
    """(status code, body) of GET /healthz."""
    try:
        with _OPENER.open(f"{http}/healthz", timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def scrape(http: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of GET /metrics, by (sample name, sorted labels), parsed as Prometheus does."""
    with _OPENER.open(f"{http}/metrics", timeout=5.0) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def sample(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], metric: str, /, **labels: str
) -> float:
    """One sample's value; 0.0 when the collector has not reported it (yet)."""
    return samples.get((metric, tuple(sorted(labels.items()))), 0.0)


def stuck_backend(data: Path, run: str) -> None:
    """Make the JSONL backend fail every event of ``run``: its records file is ``/dev/full``.

    Each write then fails with ENOSPC, a real error from a real device, so the run's events are
    journaled (and acknowledged) but never applied: a backlog, as a ClearML server that is down
    makes one. Removing the link (with the collector stopped) lets the next start apply them.
    Never read the link: /dev/full reads as endless zeros.
    """
    records = data / "records"
    records.mkdir(parents=True, exist_ok=True)
    (records / f"{run}.jsonl").symlink_to("/dev/full")


def start_service(
    tmp_path: Path, *args: str, environ: dict[str, str] | None = None, prefix: tuple[str, ...] = ()
) -> Service:
    """A JSONL collector on free ports with /metrics and /healthz, answering when this returns.

    ``args`` go to ``clearml-relay collector``; ``prefix`` before the command (it must exec it).
    """
    endpoint, port = f"tcp://127.0.0.1:{free_port()}", free_port()
    data, log = tmp_path / "data", tmp_path / "collector.log"
    proc = start_collector(
        endpoint, data, log, "--metrics-port", str(port), *args, environ=environ, prefix=prefix
    )
    service = Service(proc, endpoint, f"http://127.0.0.1:{port}", data, log)
    try:
        wait_ready(endpoint, proc)
        wait_for(lambda: _answers(service), 10, "the HTTP endpoint to answer")
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return service


def _answers(service: Service) -> bool:
    try:
        healthz(service.http, timeout=1.0)
    except OSError:
        return False
    return True


@contextlib.contextmanager
def running_service(
    tmp_path: Path, *args: str, environ: dict[str, str] | None = None, prefix: tuple[str, ...] = ()
) -> Iterator[Service]:
    """:func:`start_service`, stopped with SIGTERM at the end (killed if still running after 30 s)."""
    service = start_service(tmp_path, *args, environ=environ, prefix=prefix)
    try:
        yield service
    finally:
        if service.proc.poll() is None:
            try:
                stop(service.proc, signal.SIGTERM, timeout=30)
            except subprocess.TimeoutExpired:
                service.proc.kill()
                service.proc.wait()
