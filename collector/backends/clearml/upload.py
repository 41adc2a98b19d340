"""``clearml-relay upload``: import finished offline sessions into the configured ClearML server.

ClearML's own importer (``Task.import_offline_session``) registers an offline session's models
as ``file://`` paths of the folder the session was recorded in (their ``weights_filename`` in
``task.json``), which exists only on the collector's machine, and only until its retention
removes it. So each session (the folder the collector keeps, or a zip of
one) is copied or extracted here, every output model is pointed at its weights file in that copy
and given the server's files host as upload destination, and only then imported: the weights are
uploaded like any other model's. The session itself is never changed.

clearml is imported only by :func:`files_host` and :func:`import_session`, the SDK side.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from collector.config import ConfigError

#: The name ClearML gives an offline session's task description.
TASK_JSON = "task.json"


class SessionError(ValueError):
    """A file that is not a readable offline session."""


@dataclass(frozen=True)
class UploadResult:
    source: Path
    task_id: str = ""
    error: str = ""


def prepare_session(source: Path, workdir: Path, files_host: str) -> Path:
    """Copy ``source`` (a session folder or zip) under ``workdir`` and fix its model paths.

    Returns:
        The folder to import.

    Raises:
        SessionError: ``source`` is not an offline session.

    """
    folder = workdir / "session"
    if source.is_dir():
        shutil.copytree(source, folder)
    else:
        try:
            with zipfile.ZipFile(source) as archive:
                for member in archive.namelist():
                    # Never write outside the folder, whatever the archive says.
                    target = (folder / member).resolve()
                    if not target.is_relative_to(folder.resolve()):
                        raise SessionError(f"{source}: archive member {member!r} escapes the session folder")
                archive.extractall(folder)
        except (zipfile.BadZipFile, OSError) as exc:
            raise SessionError(f"{source}: not a session zip ({exc})") from None
    task_json = folder / TASK_JSON
    try:
        task = json.loads(task_json.read_text())
    except (OSError, ValueError) as exc:
        raise SessionError(f"{source}: no readable {TASK_JSON} ({exc})") from None
    for model in task.get("offline_output_models", []):
        weights = model.get("weights", {})
        name = Path(str(weights.get("weights_filename") or "")).name
        extracted = folder / "models" / name
        if name and extracted.is_file():
            weights["weights_filename"] = str(extracted)
            model["output_uri"] = model.get("output_uri") or files_host
    task_json.write_text(json.dumps(task))
    return folder


def upload_sessions(
    sources: Iterable[Path],
    importer: Callable[[Path], str],
    files_host: str,
    on_result: Callable[[UploadResult], None] = lambda _: None,
) -> list[UploadResult]:
    """Prepare and import each session; one failure does not stop the others."""
    results = []
    for source in sources:
        with tempfile.TemporaryDirectory(prefix="clearml-relay-upload-") as workdir:
            try:
                result = UploadResult(
                    source, task_id=importer(prepare_session(source, Path(workdir), files_host))
                )
            except Exception as exc:  # noqa: BLE001 - reported per session, the rest go on
                result = UploadResult(source, error=f"{type(exc).__name__}: {exc}")
        on_result(result)
        results.append(result)
    return results


# ---------------------------------------------------------------------------- the SDK's side


def files_host() -> str:
    """The configured ClearML files server, where imported model weights are uploaded.

    Raises:
        ConfigError: none is configured and ClearML cannot derive one from the API host (it
            does so only for ``:8008`` and ``api.`` hosts); or (``UnsupportedClearMLError``)
            the installed clearml is not one the collector was written for.

    """
    from clearml.backend_api import Session  # noqa: PLC0415  (clearml loads only here)

    from collector.backends.clearml import compat  # noqa: PLC0415

    compat.install()
    try:
        host: str = Session.get_files_server_host()
    except ValueError as exc:  # "Could not detect ClearML web application server"
        raise ConfigError(
            f"no ClearML files server configured, and ClearML cannot derive one from the API server "
            f"{Session.get_api_server_host()} (only from a :8008 or api.* host): set CLEARML_FILES_HOST "
            "(or api.files_server in clearml.conf)"
        ) from exc
    return host


def import_session(folder: Path) -> str:
    """Import one extracted offline session into the configured server; returns the task id."""
    from clearml import Task  # noqa: PLC0415  (clearml loads only here)

    from collector.backends.clearml import compat  # noqa: PLC0415

    compat.install()
    task_id = Task.import_offline_session(str(folder))
    if not task_id:
        raise RuntimeError(f"ClearML did not import the session in {folder}")
    return str(task_id)
