"""Who may talk to a shared collector: CurveZMQ keys, the ZAP allow-list, run ownership.

With ``--curve-secret-key FILE --allow-keys DIR`` the collector's ROUTER socket is a CURVE
server: all traffic is encrypted, and a ZAP handler (pyzmq's authenticator thread) admits only
the producer public keys found in DIR (``*.key`` files, as ``clearml-relay keygen`` writes them;
re-read on SIGHUP). A denied handshake never reaches the ingest loop; it is counted as
``zap_denied`` and logged once per key.

Every message of an admitted connection carries the producer's public key (ZeroMQ's
``User-Id``). The first key to write to a run owns it (:class:`Owners`, persisted before the
events are acknowledged); another key's messages for that run are refused with ``denied``. A key
owns at most ``max_runs_per_key`` open runs (not closed by their producer); beyond, new runs are
refused with ``limit``.

Without CURVE, anyone who reaches the socket can write: the collector binds loopback by default
and warns loudly when bound to another interface (:func:`warn_if_exposed`).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any, Final

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from collector.counters import Counters
from collector.storage import paths
from producer.wire.curve import KeySettingError, load_key_file

log = logging.getLogger(__name__)

OWNERS_FILE: Final = "owners.json"


def keygen(directory: Path, name: str) -> tuple[Path, Path]:
    """Write a CurveZMQ key pair: ``name.key`` (public, to share) and ``name.key_secret``.

    Raises:
        FileExistsError: a key of that name is there already (never overwritten).
        ValueError: ``name`` is not a plain file name.

    """
    if not paths.is_safe_run(name):
        raise ValueError(f"key name {name!r}: use letters, digits, '.', '_' and '-' only")
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = directory / f"{name}.key", directory / f"{name}.key_secret"
    for path in (public, secret):
        if path.exists():
            raise FileExistsError(f"{path} exists; not overwriting a key")
    old = os.umask(0o077)  # the secret file is never readable by others, not even briefly
    try:
        zmq.auth.create_certificates(directory, name)
    finally:
        os.umask(old)
    public.chmod(0o644)
    return public, secret


def server_keys(path: Path) -> tuple[bytes, bytes]:
    """The collector's ``(public, secret)`` key from its ``.key_secret`` file."""
    public, secret = load_key_file("--curve-secret-key", path, secret=True)
    assert secret is not None  # secret=True checked it
    return public, secret


def is_loopback(bind: str) -> bool:
    """Whether a ZeroMQ endpoint is reachable from this machine only."""
    if not bind.startswith("tcp://"):
        return True  # ipc:// and inproc://
    host = bind[len("tcp://") :].rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "*", an interface name or a host name: reachable from outside


def warn_if_exposed(bind: str, curve: bool) -> bool:
    """Warn loudly when a collector without CURVE listens beyond loopback; True if it does."""
    if curve or is_loopback(bind):
        return False
    log.warning(
        "SECURITY: the collector listens on %s WITHOUT CurveZMQ: anyone who can reach this port can "
        "write into any ClearML project it serves. Use --curve-secret-key and --allow-keys "
        "(clearml-relay keygen), or bind 127.0.0.1.",
        bind,
    )
    return True


class AllowList(ThreadAuthenticator):
    """pyzmq's ZAP authenticator thread, admitting the CURVE keys of a directory; counts denials."""

    def __init__(self, context: zmq.Context[Any], directory: Path, counters: Counters) -> None:
        super().__init__(context, log=logging.getLogger("collector.zap"))
        self.directory = directory
        self.counters = counters
        self._refused_keys: set[bytes] = set()
        self._lock = threading.Lock()

    def begin(self) -> int:
        """Start the ZAP thread with the directory's keys; returns how many keys are listed."""
        count = _count_keys(self.directory)
        self.start()
        self.configure_curve(domain="*", location=str(self.directory))
        return count

    def reload(self) -> int:
        """Re-read the directory (a key added or removed); returns how many keys are listed."""
        count = _count_keys(self.directory)
        self.configure_curve(domain="*", location=str(self.directory))
        log.info("allow-list reloaded: %d producer keys from %s", count, self.directory)
        return count

    async def _authenticate_curve(self, domain: str, client_key: bytes) -> tuple[bool, bytes]:
        allowed, reason = await super()._authenticate_curve(domain, client_key)
        if not allowed:
            self.counters.incr("zap_denied")
            key = zmq.utils.z85.encode(client_key) if len(client_key) == 32 else client_key
            with self._lock:
                first = key not in self._refused_keys and len(self._refused_keys) < 10_000
                self._refused_keys.add(key)
            if first:
                log.warning("refused a connection from a key not in %s: %s", self.directory, key.decode())
        return allowed, reason


def _count_keys(directory: Path) -> int:
    if not directory.is_dir():
        raise KeySettingError(f"--allow-keys: {directory} is not a directory")
    count = 0
    for path in sorted(directory.glob("*.key")):
        load_key_file("--allow-keys", path, secret=False)  # a bad file is an error, not a silent skip
        count += 1
    if not count:
        log.warning("the allow-list %s holds no *.key file: every producer is refused", directory)
    return count


class Owners:
    """Which key owns each run (the first to write to it), and how many open runs each key has.

    Persisted in ``data_dir/owners.json`` by :meth:`save`, which ingest calls before it
    acknowledges the events that claimed a run: after a restart a run still belongs to its key.
    Used by the ingest thread only.
    """

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / OWNERS_FILE
        self._owner: dict[str, str] = {}
        self._closed: set[str] = set()
        self._open_per_key: dict[str, int] = {}
        self._dirty = False
        if self.path.exists():
            saved = json.loads(self.path.read_text())
            self._owner = {str(run): str(key) for run, key in saved.get("owners", {}).items()}
            self._closed = {str(run) for run in saved.get("closed", [])}
            for run, key in self._owner.items():
                if run not in self._closed:
                    self._open_per_key[key] = self._open_per_key.get(key, 0) + 1

    def owner(self, run: str) -> str | None:
        return self._owner.get(run)

    def open_runs(self, key: str) -> int:
        return self._open_per_key.get(key, 0)

    def claim(self, run: str, key: str) -> None:
        self._owner[run] = key
        self._open_per_key[key] = self._open_per_key.get(key, 0) + 1
        self._dirty = True

    def closed(self, run: str) -> None:
        """The run was closed by its producer, or aborted by the collector: it frees its slot."""
        key = self._owner.get(run)
        if key is not None and run not in self._closed:
            self._closed.add(run)
            self._open_per_key[key] -= 1
            self._dirty = True

    def reopened(self, run: str) -> None:
        """An event for ``run``: if it was aborted, its producer came back and it holds a slot again."""
        key = self._owner.get(run)
        if key is not None and run in self._closed:
            self._closed.discard(run)
            self._open_per_key[key] = self._open_per_key.get(key, 0) + 1
            self._dirty = True

    def save(self) -> None:
        """Write the map if it changed (atomically, fsynced)."""
        if not self._dirty:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w") as fh:
            json.dump({"owners": self._owner, "closed": sorted(self._closed)}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(self.path)
        self._dirty = False
