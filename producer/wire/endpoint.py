"""ZeroMQ endpoints as both sides read them from settings and flags: one check, one message.

The producer's ``CLEARML_RELAY_ENDPOINT`` and ``endpoint=``, the collector's ``--bind`` and
``CLEARML_RELAY_BIND``, ``status --endpoint`` and ``sync --endpoint`` all go through
:func:`check_endpoint`, and a mistake reads the same wherever it was made::

    --bind='127.0.0.1:46999': expected a ZeroMQ endpoint: tcp://host:port, ipc://path or inproc://name

:func:`problem` writes that line; the caller names where the value came from (a flag, a
variable or an argument).
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

#: What every endpoint mistake says was expected.
EXPECTED: Final = "expected a ZeroMQ endpoint: tcp://host:port, ipc://path or inproc://name"

# host: a name or IPv4 address, a bracketed IPv6 address, or * (every interface, bind only).
_TCP: Final = re.compile(r"tcp://(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+|\*):(?P<port>\d{1,5}|\*)")
_OTHER: Final = re.compile(r"(ipc|inproc)://\S+")


class EndpointError(ValueError):
    """Not an endpoint ZeroMQ can use; the message says what was expected."""


def check_endpoint(raw: object, *, bind: bool = False) -> str:
    """``raw`` as a ZeroMQ endpoint (surrounding blanks removed), or :class:`EndpointError`.

    Args:
        raw: The value given.
        bind: The endpoint is bound, not connected to: ``*`` as host, port 0 or ``*`` are allowed.

    """
    value = raw.strip() if isinstance(raw, str) else ""
    if _OTHER.fullmatch(value):
        return value
    match = _TCP.fullmatch(value)
    if match is not None:
        host, port = match["host"], -1 if match["port"] == "*" else int(match["port"])
        # Connecting needs a host and a port; binding also takes * (every interface, a free port) and 0.
        if port < 65536 and (bind or (host != "*" and port > 0)):
            return value
    raise EndpointError(EXPECTED)


def check_endpoints(raw: object) -> tuple[str, ...]:
    """A comma-separated list of collector endpoints (one or more), each checked; no duplicates."""
    parts = [part.strip() for part in raw.split(",")] if isinstance(raw, str) else [raw]
    endpoints = tuple(check_endpoint(part) for part in parts)
    if len(set(endpoints)) != len(endpoints):
        raise EndpointError(f"{EXPECTED}; each collector once")
    return endpoints


def home_of(run_id: str, endpoints: tuple[str, ...]) -> str:
    """The collector a run goes to: rendezvous (highest random weight) hashing of its id.

    Every producer with the same list picks the same collector for a run; adding a collector
    takes about 1/N of the runs from each other one, removing one moves only its own runs.
    """
    return max(endpoints, key=lambda endpoint: hashlib.sha256(f"{endpoint}\0{run_id}".encode()).digest())


def problem(source: str, raw: object, error: object) -> str:
    """The one line that reports a bad value: ``SOURCE=VALUE: what was expected``."""
    return f"{source}={raw!r}: {error}"
