"""Preparing offline sessions for import: model weights must travel with the session."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from e2e import env

from collector.backends.clearml import state as clearml_state
from collector.backends.clearml.backend import ClearMLBackend
from collector.backends.clearml.upload import SessionError, prepare_session, upload_sessions
from collector.pipeline.files import FileStore
from producer.wire import protocol as p


def _finished_session(tmp_path: Path) -> Path:
    """A real offline session folder, made by the ClearML backend: a run with a model, closed."""
    files = FileStore(tmp_path / "files", fsync=False)
    weights = b"weights" * 1000
    sha = hashlib.sha256(weights).hexdigest()
    files.offer("r", sha, len(weights))
    assert files.chunk("r", sha, 0, weights).complete
    backend = ClearMLBackend(tmp_path / "clearml", offline=True)
    try:
        events: list[p.Event] = [
            p.RunOpen(run="r", seq=1, project="proj", name="train"),
            p.Model(
                run="r", seq=2, name="best.pt", file=p.FileRef(sha256=sha, size=len(weights), name="best.pt")
            ),
            p.RunClose(run="r", seq=3),
        ]
        for event in events:
            backend.apply("r", event, files)
        backend.checkpoint("r")
    finally:
        backend.close()
    state = clearml_state.load(tmp_path / "clearml", "r")
    assert state is not None
    assert state.closed
    return Path(state.session)


@pytest.mark.parametrize("as_zip", [False, True], ids=["folder", "zip"])
def test_models_point_at_the_copied_weights_and_go_to_the_files_host(tmp_path: Path, as_zip: bool) -> None:
    session = _finished_session(tmp_path)
    recorded = (session / "task.json").read_text()
    source = Path(shutil.make_archive(str(tmp_path / "moved"), "zip", session)) if as_zip else session
    folder = prepare_session(source, tmp_path / "work", "http://files.example:8081")
    task = json.loads((folder / "task.json").read_text())
    (model,) = task["offline_output_models"]
    weights = Path(model["weights"]["weights_filename"])
    assert weights.is_relative_to(folder), "the model must not point into the recording machine's cache"
    assert weights.read_bytes() == b"weights" * 1000
    assert model["output_uri"] == "http://files.example:8081"
    assert (session / "task.json").read_text() == recorded, "the kept session is left as it is"


def test_a_zip_that_would_write_outside_its_folder_is_refused(tmp_path: Path) -> None:
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("../escaped.txt", "no")
    with pytest.raises(SessionError, match="escapes"):
        prepare_session(evil, tmp_path / "work", "http://f")
    assert not (tmp_path / "escaped.txt").exists()


def test_one_bad_session_does_not_stop_the_others(tmp_path: Path) -> None:
    session = _finished_session(tmp_path)
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"not a zip")
    imported: list[Path] = []

    def importer(folder: Path) -> str:
        imported.append(folder)
        return "task-1"

    results = upload_sessions([junk, session], importer, "http://f")
    assert [bool(r.error) for r in results] == [True, False]
    assert "not a session zip" in results[0].error
    assert results[1].task_id == "task-1"
    assert len(imported) == 1


def _upload(*sessions: Path, **environ: str) -> subprocess.CompletedProcess[str]:
    """``clearml-relay upload``, the console script installed beside this Python."""
    command = Path(sys.executable).with_name("clearml-relay")
    return subprocess.run(
        [str(command), "upload", *map(str, sessions)],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _no_offline_mode(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The test's environment without ClearML's offline switch, HOME (clearml.conf) in tmp_path."""
    environ = {k: v for k, v in env().items() if k != "CLEARML_OFFLINE_MODE"}
    return {**environ, "HOME": str(tmp_path), **extra}


def test_upload_without_a_server_says_why(tmp_path: Path) -> None:
    result = _upload(tmp_path, **_no_offline_mode(tmp_path))
    assert (result.returncode, result.stderr) == (
        2,
        "clearml-relay: configuration error: no ClearML server to upload to: no ClearML server is "
        f"configured (no CLEARML_API_HOST, no api_server in {tmp_path / 'clearml.conf'})\n",
    )


#: An API server on a port that is not ClearML's standard one (nothing listens: never asked),
#: without and with API keys.
ODD_PORT = [
    {"CLEARML_API_HOST": "http://127.0.0.1:9"},
    {"CLEARML_API_HOST": "http://127.0.0.1:9", "CLEARML_API_ACCESS_KEY": "a", "CLEARML_API_SECRET_KEY": "s"},
]


@pytest.mark.parametrize("server", ODD_PORT, ids=["no-keys", "keys"])
@pytest.mark.slow
def test_upload_checks_its_arguments_first(tmp_path: Path, server: dict[str, str]) -> None:
    missing = tmp_path / "missing.zip"
    result = _upload(tmp_path, missing, **_no_offline_mode(tmp_path, **server))
    expected = f"clearml-relay: no such session file or folder: {missing}\n"
    assert (result.returncode, result.stderr) == (2, expected)


@pytest.mark.parametrize("server", ODD_PORT, ids=["no-keys", "keys"])
@pytest.mark.slow
def test_upload_with_no_files_host_clearml_can_derive_says_so(tmp_path: Path, server: dict[str, str]) -> None:
    result = _upload(tmp_path, **_no_offline_mode(tmp_path, **server))
    assert (result.returncode, result.stderr) == (
        2,
        "clearml-relay: configuration error: no ClearML files server configured, and ClearML cannot "
        "derive one from the API server http://127.0.0.1:9 (only from a :8008 or api.* host): set "
        "CLEARML_FILES_HOST (or api.files_server in clearml.conf)\n",
    )


@pytest.mark.slow
def test_upload_imports_a_session_with_its_model_into_the_server(tmp_path: Path) -> None:
    from clearml_server import ClearMLServerDouble

    session = _finished_session(tmp_path)
    assert not Path(f"{session}.zip").exists(), "the collector keeps the folder only"
    with ClearMLServerDouble() as server:
        result = subprocess.run(
            [sys.executable, "-m", "collector", "upload", str(session)],
            env={**server.child_env(), "PYTHONPATH": env()["PYTHONPATH"]},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "imported" in result.stdout
        task = server.task("train")
        assert task is not None
        assert server.project_name(task["project"]) == "proj"
        models = [m for m in server.models.values() if m.get("task") == task["id"]]
        assert [m["name"] for m in models] == ["best.pt"]
        assert server.upload(models[0]["uri"]) == b"weights" * 1000, "the weights must reach the fileserver"
        assert not server.escapes
