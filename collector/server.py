"""The collector service: wires journal, file store, backend, appliers and ingest together.

``Collector(config)`` owns the lifecycle (uvicorn's config -> server pattern): :meth:`start`
serves from a background thread (tests: ``with Collector(cfg) as c:``), :meth:`run` serves in
the calling thread until :meth:`request_stop` (the CLI's signal handler). Stopping is bounded:
ingest stops first (unacked producers resend later, nothing is lost), then the appliers get up
to ``drain_timeout`` to catch up with the journal, then everything closes. A lock file keeps a
second collector off the same data directory.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from pathlib import Path
from types import TracebackType

import zmq

from collector import paths
from collector.appliers import Appliers
from collector.backend import Backend, JsonlBackend
from collector.config import CollectorConfig
from collector.counters import Counters
from collector.files import FileStore
from collector.ingest import POLL_MS, Ingest
from collector.journal import Journal
from producer import protocol

log = logging.getLogger(__name__)

_LOCK = "collector.lock"


class DataDirBusyError(RuntimeError):
    """Another collector holds the data directory."""


def make_backend(config: CollectorConfig) -> Backend:
    """The backend ``config.backend`` names (backends with heavy imports load them here)."""
    if config.backend == "jsonl":
        return JsonlBackend(config.data_dir / paths.RECORDS)
    if config.backend == "clearml":
        from collector import clearml_backend, mode  # noqa: PLC0415  (clearml loads only here)

        offline, reason = mode.decide(config.offline)
        log.info("ClearML %s mode: %s", "offline" if offline else "online", reason)
        return clearml_backend.ClearMLBackend(
            config.data_dir / paths.CLEARML, offline=offline, call_timeout=config.call_timeout
        )
    raise ValueError(f"unknown backend {config.backend!r}")


class Collector:
    """One collector: bind, serve, stop.

    Args:
        config: Settings (see :mod:`collector.config`).
        backend: Use this backend instead of the one ``config.backend`` names (tests); the
            collector closes it when it stops.

    """

    def __init__(self, config: CollectorConfig, *, backend: Backend | None = None) -> None:
        self.config = config
        self.counters = Counters()
        self._backend = backend
        self._stopping = threading.Event()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock_fd = -1
        self._context: zmq.Context[zmq.Socket[bytes]] | None = None
        self._ingest: Ingest | None = None
        self._appliers: Appliers | None = None
        self._journal: Journal | None = None
        self._files: FileStore | None = None
        self._started = 0.0

    # ------------------------------------------------------------------------------- lifecycle

    @property
    def bound_endpoint(self) -> str:
        """The endpoint actually bound (``tcp://127.0.0.1:0`` resolved to its port)."""
        if self._ingest is None:
            raise RuntimeError("the collector is not started")
        return self._ingest.endpoint

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            raise RuntimeError("the collector is not started")
        return self._backend

    def start(self) -> None:
        """Open everything and serve from a background thread."""
        self._open()
        assert self._ingest is not None
        self._thread = threading.Thread(
            target=self._ingest.serve, args=(self._stopping, self._reap), name="collector-ingest", daemon=True
        )
        self._thread.start()

    def run(self) -> None:
        """Open everything and serve in this thread until :meth:`request_stop`, then shut down."""
        self._open()
        assert self._ingest is not None
        try:
            self._ingest.serve(self._stopping, self._reap)
        finally:
            self._shutdown(self.config.drain_timeout)

    def request_stop(self) -> None:
        """Ask the serving loop to end (safe from a signal handler or another thread)."""
        self._stopping.set()

    def stop(self, timeout: float | None = None) -> None:
        """Stop serving and shut down within about ``timeout`` seconds (default: drain_timeout)."""
        drain = self.config.drain_timeout if timeout is None else timeout
        self.request_stop()
        if self._thread is None:
            # Serving in run() (another thread) or never started: run() shuts down by itself.
            if self._ingest is not None:
                self._closed.wait(drain + 2 * POLL_MS / 1000)
            return
        self._thread.join(drain + 2 * POLL_MS / 1000)
        if self._thread.is_alive():
            # Its socket cannot be closed under it; the daemon thread ends with the process.
            log.error("the ingest thread did not stop within %.1f s; leaving it", drain)
            self._ingest = None
            self._context = None
        self._thread = None
        self._shutdown(drain)

    def __enter__(self) -> Collector:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ---------------------------------------------------------------------------------- queries

    def status(self) -> protocol.StatusReply:
        """Counters and every run's positions and metadata."""
        runs = []
        if self._journal is not None and self._appliers is not None:
            for run in self._journal.runs():
                meta = self._journal.meta(run)
                runs.append(
                    protocol.RunInfo(
                        run=run,
                        journaled=self._journal.position(run),
                        applied=self._appliers.applied(run),
                        state=meta.state,
                        project=meta.project,
                        name=meta.name,
                    )
                )
        return protocol.StatusReply(counters=self.counters.snapshot(), runs=runs)

    def wait_applied(self, run: str, seq: int, timeout: float) -> bool:
        """Wait until ``run`` is applied through ``seq``; False on timeout."""
        if self._appliers is None:
            raise RuntimeError("the collector is not started")
        return self._appliers.wait_applied(run, seq, timeout)

    # --------------------------------------------------------------------------------- internal

    def _open(self) -> None:
        if self._ingest is not None or self._closed.is_set():
            raise RuntimeError("a Collector starts once")
        config = self.config
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock_data_dir(config.data_dir)
        try:
            fsync = config.fsync == "batch"
            self._journal = Journal(
                config.data_dir / paths.JOURNAL,
                fsync=fsync,
                segment_bytes=config.journal_segment_bytes,
                counters=self.counters,
            )
            self._files = FileStore(config.data_dir / paths.FILES, fsync=fsync, counters=self.counters)
            if self._backend is None:
                self._backend = make_backend(config)
            self._appliers = Appliers(self._journal, self._backend, self._files, self.counters)
            self._journal.add_listener(self._appliers.notify)
            self._appliers.start()
            self._started = time.monotonic()
            self._context = zmq.Context()
            self._ingest = Ingest(
                self._context,
                config.bind,
                self._journal,
                self._files,
                counters=self.counters,
                status=self.status,
                max_body_bytes=config.max_body_bytes,
                max_journal_bytes=config.max_journal_bytes,
            )
        except BaseException:
            self._shutdown(0.0)
            raise
        log.info(
            "collector listening on %s, data dir %s, backend %s",
            self._ingest.endpoint,
            config.data_dir.absolute(),
            type(self._backend).__name__,
        )

    def _reap(self) -> None:
        """Abort open runs whose producer vanished: no heartbeat and no event for a while.

        Runs on the ingest thread (its tick). A run's clock starts at the later of its last sign
        of life and this collector's start, so runs left open by a previous collector get the
        full timeout to come back.
        """
        journal, appliers, ingest = self._journal, self._appliers, self._ingest
        if journal is None or appliers is None or ingest is None:
            return
        timeout, now = self.config.heartbeat_timeout, time.monotonic()
        for run in journal.runs():
            if journal.meta(run).state != "open":
                continue
            silent = now - max(self._started, ingest.heartbeats.get(run, self._started))
            if silent > timeout:
                reason = f"no heartbeat or event from its producer for {silent:.0f} s"
                log.warning("run %s: aborted: %s", run, reason)
                self.counters.incr("runs_aborted")
                journal.set_state(run, "aborted")
                appliers.abort(run, reason)

    def _lock_data_dir(self, data_dir: Path) -> None:
        fd = os.open(data_dir / _LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DataDirBusyError(f"another collector is using {data_dir.absolute()}") from None
        self._lock_fd = fd

    def _shutdown(self, drain_timeout: float) -> None:
        """Close in dependency order; leave the backend open if an applier is stuck in it."""
        if self._closed.is_set():
            return
        if self._ingest is not None:
            self._ingest.close()
        if self._context is not None:
            self._context.term()
        stopped = True
        if self._appliers is not None:
            if not self._appliers.drain(drain_timeout):
                log.warning("stopping with events journaled but not yet applied; they apply on restart")
            stopped = self._appliers.stop(timeout=max(1.0, drain_timeout / 2))
        if self._backend is not None and stopped:
            self._backend.close()
        if self._journal is not None:
            self._journal.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
        self._closed.set()
        log.info("collector stopped")
