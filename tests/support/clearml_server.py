"""A ClearML server test double: API server, fileserver and web host on 127.0.0.1, standard library only.

The real ClearML SDK works online against it (``Task._create``, ``Task.init``, reporting, output
models, status changes), and it records what it receives so that tests can assert on it. It can
also misbehave on purpose: fail, stall, slow down, go down and come back up on the same ports.

The wire, as clearml 2.1.12 speaks it (``clearml/backend_api/session/session.py``)
===================================================================================
* Every API call is an HTTP request to ``<api>/v<version>/<service>.<action>`` with a JSON body.
  The default method is **GET with a body** (``Request.def_method``); POST and PUT also occur.
  ``events.add_batch`` sends ``application/json-lines`` (one event per line).
* ``auth.login`` comes with HTTP basic auth (access key, secret key) and must answer
  ``{"token": <JWT>}``. The SDK decodes the JWT *without* verifying it and takes the server's API
  version (``api_version``), ``server_version`` and ``feature_set`` from its claims, then sends
  ``Authorization: Bearer <token>`` on every call. A 401 makes it log in again once.
* Every answer is ``{"meta": {"id", "trx", "endpoint": {"name", "requested_version",
  "actual_version"}, "result_code", "result_subcode", "result_msg"}, "data": {...}}``.
* Only 502, 503, 509 and 429 are retried by the SDK's HTTP layer (``Session._retry_codes``), at most
  ``api.http.retries.status`` times (a 503 forever unless ``api.http.wait_on_maintenance_forever``
  is false, as in the config :meth:`ClearMLServerDouble.env` writes). Above that,
  ``InterfaceBase._send`` (``clearml/backend_interface/base.py``) loops *without limit* on a
  connection error or a status above 500, and raises on 500 and below. So once a process has
  logged in, a down server (or a 502 forever) blocks a call until the server is back; only
  the very first call (``auth.login``, inside the session) fails fast, as ``LoginError``.
* ``events.add_batch`` failing with 500 (or 4xx) is logged and the events are dropped: the
  reporter neither retries nor raises.
* Events are stored as clearml-server stores them (``apiserver/bll/event/event_bll.py``,
  ``EventBLL.add_events``, ``_get_event_id``): a non-log event under the id made of its
  ``task``, ``iter``, ``metric``, ``variant`` and ``key`` (those it has), so an event sent again
  replaces the earlier one (it moves to the end of the arrival order); a ``log`` event gets a
  new id every time, so a console line sent twice is there twice.
* The fileserver receives ``POST <files>/<dir>/`` as ``multipart/form-data`` with one field whose
  name (and file name) is the rest of the path; it stores ``<dir>/<name>`` and serves it back on
  GET. A model or image URL the SDK stores is ``<files>/<dir>/<name>``.

Everything listens on 127.0.0.1 only. HTTP/1.0 is spoken (one request per connection), so a
listener that is down refuses every new call at once instead of answering on a kept-alive one.
:meth:`ClearMLServerDouble.env` also points ``HTTP(S)_PROXY`` at a trap listener that records and
refuses any request for another host (the SDK's package-update check to ``updates.clear.ml``, for
instance), so that nothing a test runs leaves the machine.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import datetime as dt
import email.parser
import email.policy
import fnmatch
import hashlib
import hmac
import json
import os
import re
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

#: What the double claims to be (the SDK reads these from the login token).
API_VERSION = "2.23"
SERVER_VERSION = "1.17.0"
ACCESS_KEY = "relay-test-access-key"
SECRET_KEY = "relay-test-secret-key"
USER_ID = "relay-test-user"
COMPANY_ID = "relay-test-company"

#: Status changes: endpoint action -> resulting task status.
_STATUS_ACTIONS = {
    "started": "in_progress",
    "completed": "completed",
    "failed": "failed",
    "stopped": "stopped",
    "stop": "stopped",
    "close": "closed",
    "publish": "published",
    "reset": "created",
    "dequeue": "created",
    "enqueue": "queued",
}
_HOST = "127.0.0.1"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()


def _new_id() -> str:
    return uuid.uuid4().hex


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _jwt(claims: dict[str, Any], key: str) -> str:
    """An HS256 JWT: the SDK only decodes it, but a well-formed token keeps PyJWT quiet."""
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64(json.dumps(claims).encode())
    signature = hmac.new(key.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(signature)}"


class ApiError(Exception):
    """An API call the double answers with an error (status and message go to the meta section)."""

    def __init__(self, status: int, message: str, subcode: int = 0) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.subcode = subcode


class Unsupported(ApiError):
    """An endpoint the double does not implement: answered 400, listed in ``unhandled``."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(400, f"endpoint {endpoint!r} is not supported by the test double", 1)


@dataclass
class Call:
    """One request as received.

    Attributes:
        endpoint: ``service.action`` for API calls; ``files.upload`` / ``files.download`` /
            ``files.delete`` on the fileserver; ``web.get`` on the web host; ``proxy.connect``
            / ``proxy.http`` on the trap (a request that would have left the machine).
        method: The HTTP method.
        path: The request path (for the trap: the target host or URL).
        headers: Request headers (lower-case names).
        body: Decoded JSON (a list for json-lines), or the raw bytes when not JSON.
        raw: The body's bytes as received.
        status: The HTTP status answered (None while unanswered, or if never answered).

    """

    endpoint: str
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    ts: float = field(default_factory=time.time)
    #: The body as it came (after any chunked transfer encoding): what the SDK sent, byte for byte.
    raw: bytes = b""
    status: int | None = None


@dataclass
class _Rule:
    pattern: str | None
    remaining: int | None  # None: forever
    status: int = 500

    def matches(self, endpoint: str) -> bool:
        return self.pattern is None or fnmatch.fnmatchcase(endpoint, self.pattern)


class _Server(ThreadingHTTPServer):
    # Handler threads are joined by server_close(); _Listener.stop() first cuts every
    # connection so that none of them can keep it waiting.
    daemon_threads = False
    block_on_close = True
    # One listener per kind; the kind tells the handler which side of the double it is.
    kind = ""
    double: ClearMLServerDouble
    #: Set when the listener stops: stalled and slowed handlers give up without answering.
    closing: threading.Event


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"
    server_version = "clearml-server-double"

    timeout = 60  # a client that connects and never sends cannot hold a thread for long

    def setup(self) -> None:
        super().setup()
        self.server.double._connection_opened(self.server.kind, self.connection)
        # Registered before the check: either stop() sees this connection or this sees stop().
        if self.server.closing.is_set():
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.double._connection_closed(self.server.kind, self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the double records calls itself."""

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        # OSError: the peer gave up, or down() cut the connection.
        with contextlib.suppress(OSError):
            self.server.double._serve(self, self.server.kind, self._body())

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_CONNECT = _handle

    def reply(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class _Listener:
    """One HTTP server on a fixed 127.0.0.1 port that can stop and start again on that port."""

    def __init__(self, double: ClearMLServerDouble, kind: str) -> None:
        self.double = double
        self.kind = kind
        self.port = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        server = _Server((_HOST, self.port), _Handler)
        server.kind = self.kind
        server.double = self.double
        server.closing = threading.Event()
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"clearml-double-{self.kind}"
        )
        self._thread.start()

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._server = self._thread = None
        server.closing.set()
        server.shutdown()  # no new connections are accepted after this
        thread.join()
        # Cut what is still open: a stalled or slowed handler sees its socket die (or the
        # closing event) and returns, so that server_close() can join it.
        for conn in self.double._open_connections(self.kind):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        server.server_close()  # closes the listening socket and joins the handler threads


class ClearMLServerDouble:
    """A ClearML API server + fileserver + web host double for tests (a context manager).

    Args:
        access_key: The access key ``auth.login`` accepts (with ``secret_key``).
        secret_key: The secret key.

    Use::

        with ClearMLServerDouble() as server:
            subprocess.run([...], env=server.child_env())
            assert server.tasks

    """

    def __init__(self, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY) -> None:
        self.access_key = access_key
        self.secret_key = secret_key
        self._lock = threading.Lock()
        self._changed = threading.Condition()  # notified whenever a call arrives or is answered
        self._listeners = {kind: _Listener(self, kind) for kind in ("api", "files", "web", "trap")}
        self._connections: dict[str, set[socket.socket]] = {kind: set() for kind in self._listeners}
        # A stall() holds calls until its own event is set: a later stall() gets a new one, so
        # calls released by unstall() are never caught again.
        self._release = threading.Event()
        self._release.set()
        self._stall: _Rule | None = None
        self._stalled = 0
        self._slow: tuple[float, str | None] = (0.0, None)
        self._faults: list[_Rule] = []
        self._tmp: Path | None = None
        # State.
        self._calls: list[Call] = []
        self._unhandled: list[Call] = []
        self._tokens: set[str] = set()
        self._tasks: dict[str, dict[str, Any]] = {}
        self._projects: dict[str, dict[str, Any]] = {}
        self._models: dict[str, dict[str, Any]] = {}
        # task id -> event id -> event, in arrival order (see the module doc on event ids).
        self._events: dict[str, dict[str, dict[str, Any]]] = {}
        self._uploads: dict[str, bytes] = {}

    # ------------------------------------------------------------------------------ lifecycle

    def start(self) -> ClearMLServerDouble:
        self._tmp = Path(tempfile.mkdtemp(prefix="clearml-double-"))
        for listener in self._listeners.values():
            listener.start()
        return self

    def close(self) -> None:
        """Stop every listener, dropping stalled calls; remove the config directory."""
        for listener in self._listeners.values():
            listener.stop()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> ClearMLServerDouble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def down(self, *kinds: str) -> None:
        """Stop listening (connections are refused) and cut open connections, stalled ones too.

        Args:
            kinds: Which listeners (``api``, ``files``, ``web``); all three by default.

        """
        for kind in kinds or ("api", "files", "web"):
            self._listeners[kind].stop()

    def up(self, *kinds: str) -> None:
        """Listen again, on the same ports as before."""
        for kind in kinds or ("api", "files", "web"):
            listener = self._listeners[kind]
            if not listener.running:
                listener.start()

    # ------------------------------------------------------------------------------ addresses

    @property
    def api_url(self) -> str:
        return f"http://{_HOST}:{self._listeners['api'].port}"

    @property
    def files_url(self) -> str:
        return f"http://{_HOST}:{self._listeners['files'].port}"

    @property
    def web_url(self) -> str:
        return f"http://{_HOST}:{self._listeners['web'].port}"

    @property
    def trap_url(self) -> str:
        return f"http://{_HOST}:{self._listeners['trap'].port}"

    def env(self, *, retries: int = 2, thread_reporting: bool = True) -> dict[str, str]:
        """The environment a process needs to use the double online.

        Build a child's environment as ``os.environ`` minus ``CLEARML_OFFLINE_MODE`` plus this
        (offline mode is process-global, and the test suite sets it for the test process).

        Args:
            retries: ``api.http.retries`` (total, connect, read, redirect, status) in the
                ``clearml.conf`` written for the process: a down server fails a call in seconds.
            thread_reporting: Report events from a thread, not ClearML's reporting subprocess.

        """
        assert self._tmp is not None, "start the double first"
        conf = self._tmp / f"clearml-{retries}-{int(thread_reporting)}.conf"
        counts = ", ".join(f"{k}: {retries}" for k in ("total", "connect", "read", "redirect", "status"))
        conf.write_text(
            "api {\n"
            f"  http {{ retries {{ {counts} }}, wait_on_maintenance_forever: false }}\n"
            "}\n"
            "sdk {\n"
            f"  development {{ report_use_subprocess: {str(not thread_reporting).lower()} }}\n"
            "}\n"
        )
        return {
            "CLEARML_API_HOST": self.api_url,
            "CLEARML_WEB_HOST": self.web_url,
            "CLEARML_FILES_HOST": self.files_url,
            "CLEARML_API_ACCESS_KEY": self.access_key,
            "CLEARML_API_SECRET_KEY": self.secret_key,
            "CLEARML_OFFLINE_MODE": "0",
            "CLEARML_CONFIG_FILE": str(conf),
            # Anything for another host goes to the trap, which records and refuses it.
            "HTTP_PROXY": self.trap_url,
            "HTTPS_PROXY": self.trap_url,
            "http_proxy": self.trap_url,
            "https_proxy": self.trap_url,
            "NO_PROXY": f"{_HOST},localhost",
            "no_proxy": f"{_HOST},localhost",
        }

    def child_env(self, **options: Any) -> dict[str, str]:
        """``os.environ`` without ``CLEARML_OFFLINE_MODE``, plus :meth:`env` (``options`` go to it)."""
        base = {k: v for k, v in os.environ.items() if k != "CLEARML_OFFLINE_MODE"}
        return {**base, **self.env(**options)}

    # ------------------------------------------------------------------------------ faults

    def fail(self, endpoint: str | None = None, status: int = 500, times: int | None = None) -> None:
        """Answer matching calls with ``status`` (``times`` calls, or until :meth:`heal`).

        Args:
            endpoint: An fnmatch pattern over endpoints (``events.*``, ``files.upload``); None: all.
            status: The HTTP status (the SDK retries only 502, 503, 509, 429).
            times: How many calls fail; None: every one.

        """
        with self._lock:
            self._faults.append(_Rule(endpoint, times, status))

    def stall(self, endpoint: str | None = None) -> None:
        """Accept matching calls (they are recorded) but answer none until :meth:`unstall`."""
        with self._lock:
            self._stall = _Rule(endpoint, None)
            self._release = threading.Event()

    def unstall(self) -> None:
        """Let stalled calls go on (they are then answered normally)."""
        with self._lock:
            self._stall = None
            self._release.set()

    def slow(self, seconds: float, endpoint: str | None = None) -> None:
        """Wait ``seconds`` before answering each matching call (0 to stop)."""
        with self._lock:
            self._slow = (seconds, endpoint)

    def heal(self) -> None:
        """Forget every fail, stall and slow rule (stalled calls go on)."""
        with self._lock:
            self._faults.clear()
            self._slow = (0.0, None)
        self.unstall()

    @property
    def stalled(self) -> int:
        """How many calls are being held by :meth:`stall` right now."""
        with self._lock:
            return self._stalled

    # ------------------------------------------------------------------------------ records

    def calls(self, endpoint: str | None = None) -> list[Call]:
        """Every call received so far (an fnmatch pattern over endpoints filters them)."""
        with self._lock:
            return [
                copy.deepcopy(c)
                for c in self._calls
                if endpoint is None or fnmatch.fnmatchcase(c.endpoint, endpoint)
            ]

    def endpoints(self) -> list[str]:
        """The distinct endpoints called, in order of first call."""
        with self._lock:
            return list(dict.fromkeys(c.endpoint for c in self._calls))

    @property
    def unhandled(self) -> list[Call]:
        """API calls the double does not implement (answered 400 ``not supported``)."""
        with self._lock:
            return [copy.deepcopy(c) for c in self._unhandled]

    @property
    def escapes(self) -> list[Call]:
        """Requests for other hosts that came through the proxy trap (and were refused)."""
        return self.calls("proxy.*")

    @property
    def tasks(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self._tasks)

    @property
    def projects(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self._projects)

    @property
    def models(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self._models)

    @property
    def uploads(self) -> dict[str, bytes]:
        """Files the fileserver holds, by path (no leading slash)."""
        with self._lock:
            return dict(self._uploads)

    def upload(self, url: str) -> bytes | None:
        """The stored bytes behind a fileserver URL (as stored in events and models)."""
        parts = urlsplit(url)
        if f"{parts.scheme}://{parts.netloc}" != self.files_url:
            return None
        with self._lock:
            return self._uploads.get(unquote(parts.path).lstrip("/"))

    def events(self, task_id: str, type: str | None = None) -> list[dict[str, Any]]:
        """The events of one task in arrival order (``type``: ``training_stats_scalar``, ``log``...)."""
        with self._lock:
            return [
                copy.deepcopy(e)
                for e in self._events.get(task_id, {}).values()
                if type is None or e.get("type") == type
            ]

    def task(self, name: str) -> dict[str, Any] | None:
        """The newest task with this name."""
        found = [t for t in self.tasks.values() if t["name"] == name]
        return found[-1] if found else None

    def project_name(self, project_id: str) -> str | None:
        with self._lock:
            project = self._projects.get(project_id)
            return project["name"] if project else None

    def wait_for(self, condition: Callable[[ClearMLServerDouble], Any], timeout: float, what: str) -> Any:
        """Wait until ``condition(self)`` is truthy (re-checked whenever a call was answered)."""
        deadline = time.monotonic() + timeout
        while True:
            result = condition(self)
            if result:
                return result
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            with self._changed:
                self._changed.wait(min(left, 0.2))  # bounded: a change between check and wait

    # ------------------------------------------------------------------------------ serving

    def _connection_opened(self, kind: str, conn: socket.socket) -> None:
        with self._lock:
            self._connections[kind].add(conn)

    def _connection_closed(self, kind: str, conn: socket.socket) -> None:
        with self._lock:
            self._connections[kind].discard(conn)

    def _open_connections(self, kind: str) -> list[socket.socket]:
        with self._lock:
            return list(self._connections[kind])

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def _serve(self, handler: _Handler, kind: str, raw: bytes) -> None:
        endpoint, version, path = self._route(handler, kind)
        call = Call(
            endpoint=endpoint,
            method=handler.command,
            path=path,
            headers={k.lower(): v for k, v in handler.headers.items()},
            body=raw if kind == "files" else _decode(raw),
            raw=raw,
        )
        closing = handler.server.closing
        with self._lock:
            self._calls.append(call)
            stall = self._stall is not None and self._stall.matches(endpoint) and kind != "trap"
            if stall:
                self._stalled += 1
            release = self._release
            seconds, slow_pattern = self._slow
        self._notify()
        if stall:
            try:
                while not (release.wait(0.1) or closing.is_set()):
                    pass
            finally:
                with self._lock:
                    self._stalled -= 1
            if closing.is_set():
                return  # cut by down() / close(): never answered
        if (
            seconds
            and (slow_pattern is None or fnmatch.fnmatchcase(endpoint, slow_pattern))
            and closing.wait(seconds)
        ):
            return
        status, body, content_type = self._answer(kind, endpoint, version, handler, call)
        with self._lock:
            call.status = status
        self._notify()
        handler.reply(status, body, content_type)

    @staticmethod
    def _route(handler: _Handler, kind: str) -> tuple[str, str, str]:
        if kind == "trap":
            return ("proxy.connect" if handler.command == "CONNECT" else "proxy.http"), "", handler.path
        path = unquote(urlsplit(handler.path).path)
        if kind == "files":
            action = {"GET": "download", "HEAD": "download", "DELETE": "delete"}.get(
                handler.command, "upload"
            )
            return f"files.{action}", "", path
        if kind == "web":
            return "web.get", "", path
        match = re.fullmatch(r"/(?:v(\d+(?:\.\d+)*)/)?([a-z_]+)\.([a-z_]+)", path)
        if match is None:
            return "", "", path
        return f"{match[2]}.{match[3]}", match[1] or "", path

    def _answer(
        self, kind: str, endpoint: str, version: str, handler: _Handler, call: Call
    ) -> tuple[int, bytes, str]:
        with self._lock:
            rule = next((r for r in self._faults if r.remaining != 0 and r.matches(endpoint)), None)
            if rule is not None and rule.remaining is not None:
                rule.remaining -= 1
        if kind == "trap":
            return 403, b"clearml-server-double: no traffic off this machine", "text/plain"
        if rule is not None:
            return (
                rule.status,
                _envelope(endpoint, version, rule.status, "injected failure"),
                "application/json",
            )
        if kind == "web":
            return 200, b"<html><body>clearml-server-double</body></html>", "text/html"
        if kind == "files":
            return self._files(handler, call)
        try:
            if endpoint != "auth.login":
                self._check_token(call.headers.get("authorization", ""))
            data = self._api(endpoint, call)
        except ApiError as exc:
            if isinstance(exc, Unsupported):
                with self._lock:
                    self._unhandled.append(call)
            return (
                exc.status,
                _envelope(endpoint, version, exc.status, exc.message, exc.subcode),
                "application/json",
            )
        return 200, _envelope(endpoint, version, 200, "OK", data=data), "application/json"

    def _check_token(self, authorization: str) -> None:
        scheme, _, token = authorization.partition(" ")
        with self._lock:
            known = scheme == "Bearer" and token in self._tokens
        if not known:
            raise ApiError(401, "Unauthorized (invalid or missing token)", 20)

    # ------------------------------------------------------------------------------ fileserver

    def _files(self, handler: _Handler, call: Call) -> tuple[int, bytes, str]:
        path = call.path.lstrip("/")
        if call.endpoint == "files.download":
            with self._lock:
                content = self._uploads.get(path)
            if content is None:
                return 404, b"not found", "text/plain"
            return 200, content, "application/octet-stream"
        if call.endpoint == "files.delete":
            with self._lock:
                found = self._uploads.pop(path, None) is not None
            return (200, b"{}", "application/json") if found else (404, b"not found", "text/plain")
        raw: bytes = call.body
        content_type = call.headers.get("content-type", "")
        stored: dict[str, bytes] = {}
        if content_type.startswith("multipart/form-data"):
            message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                f"Content-Type: {content_type}\r\n\r\n".encode() + raw
            )
            for part in message.iter_parts():
                name = part.get_param("name", header="content-disposition") or part.get_filename()
                payload = part.get_payload(decode=True)
                if name and isinstance(payload, bytes):
                    stored["/".join(p for p in (path.rstrip("/"), str(name).lstrip("/")) if p)] = payload
        else:
            stored[path] = raw  # a plain PUT/POST of the bytes
        with self._lock:
            self._uploads.update(stored)
        return 200, json.dumps({"stored": sorted(stored)}).encode(), "application/json"

    # ------------------------------------------------------------------------------ API

    def _api(self, endpoint: str, call: Call) -> dict[str, Any]:
        service, _, action = endpoint.partition(".")
        # The SDK puts its HTTP method into every body ("method": "get"); the server ignores it.
        body = _without_method(call.body) if isinstance(call.body, dict) else {}
        if endpoint == "auth.login":
            return self._login(call.headers.get("authorization", ""))
        if endpoint == "debug.ping":
            return {"msg": "ClearML server double"}
        if endpoint == "server.info":
            return {
                "version": SERVER_VERSION,
                "build": "test",
                "commit": "test",
                "api_version": API_VERSION,
                "uid": "double",
            }
        if endpoint == "users.get_current_user":
            return {
                "user": {"id": USER_ID, "name": "Relay Test", "company": {"id": COMPANY_ID, "name": "test"}},
                "getting_started": {},
                "settings": {},
            }
        if endpoint == "events.add_batch":  # json-lines: one line decodes to a single object
            return self._add_events(call.body if isinstance(call.body, list) else [call.body])
        if endpoint == "events.add":
            return self._add_events([body])
        with self._lock:
            if service == "tasks":
                return self._tasks_api(action, body)
            if service == "models":
                return self._models_api(action, body)
            if service == "projects":
                return self._projects_api(action, body)
        raise Unsupported(endpoint or call.path)

    def _login(self, authorization: str) -> dict[str, Any]:
        scheme, _, credentials = authorization.partition(" ")
        expected = base64.b64encode(f"{self.access_key}:{self.secret_key}".encode()).decode()
        if scheme != "Basic" or not hmac.compare_digest(credentials, expected):
            raise ApiError(401, "Unauthorized (invalid credentials)", 20)
        now = int(time.time())
        claims = {
            "env": "test",
            "api_version": API_VERSION,
            "server_version": SERVER_VERSION,
            "feature_set": "basic",
            "identity": {"user": USER_ID, "company": COMPANY_ID, "role": "user"},
            "iat": now,
            "exp": now + 86400,
            "jti": _new_id(),
        }
        token = _jwt(claims, self.secret_key)
        with self._lock:
            self._tokens.add(token)
        return {"token": token}

    def _add_events(self, events: list[Any]) -> dict[str, Any]:
        added = 0
        with self._lock:
            for event in events:
                if not isinstance(event, dict) or "task" not in event:
                    continue
                task_id = event["task"]
                stored = self._events.setdefault(task_id, {})
                key = _event_id(event)
                stored.pop(key, None)  # "overwrite if exists with same ID", as the last arrival
                stored[key] = _without_method(event)
                added += 1
                task = self._tasks.get(task_id)
                if task is not None and isinstance(event.get("iter"), int) and event.get("type") != "log":
                    task["last_iteration"] = max(task.get("last_iteration") or 0, event["iter"])
        return {"added": added, "errors": 0, "errors_info": {}}

    # -- tasks (called with the lock held)

    def _task(self, task_id: Any) -> dict[str, Any]:
        task = self._tasks.get(str(task_id))
        if task is None:
            raise ApiError(400, f"Invalid task id: {task_id}", 101)
        return task

    def _tasks_api(self, action: str, body: dict[str, Any]) -> dict[str, Any]:
        if action == "create":
            task_id = _new_id()
            task = {
                "id": task_id,
                "name": body.get("name", ""),
                "type": body.get("type", "training"),
                "status": "created",
                "user": USER_ID,
                "company": COMPANY_ID,
                "created": _now(),
                "last_update": _now(),
                "last_iteration": 0,
                "tags": [],
                "system_tags": [],
                "comment": "",
                "project": None,
                "parent": None,
                "script": {},
                "execution": {},
                "output": {},
                "hyperparams": {},
                "configuration": {},
                "models": {"input": [], "output": []},
                "runtime": {},
                "container": {},
            }
            _merge_task(task, body)
            self._tasks[task_id] = task
            return {"id": task_id, "new": {}}
        if action == "get_all":
            tasks = [t for t in self._tasks.values() if _task_matches(t, body)]
            return {"tasks": [copy.deepcopy(t) for t in tasks]}
        if action == "get_by_id":
            return {"task": copy.deepcopy(self._task(body.get("task")))}
        if action == "get_types":
            return {"types": sorted({t["type"] for t in self._tasks.values()})}
        task = self._task(body.get("task"))
        task["last_update"] = task["last_change"] = _now()
        if action in ("edit", "update"):
            fields = {k: v for k, v in body.items() if k not in ("task", "force")}
            _merge_task(task, fields)
            return {"updated": 1, "fields": fields}
        if action in _STATUS_ACTIONS:
            status = _STATUS_ACTIONS[action]
            task["status"] = status
            task["status_changed"] = _now()
            task["status_reason"] = body.get("status_reason", "")
            task["status_message"] = body.get("status_message", "")
            if status == "in_progress":
                task["started"] = _now()
            elif status in ("completed", "failed", "stopped", "published"):
                task.setdefault("completed", _now())
            return {"updated": 1, "fields": {"status": status}}
        if action == "ping":
            return {}
        if action == "edit_hyper_params":
            sections: dict[str, dict[str, Any]] = task["hyperparams"]
            replace = body.get("replace_hyperparams", "none")
            if replace == "all":
                sections.clear()
            params = body.get("hyperparams") or []
            if replace == "section":
                for param in params:
                    sections.pop(param.get("section", ""), None)
            for param in params:
                sections.setdefault(param.get("section", ""), {})[param.get("name", "")] = param
            return {"updated": 1}
        if action == "get_hyper_params":
            return {"params": [self._hyperparams_of(t) for t in body.get("tasks") or []]}
        if action == "delete_hyper_params":
            for param in body.get("hyperparams") or []:
                section = task["hyperparams"].get(param.get("section", ""), {})
                if param.get("name"):
                    section.pop(param["name"], None)
                else:
                    task["hyperparams"].pop(param.get("section", ""), None)
            return {"deleted": 1}
        if action == "edit_configuration":
            if body.get("replace_configuration"):
                task["configuration"].clear()
            for item in body.get("configuration") or []:
                task["configuration"][item.get("name", "")] = item
            return {"updated": 1}
        if action == "get_configurations":
            names = body.get("names")
            return {
                "configurations": [
                    {
                        "task": t,
                        "configuration": [
                            c for n, c in self._task(t)["configuration"].items() if not names or n in names
                        ],
                    }
                    for t in body.get("tasks") or []
                ]
            }
        if action == "get_configuration_names":
            return {
                "configurations": [
                    {"task": t, "names": sorted(self._task(t)["configuration"])}
                    for t in body.get("tasks") or []
                ]
            }
        if action == "delete_configuration":
            for name in body.get("configuration") or []:
                task["configuration"].pop(name, None)
            return {"deleted": 1}
        if action == "add_or_update_model":
            kind = body.get("type", "output")
            entries = [m for m in task["models"].setdefault(kind, []) if m.get("name") != body.get("name")]
            entries.append({"name": body.get("name"), "model": body.get("model")})
            task["models"][kind] = entries
            return {"updated": 1}
        if action == "delete_models":
            for item in body.get("models") or []:
                kind = item.get("type", "output")
                task["models"][kind] = [
                    m for m in task["models"].get(kind, []) if m.get("name") != item.get("name")
                ]
            return {"updated": 1}
        if action == "add_or_update_artifacts":
            artifacts = {a.get("key"): a for a in (task.get("execution") or {}).get("artifacts") or []}
            artifacts.update({a.get("key"): a for a in body.get("artifacts") or []})
            task.setdefault("execution", {})["artifacts"] = list(artifacts.values())
            return {"updated": 1}
        if action == "set_requirements":
            task.setdefault("script", {})["requirements"] = body.get("requirements")
            return {"updated": 1}
        raise Unsupported(f"tasks.{action}")

    def _hyperparams_of(self, task_id: str) -> dict[str, Any]:
        task = self._task(task_id)
        flat = [p for section in task["hyperparams"].values() for p in section.values()]
        return {"task": task_id, "hyperparams": flat}

    # -- models (called with the lock held)

    def _model(self, model_id: Any) -> dict[str, Any]:
        model = self._models.get(str(model_id))
        if model is None:
            raise ApiError(400, f"Invalid model id: {model_id}", 401)
        return model

    def _models_api(self, action: str, body: dict[str, Any]) -> dict[str, Any]:
        if action == "create":
            model_id = _new_id()
            model = {
                "id": model_id,
                "user": USER_ID,
                "company": COMPANY_ID,
                "created": _now(),
                "ready": False,
                "tags": [],
                "system_tags": [],
                "comment": "",
                "labels": {},
                "design": {},
                "metadata": {},
            }
            model.update(body)
            model["metadata"] = _metadata(body.get("metadata"))
            self._models[model_id] = model
            return {"id": model_id, "created": True}
        if action == "get_all":
            models = [m for m in self._models.values() if _model_matches(m, body)]
            return {"models": [copy.deepcopy(m) for m in models]}
        if action == "get_by_id":
            return {"model": copy.deepcopy(self._model(body.get("model")))}
        if action == "get_by_task_id":
            task = self._task(body.get("task"))
            outputs = task["models"].get("output") or []
            if not outputs:
                raise ApiError(400, "task has no output model", 401)
            return {"model": copy.deepcopy(self._model(outputs[-1]["model"]))}
        if action == "update_for_task":
            task = self._task(body.get("task"))
            model_id = body.get("override_model_id")
            created = model_id is None
            if created:
                model_id = _new_id()
                self._models[model_id] = {
                    "id": model_id,
                    "created": _now(),
                    "task": task["id"],
                    "ready": False,
                }
            model = self._model(model_id)
            fields = {k: v for k, v in body.items() if k not in ("override_model_id",) and v is not None}
            model.update(fields)
            task["models"].setdefault("output", []).append({"name": model.get("name"), "model": model_id})
            return {"id": model_id, "created": created, "updated": 1, "fields": fields}
        model = self._model(body.get("model"))
        if action in ("edit", "update"):
            fields = {k: v for k, v in body.items() if k != "model"}
            if "metadata" in fields:
                fields["metadata"] = _metadata(fields["metadata"])
            model.update(fields)
            model["last_update"] = _now()
            return {"updated": 1, "fields": fields}
        if action == "set_ready":
            model["ready"] = True
            return {"updated": 1, "published_task": {}}
        if action == "add_or_update_metadata":
            model.setdefault("metadata", {}).update(_metadata(body.get("metadata")))
            return {"updated": 1}
        raise Unsupported(f"models.{action}")

    # -- projects (called with the lock held)

    def _projects_api(self, action: str, body: dict[str, Any]) -> dict[str, Any]:
        if action == "create":
            name = body.get("name", "")
            if any(p["name"] == name for p in self._projects.values()):
                raise ApiError(400, f"Project with the same name already exists: {name}", 702)
            project_id = _new_id()
            self._projects[project_id] = {
                "id": project_id,
                "name": name,
                "basename": name.rsplit("/", 1)[-1],
                "description": body.get("description", ""),
                "system_tags": body.get("system_tags") or [],
                "tags": body.get("tags") or [],
                "created": _now(),
                "user": USER_ID,
                "company": COMPANY_ID,
            }
            return {"id": project_id}
        if action == "get_all":
            projects = [p for p in self._projects.values() if _project_matches(p, body)]
            return {"projects": [copy.deepcopy(p) for p in projects]}
        if action == "get_by_id":
            project = self._projects.get(str(body.get("project")))
            if project is None:
                raise ApiError(400, f"Invalid project id: {body.get('project')}", 401)
            return {"project": copy.deepcopy(project)}
        raise Unsupported(f"projects.{action}")


# ------------------------------------------------------------------------------------- helpers


def _decode(raw: bytes) -> Any:
    """JSON, json-lines (a list), or the bytes as they came."""
    if not raw:
        return {}
    text = raw.decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except ValueError:
        return raw


def _event_id(event: dict[str, Any]) -> str:
    """The id clearml-server indexes an event under: derived for metrics, new for a log line."""
    if event.get("type") == "log":
        return _new_id()
    fields = ("task", "iter", "metric", "variant", "key")
    return hashlib.md5("-".join(str(event[f]) for f in fields if f in event).encode()).hexdigest()


def _without_method(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "method"}


def _envelope(
    endpoint: str,
    version: str,
    status: int,
    message: str,
    subcode: int = 0,
    data: dict[str, Any] | None = None,
) -> bytes:
    meta = {
        "id": _new_id(),
        "trx": _new_id(),
        "endpoint": {
            "name": endpoint,
            "requested_version": version or API_VERSION,
            "actual_version": API_VERSION,
        },
        "result_code": status,
        "result_subcode": subcode,
        "result_msg": message,
        "error_stack": "",
        "error_data": {},
    }
    return json.dumps({"meta": meta, "data": data if data is not None else {}}).encode()


#: Request fields stored elsewhere in the task (apiserver's field mapping).
_TASK_FIELDS = {"output_dest": "output__destination"}


def _merge_task(task: dict[str, Any], fields: dict[str, Any]) -> None:
    """Apply a tasks.create / edit / update body: ``a__b`` keys nest (``output__error``)."""
    for name, value in fields.items():
        key = _TASK_FIELDS.get(name, name)
        if "__" in key:
            outer, _, inner = key.partition("__")
            task.setdefault(outer, {})[inner] = value
        else:
            task[key] = copy.deepcopy(value)


def _metadata(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, list):
        return {item.get("key"): item for item in value if isinstance(item, dict)}
    return {}


def _ids(value: Any) -> list[str] | None:
    if value is None:
        return None
    return [value] if isinstance(value, str) else list(value)


def _name_matches(name: str, pattern: Any) -> bool:
    """The server treats ``name`` filters as regular expressions (the SDK sends ``^...$``)."""
    if pattern is None:
        return True
    try:
        return re.search(str(pattern), name) is not None
    except re.error:
        return name == pattern


def _tags_match(tags: list[str], wanted: Any) -> bool:
    if not wanted:
        return True
    include = [t for t in wanted if not t.startswith("-")]
    exclude = [t[1:] for t in wanted if t.startswith("-")]
    return all(t in tags for t in include) and not any(t in tags for t in exclude)


def _task_matches(task: dict[str, Any], query: dict[str, Any]) -> bool:
    ids = _ids(query.get("id"))
    projects = _ids(query.get("project"))
    statuses = _ids(query.get("status"))
    return (
        (ids is None or task["id"] in ids)
        and (projects is None or task.get("project") in projects)
        and (statuses is None or task.get("status") in statuses)
        and _name_matches(task.get("name", ""), query.get("name"))
        and _tags_match(task.get("tags") or [], query.get("tags"))
        and _tags_match(task.get("system_tags") or [], query.get("system_tags"))
    )


def _model_matches(model: dict[str, Any], query: dict[str, Any]) -> bool:
    ids = _ids(query.get("id"))
    tasks = _ids(query.get("task"))
    projects = _ids(query.get("project"))
    return (
        (ids is None or model["id"] in ids)
        and (tasks is None or model.get("task") in tasks)
        and (projects is None or model.get("project") in projects)
        and _name_matches(model.get("name") or "", query.get("name"))
        and _tags_match(model.get("tags") or [], query.get("tags"))
    )


def _project_matches(project: dict[str, Any], query: dict[str, Any]) -> bool:
    ids = _ids(query.get("id"))
    return (ids is None or project["id"] in ids) and _name_matches(project["name"], query.get("name"))
