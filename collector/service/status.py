"""``clearml-relay status``: a live view of a running collector, over its own ZeroMQ socket.

The collector answers a ``StatusRequest`` with its counters and every run's journaled and applied
positions (:class:`producer.wire.protocol.StatusReply`). Rates need two samples: the view compares the
counters of the latest sample with the one before (``--interval`` apart), so ``events/s`` is what
the collector did in that interval, not since it started. Unlike ``clearml-relay runs`` (which
reads a data directory), this works from any host that reaches the collector's endpoint, and it
shows what the running process holds in memory (the applied position before the backend's next
checkpoint).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final

import zmq

from producer.config import ENDPOINT
from producer.wire import protocol
from producer.wire.curve import KeySettingError, curve_from_env

#: How many runs the table lists (open and behind first); ``--json`` lists every run.
TABLE_RUNS: Final = 40


class NoAnswerError(RuntimeError):
    """No collector answered at the endpoint within the timeout."""


class BadEndpointError(ValueError):
    """ZeroMQ cannot connect to the endpoint as written (the message names it)."""


def endpoint(given: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The collector to ask: ``given`` (``--endpoint``) > ``CLEARML_RELAY_ENDPOINT`` > its default.

    The producers' setting (:data:`producer.config.ENDPOINT`), read as text: the command checks
    it itself, and ZeroMQ says what it cannot connect to (:class:`BadEndpointError`).
    """
    return given or ENDPOINT.raw(environ) or str(ENDPOINT.default)


@dataclass(frozen=True)
class Sample:
    at: float  # time.monotonic() when the reply came
    reply: protocol.StatusReply


class StatusClient:
    """Asks one collector for its status.

    Each request goes on a fresh socket, so a late reply to an earlier, timed-out request can
    never be mistaken for the answer to the next one.
    """

    def __init__(self, endpoint: str, timeout: float) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        try:
            self._curve = curve_from_env()  # a CURVE collector answers its listed keys only
        except KeySettingError as exc:
            raise BadEndpointError(str(exc)) from None
        self._context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()

    def __enter__(self) -> StatusClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._context.term()

    def sample(self) -> Sample:
        """One StatusReply, or :class:`NoAnswerError` after ``timeout`` seconds."""
        sock = self._context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        if self._curve is not None:
            self._curve.apply(sock)
        try:
            try:
                sock.connect(self.endpoint)
            except zmq.ZMQError as exc:
                raise BadEndpointError(f"endpoint {self.endpoint!r}: {exc}") from None
            sock.send_multipart([protocol.HEADER, protocol.encode(protocol.StatusRequest())])
            deadline = time.monotonic() + self.timeout
            while (remaining := deadline - time.monotonic()) > 0:
                if not sock.poll(int(remaining * 1000) + 1, zmq.POLLIN):
                    break
                try:
                    reply = protocol.decode_reply(sock.recv_multipart())
                except protocol.ProtocolError as exc:
                    raise NoAnswerError(f"{self.endpoint} answered something else: {exc}") from None
                if isinstance(reply, protocol.StatusReply):
                    return Sample(time.monotonic(), reply)
            raise NoAnswerError(f"no collector answered at {self.endpoint} within {self.timeout:g} s")
        finally:
            sock.close(linger=0)


def _received(counters: dict[str, int]) -> int:
    return sum(value for name, value in counters.items() if name.startswith("received."))


def _refused(counters: dict[str, int]) -> int:
    return sum(value for name, value in counters.items() if name.startswith("refused_"))


def view(endpoint: str, current: Sample, previous: Sample | None) -> dict[str, Any]:
    """The status as plain data (what ``--json`` prints): totals, rates, counters, runs.

    Rates are None without a previous sample. Runs are listed open and behind first, then by id.
    """
    counters = current.reply.counters
    elapsed = current.at - previous.at if previous is not None else 0.0
    before = previous.reply.counters if previous is not None else {}
    earlier = {info.run: info for info in previous.reply.runs} if previous is not None else {}

    def rate(now: int, then: int) -> float | None:
        return round(max(0, now - then) / elapsed, 1) if elapsed > 0 else None

    runs = []
    for info in current.reply.runs:
        backlog = max(0, info.journaled - info.applied)
        last = earlier.get(info.run)
        runs.append(
            {
                "run": info.run,
                "project": info.project,
                "name": info.name,
                "state": info.state,
                "journaled": info.journaled,
                "applied": info.applied,
                "backlog": backlog,
                "applied_per_s": rate(info.applied, last.applied if last else info.applied),
            }
        )
    runs.sort(key=lambda r: (r["state"] != "open" and not r["backlog"], r["run"]))
    return {
        "endpoint": endpoint,
        "interval_s": round(elapsed, 3) if elapsed > 0 else None,
        "totals": {
            "runs": len(runs),
            "open": sum(r["state"] == "open" for r in runs),
            "backlog": sum(r["backlog"] for r in runs),
        },
        "rates": {
            "received_per_s": rate(_received(counters), _received(before)),
            "journaled_per_s": rate(counters.get("events_journaled", 0), before.get("events_journaled", 0)),
            "applied_per_s": rate(counters.get("applied", 0), before.get("applied", 0)),
            "refused_per_s": rate(_refused(counters), _refused(before)),
        },
        "counters": dict(sorted(counters.items())),
        "runs": runs,
    }


def render(data: dict[str, Any], error: str = "") -> Any:
    """A rich renderable of :func:`view`'s data for a terminal (with ``error`` in red if given)."""
    from rich.console import Group  # noqa: PLC0415  (rich is the collector extra's, loaded on use)
    from rich.table import Table  # noqa: PLC0415
    from rich.text import Text  # noqa: PLC0415

    totals, rates = data["totals"], data["rates"]

    def per_s(value: float | None) -> str:
        return "-" if value is None else f"{value:,.1f}/s"

    summary = Text(
        f"collector {data['endpoint']}: {totals['runs']} runs, {totals['open']} open, "
        f"backlog {totals['backlog']:,} events | received {per_s(rates['received_per_s'])}, "
        f"journaled {per_s(rates['journaled_per_s'])}, applied {per_s(rates['applied_per_s'])}, "
        f"refused {per_s(rates['refused_per_s'])}"
    )
    table = Table(title_justify="left")
    numbers = ("journaled", "applied", "backlog", "applied/s")
    for column in ("run", "project", "name", "state", *numbers):
        table.add_column(column, justify="right" if column in numbers else "left")
    for row in data["runs"][:TABLE_RUNS]:
        table.add_row(
            row["run"],
            row["project"],
            row["name"],
            row["state"],
            f"{row['journaled']:,}",
            f"{row['applied']:,}",
            f"{row['backlog']:,}",
            per_s(row["applied_per_s"]).removesuffix("/s"),
        )
    hidden = len(data["runs"]) - TABLE_RUNS
    if hidden > 0:
        table.caption = f"{hidden} more finished runs (--json lists every run)"
    counters = data["counters"]
    problems = {
        name: value
        for name, value in counters.items()
        if value and (name.startswith("refused_") or "error" in name or name in ("rewinds", "journal_damage"))
    }
    parts: list[Any] = [summary, table]
    if problems:
        parts.append(Text("counted: " + ", ".join(f"{name} {value:,}" for name, value in problems.items())))
    if error:
        parts.insert(0, Text(error, style="bold red"))
    return Group(*parts)


def _console() -> Any:
    from rich.console import Console  # noqa: PLC0415

    # Piped output gets a wide table instead of rich's default 80 columns.
    return Console() if sys.stdout.isatty() else Console(width=160)


def once(endpoint: str, *, as_json: bool, interval: float, timeout: float) -> str:
    """The status as text to print: two samples ``interval`` apart (one if 0) as JSON or a table.

    Raises:
        NoAnswerError: the collector did not answer one of the samples in time.
        BadEndpointError: the endpoint cannot be connected to as written.

    """
    with StatusClient(endpoint, timeout) as client:
        first = current = client.sample()
        previous = None
        if interval > 0:
            time.sleep(interval)  # rates come from two samples this far apart
            previous, current = first, client.sample()
    data = view(endpoint, current, previous)
    if as_json:
        return json.dumps(data, indent=2)
    console = _console()
    with console.capture() as captured:
        console.print(render(data))
    text: str = captured.get()
    return text.rstrip("\n")


def watch(endpoint: str, *, as_json: bool, interval: float, timeout: float) -> None:
    """Sample every ``interval`` seconds until interrupted (KeyboardInterrupt ends it).

    A collector that stops answering is shown, not fatal: it may be restarting. JSON is one
    object per line (``{"endpoint": ..., "error": ...}`` for a missed sample).

    Raises:
        BadEndpointError: the endpoint cannot be connected to as written.

    """
    previous: Sample | None = None
    last: dict[str, Any] | None = None
    with StatusClient(endpoint, timeout) as client:

        def frame() -> str:
            nonlocal previous, last
            try:
                current = client.sample()
            except NoAnswerError as exc:
                return str(exc)
            last = view(endpoint, current, previous)
            previous = current
            return ""

        if as_json:
            while True:
                error = frame()
                print(json.dumps({"endpoint": endpoint, "error": error} if error else last), flush=True)
                time.sleep(interval)
        from rich.live import Live  # noqa: PLC0415
        from rich.text import Text  # noqa: PLC0415

        with Live(Text(f"asking {endpoint}..."), console=_console(), auto_refresh=False) as live:
            while True:
                error = frame()
                live.update(render(last, error) if last is not None else Text(error, style="bold red"))
                live.refresh()
                time.sleep(interval)
