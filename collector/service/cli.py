"""The ``clearml-relay`` command line; the only place that configures logging.

``clearml-relay collector`` runs the collector in the foreground until SIGTERM or SIGINT, which
stop it gracefully (ingest first, then a drain of the appliers bounded by ``--drain-timeout``;
what is not applied by then stays journaled for the next start) with exit status 0; a second
signal forces an immediate exit (status 130). ``clearml-relay sync`` delivers leftover producer
outboxes; ``status`` shows a running collector live; ``healthcheck`` asks its ``/healthz`` (the
container image's HEALTHCHECK). The collector's flags, and ``--log-level`` / ``--log-format``,
are made from the settings table of :mod:`collector.config` and default from their environment
variables; a bad value is one line on stderr and exit status 2, never a traceback. Logs are text
or, with ``--log-format json``, one JSON object per line.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from collector.config import (
    ENV_DATA_DIR,
    ENV_METRICS_HOST,
    ENV_METRICS_PORT,
    LOG_SETTINGS,
    SETTINGS,
    CollectorConfig,
    ConfigError,
    Setting,
    read_setting,
)
from collector.service import logfmt
from producer.config import DEFAULT_ENDPOINT, ENV_ENDPOINT, ENV_SPOOL_DIR
from producer.wire.curve import KeySettingError
from producer.wire.endpoint import EndpointError, check_endpoint, problem

log = logging.getLogger("collector")

EXIT_CONFIG = 2
EXIT_FAILURE = 1
#: Exit status of a forced stop (a second signal), as a shell reports an interrupted command.
EXIT_FORCED = 130
LOG_LEVEL, LOG_FORMAT = LOG_SETTINGS


def _add_flag(parser: argparse.ArgumentParser, setting: Setting, default: str | None = None) -> None:
    """``setting``'s flag; its value (None when not given) lands in ``args.<setting.name>``."""
    if setting.switch:
        parser.add_argument(
            setting.flag, dest=setting.name, action="store_const", const=True, help=setting.flag_help
        )
        return
    parser.add_argument(
        setting.flag,
        dest=setting.name,
        type=setting.flag_type,
        default=default,
        # The choices shown as argparse shows them, checked by the setting (one wording for every
        # bad value); else named as argparse names it from the flag (the dest may differ).
        metavar="{" + ",".join(setting.choices) + "}"
        if setting.choices
        else setting.flag.lstrip("-").replace("-", "_").upper(),
        help=setting.flag_help,
    )


def _log_options(parser: argparse.ArgumentParser, default: str | None) -> None:
    """``--log-level`` and ``--log-format``, before or after the command (``default``: SUPPRESS after)."""
    for setting in LOG_SETTINGS:
        _add_flag(parser, setting, default)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clearml-relay", description="Asynchronous ClearML logging relay.")
    _log_options(parser, None)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("collector", help="run the collector in the foreground")
    for setting in SETTINGS:
        _add_flag(run, setting)
    _log_options(run, argparse.SUPPRESS)
    run.set_defaults(func=_collector)

    _keygen_options(commands.add_parser("keygen", help="write a CurveZMQ key pair (NAME.key_secret)"))

    sync = commands.add_parser("sync", help="deliver the producer outboxes left in a spool directory")
    sync_spool = sync.add_argument(
        "--spool-dir",
        help=f"spool directory (env {ENV_SPOOL_DIR}; default: $XDG_CACHE_HOME/clearml-relay/spool, "
        "else ~/.cache/clearml-relay/spool)",
    )
    sync_endpoint = sync.add_argument(
        "--endpoint", help=f"collector endpoint (env {ENV_ENDPOINT}; default: {DEFAULT_ENDPOINT})"
    )
    sync.add_argument(
        "--timeout", type=float, default=60.0, help="give up after this many seconds (default: 60 s)"
    )
    sync.add_argument(
        "--connect-timeout",
        type=float,
        default=5.0,
        help="give up when no collector answered within this many seconds (default: 5 s)",
    )
    _log_options(sync, argparse.SUPPRESS)
    sync.set_defaults(func=_sync)

    agent = commands.add_parser(
        "agent", help="deliver, until stopped, the outboxes that exited producers left in a spool directory"
    )
    agent.add_argument("--spool-dir", help=sync_spool.help)
    agent.add_argument("--endpoint", help=sync_endpoint.help)
    agent.add_argument(
        "--scan-every", type=float, default=5.0, help="seconds between two looks at the spool (default: 5 s)"
    )
    _log_options(agent, argparse.SUPPRESS)
    agent.set_defaults(func=_agent)

    status = commands.add_parser("status", help="a live view of a running collector (runs, backlog, rates)")
    status.add_argument(
        "--endpoint", help=f"the collector's endpoint (env {ENV_ENDPOINT}; default: {DEFAULT_ENDPOINT})"
    )
    status.add_argument("--json", action="store_true", help="print JSON (with --watch: one object per line)")
    status.add_argument("--watch", action="store_true", help="refresh every --interval until Ctrl-C")
    status.add_argument(
        "--interval",
        type=float,
        default=1.0,
        help="seconds between the two samples rates come from (default: 1 s)",
    )
    status.add_argument(
        "--timeout", type=float, default=3.0, help="seconds to wait for the collector (default: 3 s)"
    )
    _log_options(status, argparse.SUPPRESS)
    status.set_defaults(func=_status)

    health = commands.add_parser("healthcheck", help="exit 0 if the collector's /healthz says ok")
    health.add_argument(
        "--url", help=f"default: /healthz on {ENV_METRICS_HOST}:{ENV_METRICS_PORT} (0.0.0.0 means 127.0.0.1)"
    )
    health.add_argument(
        "--timeout", type=float, default=5.0, help="seconds to wait for the answer (default: 5 s)"
    )
    _log_options(health, argparse.SUPPRESS)
    health.set_defaults(func=_healthcheck)

    runs = commands.add_parser("runs", help="list the runs a collector's data directory knows")
    runs.add_argument("--data-dir", help=f"the collector's data directory (env {ENV_DATA_DIR})")
    runs.add_argument("--json", action="store_true", help="print JSON instead of a table")
    runs.add_argument(
        "--wide", action="store_true", help="print every column in full (default: fit the terminal)"
    )
    _log_options(runs, argparse.SUPPRESS)
    runs.set_defaults(func=_runs)

    upload = commands.add_parser("upload", help="import finished offline sessions into the configured server")
    upload.add_argument(
        "sessions", nargs="+", metavar="SESSION", help="offline session folders (or zips of one)"
    )
    _log_options(upload, argparse.SUPPRESS)
    upload.set_defaults(func=_upload)

    demo = commands.add_parser("demo", help="run a collector and a training process that logs through it")
    demo.add_argument("--workdir", help="keep everything here (default: a new temporary directory)")
    demo.add_argument("--epochs", type=int, default=5, help="epochs of the training (default: 5)")
    _log_options(demo, argparse.SUPPRESS)
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``clearml-relay`` command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        level = read_setting(LOG_LEVEL, args.log_level)
        log_format = read_setting(LOG_FORMAT, args.log_format)
    except ConfigError as exc:
        return _config_error(str(exc))
    if log_format == "json" and args.command == "collector":
        # A service: every line it writes is JSON, ClearML's prints too. Other commands print
        # their results on stdout, which must stay as they are.
        logfmt.json_service_logging(level)
    else:
        handler = logging.StreamHandler()
        handler.setFormatter(logfmt.formatter(log_format))
        logging.basicConfig(level=level, handlers=[handler])
    logging.captureWarnings(True)  # library warnings become log lines too (JSON ones in JSON)
    status: int = args.func(args)
    return status


def _config_error(message: str) -> int:
    print(f"clearml-relay: configuration error: {message}", file=sys.stderr)
    return EXIT_CONFIG


def _keygen_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="the key's name: 'collector', or one per producer or team")
    parser.add_argument("--dir", default=".", help="where to write the two files (default: here)")
    _log_options(parser, argparse.SUPPRESS)
    parser.set_defaults(func=_keygen)


def config_from_args(args: argparse.Namespace) -> CollectorConfig:
    """The collector's config from ``clearml-relay collector``'s flags, over the environment.

    Raises:
        ConfigError: a flag or variable has a bad value.

    """
    return CollectorConfig.from_env(
        flags=True, **{setting.name: getattr(args, setting.name) for setting in SETTINGS}
    )


def _collector(args: argparse.Namespace) -> int:
    # Imported here: `clearml-relay sync` on a training node needs none of the collector.
    import zmq  # noqa: PLC0415

    from collector.service import heap  # noqa: PLC0415
    from collector.service.server import Collector, DataDirBusyError  # noqa: PLC0415

    try:
        config = config_from_args(args)
    except ConfigError as exc:
        return _config_error(str(exc))
    heap.keep_freed_memory()
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
    signal.signal(signal.SIGHUP, lambda _signum, _frame: collector.reload_keys())
    try:
        collector.run()
    except DataDirBusyError as exc:
        print(f"clearml-relay: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except (KeySettingError, ConfigError) as exc:  # ConfigError: e.g. an unsupported clearml version
        return _config_error(str(exc))
    except zmq.ZMQError as exc:
        print(f"clearml-relay: cannot bind {config.bind}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as exc:
        print(f"clearml-relay: cannot start the collector: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return 0


def _keygen(args: argparse.Namespace) -> int:
    from collector.pipeline.security import keygen  # noqa: PLC0415

    try:
        public, secret = keygen(Path(args.dir), args.name)
    except (FileExistsError, ValueError) as exc:
        print(f"clearml-relay: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"public key  {public}  (give it out: --allow-keys dir / CLEARML_RELAY_SERVER_KEY)")
    print(f"secret key  {secret}  (keep it private: --curve-secret-key / CLEARML_RELAY_KEY_FILE)")
    return 0


def _agent(args: argparse.Namespace) -> int:
    # Lazy, as for sync: the agent runs on training nodes and needs only producer code.
    import threading  # noqa: PLC0415

    from producer.config import ConfigError as ProducerConfigError  # noqa: PLC0415
    from producer.config import ProducerConfig  # noqa: PLC0415
    from producer.transport.agent import run_agent  # noqa: PLC0415

    if not 0 < args.scan_every < float("inf"):
        return _config_error(f"--scan-every={args.scan_every:g}: expected a number of seconds > 0")
    endpoint = args.endpoint
    if endpoint is not None:
        try:
            endpoint = check_endpoint(endpoint)
        except EndpointError as exc:
            return _config_error(problem("--endpoint", args.endpoint, exc))
    try:
        config = ProducerConfig.from_env(endpoint=endpoint, spool_dir=args.spool_dir)
    except ProducerConfigError as exc:
        return _config_error(str(exc))
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: stopping; undelivered outboxes stay in the spool", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    run_agent(config.spool_dir, config.endpoint, scan_every=args.scan_every, stop=stop)
    return 0


def _sync(args: argparse.Namespace) -> int:
    # Lazy: a sync needs only producer code, never the collector's (and rich only to draw).
    from collector.service.syncview import SyncView  # noqa: PLC0415
    from producer.config import ConfigError as ProducerConfigError  # noqa: PLC0415
    from producer.config import ProducerConfig  # noqa: PLC0415
    from producer.transport.sync import sync  # noqa: PLC0415

    endpoint = args.endpoint
    if endpoint is not None:  # the variable is checked, and named, by ProducerConfig
        try:
            endpoint = check_endpoint(endpoint)
        except EndpointError as exc:
            return _config_error(problem("--endpoint", args.endpoint, exc))
    for flag, seconds in (("--timeout", args.timeout), ("--connect-timeout", args.connect_timeout)):
        if not 0 < seconds < float("inf"):
            return _config_error(f"{flag}={seconds:g}: expected a number of seconds > 0")
    try:
        config = ProducerConfig.from_env(endpoint=endpoint, spool_dir=args.spool_dir)
    except ProducerConfigError as exc:
        return _config_error(str(exc))
    view = SyncView(config.spool_dir, config.endpoint)
    try:
        result = sync(
            config.spool_dir,
            config.endpoint,
            args.timeout,
            view.progress,
            connect_timeout=args.connect_timeout,
        )
    except KeyboardInterrupt:
        view.close()
        print(f"sync: interrupted; what was not delivered stays in {view.spool_dir}", file=sys.stderr)
        return EXIT_FORCED
    view.close()
    if result.unreachable:
        waited = min(args.timeout, args.connect_timeout)
        print(
            f"sync: no collector answered at {config.endpoint} within {waited:g} s; is it running? "
            f"(--endpoint / {ENV_ENDPOINT})",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    print(view.report(result))
    return 0 if result.ok else EXIT_FAILURE


def _status(args: argparse.Namespace) -> int:
    # Lazy: zmq and the producer's protocol only (rich only for a table).
    from collector.service import status  # noqa: PLC0415

    endpoint = status.endpoint(args.endpoint)
    problem = _status_problem(endpoint, args)
    if problem is not None:
        return _config_error(problem)
    try:
        if args.watch:
            status.watch(endpoint, as_json=args.json, interval=args.interval, timeout=args.timeout)
        else:
            print(status.once(endpoint, as_json=args.json, interval=args.interval, timeout=args.timeout))
    except status.BadEndpointError as exc:
        return _config_error(str(exc))
    except status.NoAnswerError as exc:
        print(f"clearml-relay: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        pass  # the way out of --watch
    return 0


def _status_problem(endpoint: str, args: argparse.Namespace) -> str | None:
    try:
        check_endpoint(endpoint)
    except EndpointError as exc:
        return problem("--endpoint" if args.endpoint else ENV_ENDPOINT, endpoint, exc)
    if not args.timeout > 0:
        return f"--timeout={args.timeout:g}: expected a number of seconds > 0"
    if args.interval < 0 or (args.watch and not args.interval > 0):
        return f"--interval={args.interval:g}: expected a number of seconds >= 0 (> 0 with --watch)"
    return None


def _healthcheck(args: argparse.Namespace) -> int:
    """What the container's HEALTHCHECK runs: GET /healthz; exit 0 on 200, 1 otherwise (no curl needed)."""
    url = args.url
    if url is None:
        try:
            config = CollectorConfig.from_env()
        except ConfigError as exc:
            return _config_error(str(exc))
        if not config.metrics_port:
            return _config_error(f"no health endpoint to ask: set {ENV_METRICS_PORT} (not 0) or pass --url")
        # A server bound to every address is asked on loopback (in a container: its own).
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(config.metrics_host, config.metrics_host)  # noqa: S104
        url = f"http://{f'[{host}]' if ':' in host else host}:{config.metrics_port}/healthz"
    if not url.startswith(("http://", "https://")):
        return _config_error(f"--url {url!r}: expected an http:// or https:// URL")
    # No proxy: a proxy set for the collector's outbound traffic must not answer for it.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=args.timeout) as response:
            print(f"healthy: {response.read().decode(errors='replace').strip()}")
            return 0
    except urllib.error.HTTPError as exc:
        print(f"unhealthy ({exc.code}): {exc.read().decode(errors='replace').strip()}", file=sys.stderr)
    except (urllib.error.URLError, OSError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        print(f"clearml-relay: no answer from {url}: {reason}", file=sys.stderr)
    return EXIT_FAILURE


def _demo(args: argparse.Namespace) -> int:
    from collector.service import demo  # noqa: PLC0415

    return demo.main([*(["--workdir", args.workdir] if args.workdir else []), "--epochs", str(args.epochs)])


def _runs(args: argparse.Namespace) -> int:
    from collector.service.runs import list_runs, render  # noqa: PLC0415

    try:
        config = CollectorConfig.from_env(flags=True, data_dir=args.data_dir)
    except ConfigError as exc:
        return _config_error(str(exc))
    if not (config.data_dir / "journal").is_dir():
        print(f"clearml-relay: no collector data in {config.data_dir.absolute()}", file=sys.stderr)
        return EXIT_FAILURE
    print(render(list_runs(config.data_dir), args.json, wide=args.wide))
    return 0


def _upload(args: argparse.Namespace) -> int:
    from collector.backends.clearml import mode  # noqa: PLC0415

    sessions = [Path(s) for s in args.sessions]
    missing = [str(s) for s in sessions if not s.exists()]
    if missing:  # the arguments first: nothing is configured or imported for a typo
        print(f"clearml-relay: no such session file or folder: {', '.join(missing)}", file=sys.stderr)
        return EXIT_CONFIG
    offline, reason = mode.decide(False)
    if offline:
        return _config_error(f"no ClearML server to upload to: {reason}")
    from rich.progress import Progress  # noqa: PLC0415

    from collector.backends.clearml import upload  # noqa: PLC0415

    try:
        files_host = upload.files_host()
    except ConfigError as exc:
        return _config_error(str(exc))
    with Progress(transient=False) as progress:
        bar = progress.add_task(f"importing {len(sessions)} sessions", total=len(sessions))

        def on_result(result: upload.UploadResult) -> None:
            if result.error:
                progress.console.print(f"[red]failed[/red] {result.source}: {result.error}")
            else:
                progress.console.print(f"imported {result.source} as task {result.task_id}")
            progress.advance(bar)

        results = upload.upload_sessions(sessions, upload.import_session, files_host, on_result)
    return 0 if all(not r.error for r in results) else EXIT_FAILURE
