"""Preparing offline sessions for import: model weights must travel with the session."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from e2e import env

from collector import clearml_state
from collector.clearml_backend import ClearMLBackend
from collector.files import FileStore
from collector.upload import SessionError, prepare_session, upload_sessions
from producer import protocol as p


def _finished_session(tmp_path: Path) -> Path:
    """A real offline session zip, made by the ClearML backend: a run with a model, closed."""
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
    assert state.zip
    return Path(state.zip)


def test_models_point_at_the_extracted_weights_and_upload_to_the_files_host(tmp_path: Path) -> None:
    session_zip = _finished_session(tmp_path)
    folder = prepare_session(session_zip, tmp_path / "work", "http://files.example:8081")
    task = json.loads((folder / "task.json").read_text())
    (model,) = task["offline_output_models"]
    weights = Path(model["weights"]["weights_filename"])
    assert weights.is_relative_to(folder), "the model must not point into the recording machine's cache"
    assert weights.read_bytes() == b"weights" * 1000
    assert model["output_uri"] == "http://files.example:8081"


def test_a_zip_that_would_write_outside_its_folder_is_refused(tmp_path: Path) -> None:
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("../escaped.txt", "no")
    with pytest.raises(SessionError, match="escapes"):
        prepare_session(evil, tmp_path / "work", "http://f")
    assert not (tmp_path / "escaped.txt").exists()


def test_one_bad_session_does_not_stop_the_others(tmp_path: Path) -> None:
    session_zip = _finished_session(tmp_path)
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"not a zip")
    imported: list[Path] = []

    def importer(folder: Path) -> str:
        imported.append(folder)
        return "task-1"

    results = upload_sessions([junk, session_zip], importer, "http://f")
    assert [bool(r.error) for r in results] == [True, False]
    assert "not a session zip" in results[0].error
    assert results[1].task_id == "task-1"
    assert len(imported) == 1


def test_upload_without_a_server_says_why(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "collector", "upload", str(tmp_path / "x.zip")],
        env={**env(), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "no ClearML server to upload to" in result.stderr


def test_upload_imports_a_session_with_its_model_into_the_server(tmp_path: Path) -> None:
    from clearml_server import ClearMLServerDouble

    session_zip = _finished_session(tmp_path)
    with ClearMLServerDouble() as server:
        result = subprocess.run(
            [sys.executable, "-m", "collector", "upload", str(session_zip)],
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
