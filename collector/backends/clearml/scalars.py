"""Scalars by the batch: their ClearML add requests built as dicts, queued and written as the SDK's.

Part of :mod:`collector.backends.clearml.compat` (every use of clearml SDK internals is there or
here), split out for its size; it does not import compat.

Per scalar the SDK builds a ``ScalarEvent``, which builds a validated ``MetricsScalarEvent``
once to check it and again to write it, wrapped in an ``AddRequest`` (all datamodel objects
with checked properties): 25-35 us per scalar, most of the collector's apply time. The requests
those objects turn into are plain dicts. :meth:`TaskWriters.report_scalars` builds those dicts
(2 us) and queues a whole batch as one :class:`ScalarRows`, in order among the other events;
``_watch_metrics`` writes it as ``Metrics._do_write_events`` writes requests: offline one JSON
line of them appended to the session's metrics.jsonl, online one ``events.add_batch``
(``AddBatchRequest`` takes raw request dicts). :func:`scalar_request` is checked against the
SDK's own request for a probe scalar for every task (a mismatch falls back to the SDK's path);
tests/integration/test_clearml_rows.py pins the bytes written offline and sent online against
what ``Logger.report_scalar`` writes and sends for the same calls.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Final

from clearml.backend_api import Session
from clearml.backend_api.services import events as api_events
from clearml.backend_interface.metrics.events import MetricsEventAdapter

log = logging.getLogger("collector.backends.clearml.backend")


#: The fields of a scalar's add request, in the order the SDK's datamodel writes them.
_SCALAR_FIELDS: Final = ("timestamp", "type", "task", "iter", "metric", "variant", "value")


class ScalarRows(MetricsEventAdapter):
    """Many scalars as one queued event: their add requests, built by :meth:`TaskWriters.report_scalars`."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        # Not MetricsEventAdapter.__init__: that builds an API event to validate it.
        self.rows = rows
        self.upload_exception = None
        self.last_iteration: int = max(row["iter"] for row in rows)

    def get_api_event(self) -> Any:
        raise TypeError("ScalarRows are written by compat._watch_metrics, not by the SDK")

    def get_iteration(self) -> int:
        return self.last_iteration


def _request_kwargs(metrics: Any) -> dict[str, Any]:
    """What ``Metrics._do_write_events`` adds to each ``AddRequest`` (by server API version)."""
    return {"model_event": metrics._for_model} if Session.check_min_api_version("2.23") else {}


def scalar_request(
    extra: dict[str, Any], *, timestamp: int, metric: str, variant: str, value: float, iteration: int
) -> dict[str, Any]:
    """One scalar's add request as the SDK writes it (``task`` is filled in when written)."""
    return {
        "timestamp": timestamp,
        "type": "training_stats_scalar",
        "task": None,
        "iter": iteration,
        "metric": metric,
        "variant": variant,
        "value": value,
        **extra,
    }


def scalar_request_extra(metrics: Any) -> dict[str, Any] | None:
    """The request's fields besides the event's; None if the SDK's request for a probe is not ours."""
    if metrics._for_model:
        return None  # offline, model events get another field: not needed by the collector
    fields = {"timestamp": 1, "task": "probe", "iter": 2, "metric": "m", "variant": "v", "value": 0.5}
    event = api_events.MetricsScalarEvent(**fields)
    theirs = api_events.AddRequest(event=event, **_request_kwargs(metrics)).to_dict()
    extra = {key: value for key, value in theirs.items() if key not in _SCALAR_FIELDS}
    ours = scalar_request(extra, timestamp=1, metric="m", variant="v", value=0.5, iteration=2)
    ours["task"] = "probe"
    if json.dumps(ours) != json.dumps(theirs):
        log.warning(
            "clearml writes scalar requests as %s, not as %s: reporting them one by one", theirs, ours
        )
        return None
    return extra


def write_rows(metrics: Any, requests: list[dict[str, Any]], lost: list[str]) -> Any:
    """Write scalar requests as ``Metrics._do_write_events`` writes the SDK's (see above)."""
    task_id, offset = metrics._task_id, metrics._task_iteration_offset
    for request in requests:
        request["task"] = task_id
        if offset:
            request["iter"] += offset
    if metrics._offline_mode:
        with open(metrics._offline_log_filename.as_posix(), "a") as f:
            f.write(json.dumps(requests) + "\n")
        return None
    try:
        result = metrics.send(api_events.AddBatchRequest(requests=requests), raise_on_errors=False)
    except BaseException as exc:
        lost.append(f"writing {len(requests)} scalars raised {exc!r}")
        raise
    if result is not None and not result.ok():
        lost.append(f"the server refused {len(requests)} scalars: {result.meta}")
    return result
