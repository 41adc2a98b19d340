"""The collector service: wires journal, file store, backend, appliers and ingest together.

``Collector(config)`` owns the lifecycle (uvicorn's config -> server pattern): :meth:`start`
serves from a background thread (tests: ``with Collector(cfg) as c:``), :meth:`run` serves in
the calling thread until :meth:`request_stop` (the CLI's signal handler). Stopping is bounded:
ingest stops first (unacked producers resend later, nothing is lost), then the appliers get up
to ``drain_timeout`` to catch up with the journal, then everything closes. A lock file keeps a
second collector off the same data directory.

Running as a service: with ``metrics_port`` set, an HTTP server (:mod:`collector.service.metrics`)
serves ``/metrics`` and ``/healthz`` from its own thread, until the very end of a shutdown (a
drain shows in the metrics, and ``/healthz`` answers 503 meanwhile). The ingest thread's
housekeeping tick, besides aborting runs whose producer vanished, retires the journal of every
finished run once the backend holds it durably (:meth:`Journal.retire`) and, when the backend
keeps its own copies of files (``copies_files``: the ClearML backend), deletes the run's stored
files (images, plots, models: halving the disk a run holds). With a retention policy
for offline sessions, a thread applies it every :data:`RETENTION_SECONDS` and whenever a run
was retired (:mod:`collector.storage.retention`).
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Final

import zmq

from collector.backends.base import Backend, JsonlBackend
from collector.config import CollectorConfig
from collector.counters import Counters
from collector.pipeline import security
from collector.pipeline.appliers import Appliers
from collector.pipeline.files import FileStore
from collector.pipeline.ingest import POLL_MS, Ingest
from collector.service.snapshot import Health, Snapshot
from collector.storage import paths, retention
from collector.storage.journal import FINISHED, Journal
from producer.wire import protocol

if TYPE_CHECKING:
    from collector.service.metrics import MetricsServer

log = logging.getLogger(__name__)

_LOCK = "collector.lock"
#: ``/healthz`` fails when the ingest loop has not come round for this long. It comes round at
#: least every poll (0.1 s); a batch that takes seconds to journal means a stuck disk.
INGEST_STALL_SECONDS: Final = 5.0
#: How often the offline-session retention policy is applied (also after every retired run).
RETENTION_SECONDS: Final = 60.0


class DataDirBusyError(RuntimeError):
    """Another collector holds the data directory."""


def make_backend(config: CollectorConfig, counters: Counters | None = None) -> Backend:
    """The backend ``config.backend`` names (backends with heavy imports load them here)."""
    if config.backend == "jsonl":
        return JsonlBackend(config.data_dir / paths.RECORDS)
    if config.backend == "clearml":
        from collector.backends.clearml import backend as clearml_backend  # noqa: PLC0415  (clearml loads only here)
        from collector.backends.clearml import mode  # noqa: PLC0415

        offline, reason = mode.decide(config.offline)
        log.info("ClearML %s mode: %s", "offline" if offline else "online", reason)
        return clearml_backend.ClearMLBackend(
            config.data_dir / paths.CLEARML,
            offline=offline,
            call_timeout=config.call_timeout,
            nonfinite=config.nonfinite,
            counters=counters,
            allow_pickled_figures=config.allow_pickled_figures,
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
        self._http: MetricsServer | None = None
        self._retention: threading.Thread | None = None
        self._allow: security.AllowList | None = None
        self._retention_wake = threading.Event()
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

    @property
    def metrics_port(self) -> int | None:
        """The port ``/metrics`` and ``/healthz`` are served on (None: not served)."""
        return self._http.port if self._http is not None else None

    def start(self) -> None:
        """Open everything and serve from a background thread."""
        self._open()
        assert self._ingest is not None
        self._thread = threading.Thread(
            target=self._ingest.serve,
            args=(self._stopping, self._housekeeping),
            name="collector-ingest",
            daemon=True,
        )
        self._thread.start()

    def run(self) -> None:
        """Open everything and serve in this thread until :meth:`request_stop`, then shut down."""
        self._open()
        assert self._ingest is not None
        try:
            self._ingest.serve(self._stopping, self._housekeeping)
        finally:
            self._shutdown(self.config.drain_timeout)

    def reload_keys(self) -> int:
        """Re-read the allow-list directory (the CLI calls it on SIGHUP); returns the key count."""
        if self._allow is None:
            return 0
        return self._allow.reload()

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

    def health(self) -> Health:
        """Ready only while the ingest loop turns and the journal takes writes (``/healthz``)."""
        ingest, journal = self._ingest, self._journal
        if self._stopping.is_set() or self._closed.is_set():
            return Health(False, "stopping: no longer accepting events")
        if ingest is None or journal is None:
            return Health(False, "not started")
        stalled = time.monotonic() - ingest.last_loop
        if stalled > INGEST_STALL_SECONDS:
            return Health(False, f"the ingest loop has not come round for {stalled:.1f} s")
        problem = journal.problem()
        if problem is not None:
            return Health(False, problem)
        return Health(True, "ok")

    def snapshot(self) -> Snapshot:
        """Everything a metrics scrape reports, read now."""
        ingest, journal = self._ingest, self._journal
        return Snapshot(
            counters=self.counters.snapshot(),
            latencies=self.counters.latencies(),
            runs=self.status().runs,
            journal_bytes=journal.size_bytes() if journal is not None else 0,
            journal_max_bytes=self.config.max_journal_bytes,
            ingest_loop_age=time.monotonic() - ingest.last_loop if ingest is not None else 0.0,
            health=self.health(),
        )

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
        if not config.data_dir.exists():  # a typo in --data-dir must not go unnoticed
            config.data_dir.mkdir(parents=True, exist_ok=True)
            log.info("created data directory %s", config.data_dir.absolute())
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
                self._backend = make_backend(config, self.counters)
            self._appliers = Appliers(self._journal, self._backend, self._files, self.counters)
            # A crash between a run's retirement (meta written first) and the release of its
            # stored files leaves them behind: release them now.
            for run in self._journal.runs():
                meta = self._journal.meta(run)
                if meta.state in FINISHED and meta.position >= self._journal.position(run):
                    self._release_files(run)
            self._journal.add_listener(self._appliers.notify)
            self._appliers.start()
            self._started = time.monotonic()
            self._context = zmq.Context()
            curve: tuple[bytes, bytes] | None = None
            if config.curve_secret_key is not None and config.allow_keys is not None:
                curve = security.server_keys(config.curve_secret_key)
                self._allow = security.AllowList(self._context, config.allow_keys, self.counters)
                listed = self._allow.begin()
                log.info("CurveZMQ on: %d producer keys allowed from %s", listed, config.allow_keys)
            self._ingest = Ingest(
                self._context,
                config.bind,
                self._journal,
                self._files,
                counters=self.counters,
                status=self.status,
                max_body_bytes=config.max_body_bytes,
                max_journal_bytes=config.max_journal_bytes,
                max_file_bytes=config.max_file_bytes,
                curve=curve,
                owners=security.Owners(config.data_dir) if curve is not None else None,
                max_runs_per_key=config.max_runs_per_key,
                allow_pickled_figures=config.allow_pickled_figures,
            )
            security.warn_if_exposed(self._ingest.endpoint, curve is not None)
            if config.metrics_port is not None:
                from collector.service.metrics import MetricsServer  # noqa: PLC0415  (prometheus loads here)

                self._http = MetricsServer(
                    config.metrics_host, config.metrics_port, self.snapshot, self.health
                )
            policy = retention.Policy(config.keep_sessions_days, config.keep_sessions)
            if not policy.keeps_everything:
                self._retention = threading.Thread(
                    target=self._retain, args=(policy,), name="collector-retention", daemon=True
                )
                self._retention.start()
        except BaseException:
            self._shutdown(0.0)
            raise
        log.info(
            "collector listening on %s, data dir %s, backend %s",
            self._ingest.endpoint,
            config.data_dir.absolute(),
            type(self._backend).__name__,
        )
        if self._http is not None:
            log.info("metrics on http://%s:%d/metrics, health on /healthz", self._http.host, self._http.port)

    def _housekeeping(self) -> None:
        """The ingest thread's tick (about once a second): both steps write to the journal."""
        self._reap()
        self._retire()

    def _retire(self) -> None:
        """Retire the journal of every finished run the backend holds durably (frees its segments)."""
        journal, appliers = self._journal, self._appliers
        if journal is None or appliers is None:
            return
        # At the size cap, fully applied open runs give their segments back too: the newest
        # segment of a run is never reclaimed, so it could hold the cap forever.
        over_cap = journal.size_bytes() >= self.config.max_journal_bytes
        for run in journal.runs():
            meta = journal.meta(run)
            finished = meta.state in FINISHED
            if not (finished or over_cap) or meta.position >= journal.position(run):
                continue
            if journal.retire(run, appliers.durable(run), open_too=over_cap) and finished:
                self.counters.incr("runs_retired")
                self._release_files(run)
                self._retention_wake.set()  # one more finished session: the count policy may apply

    def _release_files(self, run: str) -> None:
        """Delete a retired run's stored files when the backend keeps copies of its own.

        Every event of the run is durable in the backend by then (``retire``), so no event is
        applied again that would need them.
        """
        files = self._files
        if files is None or not getattr(self._backend, "copies_files", False):
            return
        freed = files.remove_run(run)
        if freed:
            self.counters.incr("file_bytes_released", freed)
            log.info("run %s: %d bytes of stored files released", run, freed, extra={"run": run})

    def _retain(self, policy: retention.Policy) -> None:
        """Apply the offline-session retention policy now, then periodically, until shutdown."""
        directory = self.config.data_dir / paths.CLEARML
        while not self._stopping.is_set():
            self._retention_wake.clear()
            try:
                deleted = retention.sweep(directory, policy, time.time())
                if deleted:
                    self.counters.incr("sessions_deleted", len(deleted))
            except Exception:  # a bad sweep must not end retention for the collector's lifetime
                log.exception("offline session retention failed")
                self.counters.incr("internal_error")
            self._retention_wake.wait(RETENTION_SECONDS)

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
                log.warning("run %s: aborted: %s", run, reason, extra={"run": run})
                journal.set_state(run, "aborted")
                appliers.abort(run, reason)
                if ingest.owners is not None:  # it no longer counts against its key's open runs
                    ingest.owners.closed(run)
                    ingest.owners.save()
                self.counters.incr("runs_aborted")

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
        if self._files is not None:
            self._files.close()
        if self._allow is not None:
            self._allow.stop()
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
        if self._retention is not None:
            self._retention_wake.set()  # _stopping is set: the thread ends after its sweep
            self._retention.join(timeout=max(1.0, drain_timeout))
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
        if self._http is not None:
            self._http.close()  # last: the drain was visible in the metrics
        self._closed.set()
        log.info("collector stopped")
