"""Suite-wide isolation: nothing a test runs may reach a host off this machine or a user's files.

Every test gets a private spool directory, a private Ultralytics config directory (with a font,
so Ultralytics never downloads one), ClearML offline mode and a private ClearML cache.
"""

from __future__ import annotations

import contextlib
import gc
import shutil
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

_FONT_SOURCES = [
    Path(p)
    for p in (
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/TTF/DejaVuSans.ttf",
    )
]


def _font() -> Path | None:
    try:
        import matplotlib  # only present with the collector extra

        bundled = Path(matplotlib.get_data_path()) / "fonts/ttf/DejaVuSans.ttf"
        if bundled.exists():
            return bundled
    except ImportError:
        pass
    return next((p for p in _FONT_SOURCES if p.exists()), None)


@pytest.fixture(autouse=True)
def _no_process_outlives_its_test() -> Iterator[None]:
    """Kill what a failed test left running, so that its leak is reported there, not later.

    The collection runs in the test's own teardown: a leaked ``Popen`` (its pipes still open)
    then fails the test that leaked it instead of whichever test the garbage collector hits next.
    """
    yield
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    gc.collect()


@pytest.fixture(autouse=True)
def _offline_isolated_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path_factory.mktemp("env")
    yolo = home / "yolo"
    (yolo / "Ultralytics").mkdir(parents=True)
    font = _font()
    if font is not None:
        shutil.copy(font, yolo / "Arial.ttf")
        shutil.copy(font, yolo / "Ultralytics" / "Arial.ttf")
    monkeypatch.setenv("YOLO_OFFLINE", "true")
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(yolo))
    monkeypatch.setenv("CLEARML_OFFLINE_MODE", "1")
    monkeypatch.setenv("CLEARML_CACHE_DIR", str(home / "clearml-cache"))
    monkeypatch.setenv("CLEARML_RELAY_SPOOL_DIR", str(home / "spool"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / "cache"))
    for name in ("CLEARML_API_HOST", "CLEARML_WEB_HOST", "CLEARML_FILES_HOST", "CLEARML_TASK_ID"):
        monkeypatch.delenv(name, raising=False)
