"""The ``clearml-relay`` command line; the only place that configures logging.

``clearml-relay collector`` runs the collector in the foreground until SIGTERM or SIGINT, which
stop it gracefully (ingest first, then a bounded drain of the appliers) with exit status 0; a
second signal forces an immediate exit. ``clearml-relay sync`` delivers leftover producer
outboxes. Every flag defaults from its environment variable (see :mod:`collector.config`); a bad
value is one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from collector.config import (
    BACKENDS,
    ENV_BACKEND,
    ENV_BIND,
    ENV_DATA_DIR,
    ENV_FSYNC,
    ENV_LOG_LEVEL,
    ENV_OFFLINE,
    FSYNC_POLICIES,
    CollectorConfig,
    ConfigError,
)

log = logging.getLogger("collector")

EXIT_CONFIG = 2
EXIT_FAILURE = 1
#: Exit status of a forced stop (a second signal), as a shell reports an interrupted command.
EXIT_FORCED = 130
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clearml-relay", description="Asynchronous ClearML logging relay.")
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=_LOG_LEVELS,
        default=None,
        help=f"log level (env {ENV_LOG_LEVEL}, default INFO)",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("collector", help="run the collector in the foreground")
    run.add_argument("--bind", help=f"ZeroMQ endpoint to bind (env {ENV_BIND}, default tcp://127.0.0.1:5555)")
    run.add_argument(
        "--data-dir", help=f"journal, files and records (env {ENV_DATA_DIR}, default ./clearml-relay-data)"
    )
    run.add_argument(
        "--fsync", choices=FSYNC_POLICIES, help=f"journal fsync policy (env {ENV_FSYNC}, default batch)"
    )
    run.add_argument(
        "--backend", choices=BACKENDS, help=f"where events go (env {ENV_BACKEND}, default clearml)"
    )
    run.add_argument(
        "--offline",
        action="store_const",
        const=True,
        help=f"ClearML offline mode even if a server is configured (env {ENV_OFFLINE})",
    )
    run.add_argument("--log-level", type=str.upper, choices=_LOG_LEVELS, default=argparse.SUPPRESS)
    run.set_defaults(func=_collector)

    sync = commands.add_parser("sync", help="deliver the producer outboxes left in a spool directory")
    sync.add_argument("--spool-dir", help="spool directory (env CLEARML_RELAY_SPOOL_DIR)")
    sync.add_argument("--endpoint", help="collector endpoint (env CLEARML_RELAY_ENDPOINT)")
    sync.add_argument("--timeout", type=float, default=60.0, help="give up after this many seconds")
    sync.add_argument("--log-level", type=str.upper, choices=_LOG_LEVELS, default=argparse.SUPPRESS)
    sync.set_defaults(func=_sync)

    runs = commands.add_parser("runs", help="list the runs a collector's data directory knows")
    runs.add_argument("--data-dir", help=f"the collector's data directory (env {ENV_DATA_DIR})")
    runs.add_argument("--json", action="store_true", help="print JSON instead of a table")
    runs.add_argument("--log-level", type=str.upper, choices=_LOG_LEVELS, default=argparse.SUPPRESS)
    runs.set_defaults(func=_runs)

    upload = commands.add_parser("upload", help="import finished offline sessions into the configured server")
    upload.add_argument(
        "sessions", nargs="+", metavar="SESSION.zip", help="offline session zips (or folders)"
    )
    upload.add_argument("--log-level", type=str.upper, choices=_LOG_LEVELS, default=argparse.SUPPRESS)
    upload.set_defaults(func=_upload)

    demo = commands.add_parser("demo", help="run a collector and a training process that logs through it")
    demo.add_argument("--workdir", help="keep everything here (default: a new temporary directory)")
    demo.add_argument("--epochs", type=int, default=5)
    demo.add_argument("--log-level", type=str.upper, choices=_LOG_LEVELS, default=argparse.SUPPRESS)
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``clearml-relay`` command line; returns the exit status."""
    args = parser_args = build_parser().parse_args(argv)
    level = parser_args.log_level or os.environ.get(ENV_LOG_LEVEL, "").strip().upper() or "INFO"
    if level not in _LOG_LEVELS:
        return _config_error(f"{ENV_LOG_LEVEL}={level!r}: expected one of {', '.join(_LOG_LEVELS)}")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    status: int = args.func(args)
    return status


def _config_error(message: str) -> int:
    print(f"clearml-relay: configuration error: {message}", file=sys.stderr)
    return EXIT_CONFIG


def _collector(args: argparse.Namespace) -> int:
    # Imported here: `clearml-relay sync` on a training node needs none of the collector.
    import zmq  # noqa: PLC0415

    from collector.server import Collector, DataDirBusyError  # noqa: PLC0415

    try:
        config = CollectorConfig.from_env(
            bind=args.bind,
            data_dir=args.data_dir,
            fsync=args.fsync,
            backend=args.backend,
            offline=args.offline,
        )
    except ConfigError as exc:
        return _config_error(str(exc))
    collector = Collector(config)
    signals = 0

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            log.info("received %s: stopping (send it again to force)", signal.Signals(signum).name)
            collector.request_stop()
        else:
            log.warning("received %s again: exiting now", signal.Signals(signum).name)
            os._exit(EXIT_FORCED)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        collector.run()
    except DataDirBusyError as exc:
        print(f"clearml-relay: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except zmq.ZMQError as exc:
        print(f"clearml-relay: cannot bind {config.bind}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as exc:
        print(f"clearml-relay: cannot start the collector: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return 0


def _sync(args: argparse.Namespace) -> int:
    # Lazy: a sync needs only producer code, never the collector's.
    from producer.config import ConfigError as ProducerConfigError  # noqa: PLC0415
    from producer.config import ProducerConfig  # noqa: PLC0415
    from producer.sync import SyncProgress, sync  # noqa: PLC0415

    try:
        config = ProducerConfig.from_env(endpoint=args.endpoint, spool_dir=args.spool_dir)
    except ProducerConfigError as exc:
        return _config_error(str(exc))

    def progress(report: SyncProgress) -> None:
        log.info(
            "sync: %d/%d events acknowledged, %d runs left, %.1f s",
            report.events_acked,
            report.events_total,
            report.runs_left,
            report.elapsed,
        )

    result = sync(config.spool_dir, config.endpoint, args.timeout, progress)
    print(
        f"delivered {len(result.delivered)} runs ({result.events_acked}/{result.events_total} events)"
        + (f"; locked by a live producer: {', '.join(result.locked)}" if result.locked else "")
        + (f"; not delivered: {result.left}" if result.left else "")
    )
    return 0 if result.ok else EXIT_FAILURE


def _demo(args: argparse.Namespace) -> int:
    from collector import demo  # noqa: PLC0415

    return demo.main([*(["--workdir", args.workdir] if args.workdir else []), "--epochs", str(args.epochs)])


def _runs(args: argparse.Namespace) -> int:
    from collector.runs import list_runs, render  # noqa: PLC0415

    try:
        config = CollectorConfig.from_env(data_dir=args.data_dir)
    except ConfigError as exc:
        return _config_error(str(exc))
    if not (config.data_dir / "journal").is_dir():
        print(f"clearml-relay: no collector data in {config.data_dir.absolute()}", file=sys.stderr)
        return EXIT_FAILURE
    print(render(list_runs(config.data_dir), args.json))
    return 0


def _upload(args: argparse.Namespace) -> int:
    from collector import mode  # noqa: PLC0415

    offline, reason = mode.decide(False)
    if offline:
        return _config_error(f"no ClearML server to upload to: {reason}")
    from rich.progress import Progress  # noqa: PLC0415

    from collector import clearml_backend, upload  # noqa: PLC0415  (clearml loads only here)

    sessions = [Path(s) for s in args.sessions]
    with Progress(transient=False) as progress:
        bar = progress.add_task(f"importing {len(sessions)} sessions", total=len(sessions))

        def on_result(result: upload.UploadResult) -> None:
            if result.error:
                progress.console.print(f"[red]failed[/red] {result.source}: {result.error}")
            else:
                progress.console.print(f"imported {result.source} as task {result.task_id}")
            progress.advance(bar)

        results = upload.upload_sessions(
            sessions, clearml_backend.import_session, clearml_backend.files_host(), on_result
        )
    return 0 if all(not r.error for r in results) else EXIT_FAILURE
