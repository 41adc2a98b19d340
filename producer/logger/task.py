"""``Task``'s hyperparameter, configuration and model entry points, as events of a run.

``Run.connect``, ``Run.connect_configuration``, ``Run.set_parameters`` / ``update_parameters``
and ``Run.update_output_model`` take what ``clearml.Task``'s methods of the same names take.
The collector calls those same methods on the run's task, so the hyperparameter sections and
configuration objects come out as ClearML makes them. What differs: nothing flows back (ClearML
returns a dict that writes later changes to the task; here ``connect`` returns the object as it
is, and a later change needs another ``connect``), and no file is ever deleted.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Final

import msgspec

from producer import arguments as check
from producer.arguments import CallError
from producer.logger import snapshot
from producer.wire import protocol

#: What ClearML keeps of an object's attributes when it connects one (Task._parameters_allowed_types).
_ALLOWED: Final = (str, int, float, bool, list, tuple, dict, type(None))
MAX_CONFIG_BYTES: Final = 1024 * 1024


def _base(run_id: str) -> dict[str, Any]:
    return {"run": run_id, "seq": 1, "ts": time.time()}


def _plain_dict(arg: str, value: Mapping[str, Any]) -> dict[str, Any]:
    decoded: dict[str, Any] = msgspec.msgpack.decode(snapshot.plain_bytes(arg, value))
    return decoded


def connect_event(run_id: str, mutable: object, name: str | None) -> protocol.Parameters:
    """``Task.connect(mutable, name)`` for a dict, an argparse Namespace or any object's attributes."""
    section = None if name is None else check.name("name", name)
    if isinstance(mutable, Mapping):
        values = _plain_dict("mutable", mutable)
    else:
        if not hasattr(mutable, "__dict__"):
            raise CallError(
                "mutable-type", f"cannot connect a {type(mutable).__name__}: pass a dict or an object"
            )
        attributes = {
            key: value
            for cls in getattr(mutable, "__mro__", [mutable])
            for key, value in vars(cls).items()
            if not str(key).startswith("_") and isinstance(value, _ALLOWED) and _jsonable(value)
        }
        values = _plain_dict("mutable", attributes)
    return protocol.Parameters(**_base(run_id), values=values, section=section, how="connect")


def _jsonable(value: object) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def parameters_event(
    run_id: str, args: tuple[object, ...], kwargs: dict[str, Any], *, replace: bool
) -> protocol.Parameters:
    """``Task.set_parameters`` (``replace``) / ``update_parameters``: ``Section/name`` dicts, keywords."""
    merged: dict[str, Any] = {}
    for arg in args:
        if not isinstance(arg, Mapping):
            raise CallError("args-type", f"parameters must be dicts, got {type(arg).__name__}")
        merged.update(arg)
    merged.update(kwargs)
    values = _plain_dict("parameters", {str(k): v for k, v in merged.items()})
    return protocol.Parameters(**_base(run_id), values=values, how="set" if replace else "update")


def configuration_event(
    run_id: str, configuration: object, name: str | None, description: str | None
) -> protocol.Configuration:
    """``Task.connect_configuration``: a dict or list as it is, a file (path) by its text."""
    label = check.name("name", name) if name is not None else "General"
    about = "" if description is None else str(description)[:MAX_CONFIG_BYTES]
    if isinstance(configuration, (Mapping, list, tuple)):
        value = msgspec.msgpack.decode(snapshot.plain_bytes("configuration", {"": configuration}))[""]
        return protocol.Configuration(**_base(run_id), name=label, description=about, value=value)
    if isinstance(configuration, (str, os.PathLike)):
        path = Path(configuration)
        try:
            data = path.read_bytes()[: MAX_CONFIG_BYTES + 1]
        except OSError as exc:
            raise CallError(
                "configuration-file", f"cannot read the configuration file {path}: {exc.strerror or exc}"
            ) from None
        if len(data) > MAX_CONFIG_BYTES:
            raise CallError("configuration-size", f"{path} is larger than {MAX_CONFIG_BYTES} bytes")
        text = data.decode("utf-8", "replace")
        return protocol.Configuration(
            **_base(run_id), name=label, description=about, text=text, file_name=path.name[:255]
        )
    raise CallError(
        "configuration-type",
        f"configuration must be a dict, a list or a file path, got {type(configuration).__name__}",
    )


_PENDING_FILE: Final = protocol.FileRef(sha256="0" * 64, size=0, name="pending")
_MAX_TEXT_BYTES: Final = 1024 * 1024


class TaskCalls:
    """``Run``'s ``clearml.Task`` entry points: each hands one event off and never raises."""

    _id: str

    def _emit(self, event: protocol.Event, source: str | None = None) -> None:
        raise NotImplementedError  # Run's

    def _reject(self, method: str, key: str, message: str) -> None:
        raise NotImplementedError  # Run's

    def connect(self, mutable: Any, name: str | None = None, ignore_remote_overrides: bool = False) -> Any:
        """``Task.connect``: a dict, argparse Namespace or object's attributes as hyperparameters.

        Returns ``mutable`` itself; later changes to it are not sent (connect it again).
        """
        self._task_call("connect", lambda: connect_event(self._id, mutable, name))
        return mutable

    def connect_configuration(
        self,
        configuration: Any,
        name: str | None = None,
        description: str | None = None,
        ignore_remote_overrides: bool = False,
    ) -> Any:
        """``Task.connect_configuration``: a dict or list, or a configuration file (its text)."""
        self._task_call(
            "connect_configuration",
            lambda: configuration_event(self._id, configuration, name, description),
        )
        return configuration

    def set_parameters(self, *args: dict[str, Any], **kwargs: Any) -> None:
        """``Task.set_parameters``: ``{"Section/name": value}``, replacing every earlier parameter."""
        self._task_call("set_parameters", lambda: parameters_event(self._id, args, kwargs, replace=True))

    def update_parameters(self, *args: dict[str, Any], **kwargs: Any) -> None:
        """``Task.update_parameters``: ``{"Section/name": value}``, added to the earlier ones."""
        self._task_call("update_parameters", lambda: parameters_event(self._id, args, kwargs, replace=False))

    def update_output_model(  # noqa: PLR0917 - clearml.Task.update_output_model's signature
        self,
        model_path: str,
        name: str | None = None,
        comment: str | None = None,
        tags: Iterable[str] | None = None,
        model_name: str | None = None,
        iteration: int | None = None,
        auto_delete_file: bool = True,
    ) -> str:
        """``Task.update_output_model``: the weights file as the task's output model.

        Returns "" (ClearML returns the model id, which only the collector learns). The file is
        never deleted (``auto_delete_file`` is accepted and ignored).
        """

        def event() -> tuple[protocol.Event, str]:
            source = check.path(model_path)
            label = name or model_name or os.path.basename(source) or "model"
            return protocol.Model(
                run=self._id,
                seq=1,
                ts=time.time(),
                name=check.name("name", label),
                file=_PENDING_FILE,
                tags=[check.name("tags", t) for t in ([tags] if isinstance(tags, str) else tags or ())],
                comment="" if comment is None else str(comment)[:_MAX_TEXT_BYTES],
                iteration=None if iteration is None else check.iteration(iteration),
            ), source

        self._task_call("update_output_model", event)
        return ""

    def _task_call(
        self, method: str, build: Callable[[], protocol.Event | tuple[protocol.Event, str]]
    ) -> None:
        """Build and hand off one event; never raises (a mistake is logged once, as for hooks)."""
        try:
            built = build()
            event, source = built if isinstance(built, tuple) else (built, None)
            self._emit(event, source)
        except CallError as exc:
            self._reject(method, exc.key, str(exc))
        except Exception as exc:  # noqa: BLE001 - a logging call must never stop training
            self._reject(method, type(exc).__name__, f"unexpected error: {exc!r}")
