"""Log line formats for the command line: human text, or one JSON object per line for log shippers.

The library modules only log (stable messages, values as arguments) and attach the run id and
the event kind as ``extra={"run": ..., "kind": ...}`` where a line is about one run; the CLI
picks the format. In JSON every line has ``time`` (UTC, ISO 8601 with milliseconds),
``level``, ``logger`` and ``message``, plus ``run`` and ``kind`` when the call passed them and
``exception`` (the formatted traceback) when there is one, so a log pipeline can filter one
run's lines without parsing messages.

A service in JSON mode also routes what libraries write straight to ``sys.stdout`` and
``sys.stderr`` (ClearML's own loggers have handlers of their own on both streams) through
:class:`LinesToLog`, so that every line the process writes is JSON: those lines come out with
``logger`` ``stdout`` or ``stderr``.
"""

from __future__ import annotations

import io
import json
import logging
import sys
import threading
from datetime import datetime, timezone
from typing import Any, Final

TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Fields taken from ``extra=`` when a log call passes them (and they are not None).
FIELDS: Final = ("run", "kind")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in messages and tracebacks are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created, tz=timezone.utc)
        line: dict[str, Any] = {
            "time": when.isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                line[field] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def formatter(kind: str) -> logging.Formatter:
    """The formatter for ``--log-format`` ``kind`` (``text`` or ``json``)."""
    if kind == "json":
        return JsonFormatter()
    if kind == "text":
        return logging.Formatter(TEXT_FORMAT)
    raise ValueError(f"unknown log format {kind!r}: expected text or json")


class LinesToLog(io.TextIOBase):
    """A text stream that logs each complete line written to it (a stand-in for sys.stdout)."""

    def __init__(self, logger: logging.Logger, level: int) -> None:
        super().__init__()
        self._logger = logger
        self._level = level
        self._pending = ""
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self._lock:
            *lines, self._pending = (self._pending + text).split("\n")
        for line in lines:
            if line.strip():
                self._logger.log(self._level, "%s", line.rstrip())
        return len(text)


def json_service_logging(level: str) -> None:
    """Log JSON lines to stderr, and turn whatever else the process prints into JSON lines too."""
    handler = logging.StreamHandler(sys.stderr)  # the real stderr, taken before it is replaced
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    sys.stdout = LinesToLog(logging.getLogger("stdout"), logging.INFO)
    sys.stderr = LinesToLog(logging.getLogger("stderr"), logging.WARNING)
