"""A comparable summary of one ClearML offline session, for the logger parity test.

An offline session is the folder ``$CLEARML_CACHE_DIR/offline/<task id>/`` (task ids look like
``offline-<hex>``) that ClearML writes in offline mode (a zip of it lies beside it once the task is
closed). It holds:

- ``metrics.jsonl``: one JSON list of events a line; ``type`` is ``training_stats_scalar``
  (scalars; single values are scalars titled ``Summary`` at iteration -2**31), ``plot`` (a
  ``plot_str`` holding a plotly figure as JSON) or ``training_debug_image`` (images AND media);
- ``log.jsonl``: the console, one JSON list of ``{"type": "log", "level", "msg", ...}`` a line
  (lines reported together are joined with newlines in one ``msg``);
- ``task.json``: the task (``hyperparams``, ``configuration``, ``script``, ...);
- ``data/<project>/<task name>.<task id>/metrics/<title>/<series>/<title>_<series>_<NNNNNNNN>.<ext>``:
  the files of debug images, media and image plots. An event's ``key`` is that path below ``data/``
  and its ``url`` the absolute path of the file when the session was written; image plots (a
  matplotlib figure ClearML could not convert, or ``report_interactive=False``) name the same kind
  of path in ``layout.images[].source`` of their ``plot_str``. ``NNNNNNNN`` is a counter modulo
  ``max_image_history`` (5 by default): a later image reuses an earlier one's file, and both
  events then name the same file. ClearML writes those files from a pool of 4 threads
  (``sdk.network.metrics.file_upload_threads``), so WHICH of the images the shared file ends up
  holding differs from run to run (measured: the iteration-0 image won in one of two runs, the
  iteration-2 image in the other). URL-only images and media keep their ``http(s)`` url and have
  no file.

:func:`summarize` returns ``{"events": {type: [event, ...]}, "console": [...], "hyperparams": ...,
"configuration": ...}`` in which each event list is sorted (by its canonical JSON), so that two
sessions of the same script give equal summaries whatever the order ClearML wrote events in.

Compared, per event: ``type``, ``metric``, ``variant``, ``iter``, and

- scalars: ``value``;
- plots: the parsed ``plot_str``, in which every local file it names (image plots) is replaced by
  the content of that file (see below) and every occurrence of the task id by ``<task>``;
- debug images and media: ``content``: for a file PIL decodes, ``{"format", "mode", "size",
  "pixels"}`` (``pixels`` is the sha256 of the decoded bytes); for another file, ``{"suffix",
  "sha256"}`` of its bytes; for an ``http(s)`` url, ``{"url"}``; ``None`` when the event names no
  file or the file is missing (ClearML copies ``local_path`` files later, in a pool, and writes the
  event even when the copy failed); ``{"shared": n}`` for a file that ``n`` > 1 references (events
  and image-plot sources together) name: its content is a race (see above), the sharing is not.

Compared, besides: the console as ``[level, line]`` pairs in the order written (each ``msg``
split into its lines), without ClearML's own lines (:data:`CLEARML_OWN_LINE`: its announcements
of the task id and session folder, and its ``clearml.*`` loggers' records, present or not
depending on a background thread's timing); ``task.json``'s ``hyperparams``
(``{section: {name: {"type", "value", "description"}}}``) and ``configuration`` sections
(``{name: {"type", "value", "description"}}``).

Dropped, because they legitimately differ between two runs of the same script: ``timestamp``
and ``@timestamp`` (wall clock), ``task`` (the task id), ``worker`` (the host), ``method``
(ClearML's request bookkeeping), ``key`` and ``url`` of local files (the task id, the cache folder
and the counter-derived file name: the file's content is compared instead), and every other
part of ``task.json`` (id, ``offline_folder``, ``script`` with its source and requirements,
``execution``, ``output``, models).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any

#: Event fields compared as they are; everything else an event carries is dropped or digested.
KEPT_FIELDS = ("type", "metric", "variant", "iter")
#: Console lines ClearML writes itself, not the script: its announcements (``ClearML Task: created
#: new task id=...``, ``ClearML running in offline mode, session stored in ...``) and records of its
#: ``clearml.*`` Python loggers (``2026-01-01 10:00:00,000 - clearml.Task - INFO - No repository
#: found, ...``), which a background thread writes or not depending on timing.
CLEARML_OWN_LINE = re.compile(r"ClearML |\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ - clearml[\w. ]* - ")
#: Keys of a hyperparameter or configuration entry that are compared.
PARAM_FIELDS = ("type", "value", "description")


class _Context:
    """What summarizing one session's events needs: its folder, task id and shared files."""

    def __init__(self, session: Path, task_id: str, events: list[dict[str, Any]]) -> None:
        self.session = session
        self.task_id = task_id
        self.references: dict[Path, int] = {}
        for event in events:
            for ref in _references(session, event):
                self.references[ref] = self.references.get(ref, 0) + 1

    def content(self, url: str | None) -> dict[str, Any] | None:
        """:func:`file_content`, or ``{"shared": n}`` for a file ``n`` > 1 references name."""
        path = local_file(self.session, url)
        count = self.references.get(path, 0) if path is not None else 0
        if count > 1:
            return {"shared": count}
        return file_content(self.session, url)


def summarize(session: Path) -> dict[str, Any]:
    """The comparable summary of the offline session folder ``session`` (see the module doc)."""
    task = _read_json(session / "task.json", default={})
    context = _Context(session, str(task.get("id") or session.name), raw_events(session))
    return {
        "events": _events(context),
        "console": console(session),
        "hyperparams": _hyperparams(task),
        "configuration": _configuration(task),
    }


def raw_events(session: Path, name: str = "metrics.jsonl") -> list[dict[str, Any]]:
    """Every event of ``session/name`` (a ``*.jsonl`` of JSON lists), in file order."""
    path = session / name
    if not path.is_file():
        return []
    return [event for line in path.read_text().splitlines() if line.strip() for event in json.loads(line)]


def console(session: Path) -> list[list[str]]:
    """``[level, line]`` of each console line the script reported, in order (see the module doc)."""
    out: list[list[str]] = []
    for event in raw_events(session, "log.jsonl"):
        for line in str(event.get("msg", "")).splitlines():
            if not CLEARML_OWN_LINE.match(line):
                out.append([str(event.get("level")), line])
    return out


def _references(session: Path, event: dict[str, Any]) -> list[Path]:
    """The local files an event names: its ``url``, or the image sources of an image plot."""
    if event.get("type") == "plot":
        layout = (json.loads(event.get("plot_str") or "{}") or {}).get("layout") or {}
        urls = [image.get("source") for image in layout.get("images") or [] if isinstance(image, dict)]
    else:
        urls = [event.get("url")]
    return [path for path in (local_file(session, url) for url in urls) if path is not None]


def _events(context: _Context) -> dict[str, list[dict[str, Any]]]:
    """The summarized events grouped by type, each group sorted by canonical JSON."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for event in raw_events(context.session):
        summary = _event(context, event)
        groups.setdefault(summary["type"], []).append(summary)
    return {kind: sorted(items, key=_canonical) for kind, items in sorted(groups.items())}


def _event(context: _Context, event: dict[str, Any]) -> dict[str, Any]:
    """One event reduced to what two equivalent sessions share."""
    out = {field: event.get(field) for field in KEPT_FIELDS}
    kind = event.get("type")
    if kind == "training_stats_scalar":
        out["value"] = _plain_floats(event.get("value"))
    elif kind == "plot":
        out["plot"] = _normalized(context, json.loads(event.get("plot_str") or "null"))
    elif kind == "training_debug_image":
        out["content"] = context.content(event.get("url"))
    else:  # unknown kinds: everything but the run-specific fields
        out["other"] = _normalized(context, _without_run_fields(event))
    return out


def _without_run_fields(event: dict[str, Any]) -> dict[str, Any]:
    dropped = {"timestamp", "@timestamp", "task", "worker", "method", "key", "url", *KEPT_FIELDS}
    return {k: v for k, v in event.items() if k not in dropped}


def _normalized(context: _Context, value: Any) -> Any:
    """``value`` with local file paths replaced by their content and the task id by ``<task>``."""
    if isinstance(value, dict):
        return {k: _normalized(context, v) for k, v in value.items() if k not in ("@timestamp", "timestamp")}
    if isinstance(value, list):
        return [_normalized(context, v) for v in value]
    if isinstance(value, str):
        if local_file(context.session, value) is not None:
            return {"file": context.content(value)}
        return value.replace(context.task_id, "<task>") if context.task_id else value
    return _plain_floats(value)


def local_file(session: Path, url: str | None) -> Path | None:
    """The file in ``session`` that an event's ``url`` (or an image plot's source) refers to.

    ``url`` is the absolute path of the file when ClearML wrote the session
    (``<session>/data/<key>``); a session moved or extracted elsewhere is still resolved, by the
    part of the path after ``<session name>/data/``. ``None`` for remote urls and missing files.
    """
    if not url or ("://" in url and not url.startswith("file://")):
        return None
    path = Path(url.removeprefix("file://"))
    if not path.is_absolute():
        return None
    if path.is_file():
        return path
    parts = path.parts
    for i in range(len(parts) - 1):
        if parts[i] == session.name and parts[i + 1] == "data":
            moved = session.joinpath(*parts[i + 1 :])
            return moved if moved.is_file() else None
    return None


def file_content(session: Path, url: str | None) -> dict[str, Any] | None:
    """What an event's file holds: decoded pixels for images, a digest for other files."""
    if url and url.startswith(("http://", "https://")):
        return {"url": url}
    path = local_file(session, url)
    if path is None:
        return None
    image = image_digest(path)
    if image is not None:
        return image
    return {"suffix": path.suffix, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def image_digest(path: Path) -> dict[str, Any] | None:
    """``{"format", "mode", "size", "pixels"}`` of an image file, ``None`` if PIL cannot decode it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            pixels = hashlib.sha256(image.tobytes()).hexdigest()
            return {"format": image.format, "mode": image.mode, "size": list(image.size), "pixels": pixels}
    except (UnidentifiedImageError, OSError, ValueError, ImportError):
        # ImportError: once Ultralytics is imported (by another test of the same process) its
        # patched Image.open tries pi_heif for a file PIL cannot identify.
        return None


def _hyperparams(task: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    sections = task.get("hyperparams") or {}
    return {
        section: {name: _param(entry) for name, entry in sorted((params or {}).items())}
        for section, params in sorted(sections.items())
    }


def _configuration(task: dict[str, Any]) -> dict[str, dict[str, Any]]:
    items = task.get("configuration") or {}
    return {name: _param(entry) for name, entry in sorted(items.items())}


def _param(entry: Any) -> dict[str, Any]:
    if not isinstance(entry, dict):
        return {"value": entry}
    return {field: entry.get(field) for field in PARAM_FIELDS}


def _plain_floats(value: Any) -> Any:
    """NaN made comparable (``nan != nan``): the string ``"NaN"``; infinities stay floats."""
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    return value


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _read_json(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default
