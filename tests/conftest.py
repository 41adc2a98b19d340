"""Suite-wide isolation: nothing a test runs may reach a host off this machine or a user's files.

Every test gets a private home directory (``HOME``: ClearML's ``~/.clearml`` and ``~/clearml.conf``
and every other ``~`` path land there), a private spool directory, a private Ultralytics config
directory (with a font, so Ultralytics never downloads one), ClearML offline mode and a private
ClearML cache. A passed test's directories are removed at its end (``tmp_path_retention_policy``).
The session checks that the user's own home directory holds at its end what it held at its
start, and each test that leaves a producer with open or undelivered runs behind fails.
"""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
from collections.abc import Generator, Iterator
from pathlib import Path

import psutil
import pytest

from producer import run as runs
from producer.transport import client as clients

_FONT_SOURCES = [
    Path(p)
    for p in (
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/TTF/DejaVuSans.ttf",
    )
]

#: Whether each phase (setup, call) of a test passed, for the fixtures' teardown.
_PASSED = pytest.StashKey[dict[str, bool]]()


def _font() -> Path | None:
    try:
        import matplotlib  # only present with the collector extra

        bundled = Path(matplotlib.get_data_path()) / "fonts/ttf/DejaVuSans.ttf"
        if bundled.exists():
            return bundled
    except ImportError:
        pass
    return next((p for p in _FONT_SOURCES if p.exists()), None)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    item.stash.setdefault(_PASSED, {})[report.when] = report.passed
    return report


#: What the suite's tools would write under a user's home directory (``~/...``) if a path escaped.
_HOME_PATHS = (
    ".clearml",
    "clearml.conf",
    ".clearml_data.json",
    ".cache/clearml-relay",
    ".cache/clearml",
    ".config/Ultralytics",
)


def _home_snapshot(home: Path) -> dict[str, tuple[int, int]]:
    """Every file under the watched paths of ``home``: (size, mtime in ns)."""
    found: dict[str, tuple[int, int]] = {}
    for name in _HOME_PATHS:
        top = home / name
        for path in [top, *top.rglob("*")] if top.is_dir() else [top]:
            with contextlib.suppress(OSError):
                if path.is_file():
                    info = path.stat()
                    found[str(path)] = (info.st_size, info.st_mtime_ns)
    return found


@pytest.fixture(scope="session", autouse=True)
def _users_home_untouched() -> Iterator[None]:
    """The user's home directory (HOME when the suite started) is as it was when the suite ends."""
    home = Path.home()
    before = _home_snapshot(home)
    yield
    after = _home_snapshot(home)
    changed = sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
    assert not changed, f"the suite wrote into the user's home directory: {changed}"


@pytest.fixture(scope="session")
def _matplotlib_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One matplotlib config and font cache for the session (built once, not per test)."""
    return tmp_path_factory.mktemp("matplotlib")


@pytest.fixture(scope="session")
def _font_copy(tmp_path_factory: pytest.TempPathFactory) -> Path | None:
    """The font Ultralytics wants (``Arial.ttf``), copied once; each test's config links to it."""
    font = _font()
    if font is None:
        return None
    copy = tmp_path_factory.mktemp("font") / "Arial.ttf"
    shutil.copy(font, copy)
    return copy


@pytest.fixture(autouse=True)
def _offline_isolated_env(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    _matplotlib_config: Path,
    _font_copy: Path | None,
) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("env")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("MPLCONFIGDIR", str(_matplotlib_config))
    # Not under ``home``, which goes at the test's end: Ultralytics, once imported in this process,
    # keeps the config directory of the first test that imported it (and looks for its font there).
    yolo = tmp_path_factory.mktemp("yolo")
    (yolo / "Ultralytics").mkdir()
    if _font_copy is not None:
        (yolo / "Arial.ttf").symlink_to(_font_copy)
        (yolo / "Ultralytics" / "Arial.ttf").symlink_to(_font_copy)
    monkeypatch.setenv("YOLO_OFFLINE", "true")
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(yolo))
    monkeypatch.setenv("CLEARML_OFFLINE_MODE", "1")
    monkeypatch.setenv("CLEARML_CACHE_DIR", str(home / "clearml-cache"))
    monkeypatch.setenv("CLEARML_RELAY_SPOOL_DIR", str(home / "spool"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / "cache"))
    for name in (
        "CLEARML_API_HOST",
        "CLEARML_WEB_HOST",
        "CLEARML_FILES_HOST",
        "CLEARML_TASK_ID",
        "CLEARML_CONFIG_FILE",  # the user's own configuration: ~/clearml.conf is the test's instead
    ):
        monkeypatch.delenv(name, raising=False)
    yield home
    # tmp_path_factory's directories are kept to the session's end; like tmp_path, this one goes
    # with a passed test (the fixtures below, which kill its processes, are done by now).
    passed = request.node.stash.get(_PASSED, {})
    if request.config.getini("tmp_path_retention_policy") == "failed" and passed.get("call", False):
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(autouse=True)
def _no_process_outlives_its_test(_offline_isolated_env: Path) -> Iterator[None]:
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
def _no_producer_outlives_its_test(_offline_isolated_env: Path) -> Iterator[None]:
    """A test that leaves the process's producer with open or undelivered runs fails, naming them.

    Such a producer would otherwise go on sending in the background, into whichever collector
    the next tests start on its port, and report at the interpreter's exit, after pytest's
    summary, with no test to blame. Every producer client is stopped after each test, and the
    runs left open are closed, so the next test starts clean.
    """
    with runs._open_lock:
        before = set(runs._open_runs)
    yield
    pid = os.getpid()
    with clients._registry_lock:
        alive = [c for c in clients._clients.values() if c.pid == pid and not c.closed]
    with runs._open_lock:
        left_open = [r for r in runs._open_runs if r not in before]
    problems = [f"run {r.id} was never closed" for r in left_open if r.client in alive]
    for client in alive:
        pending = [s.run_id for s in client.run_states() if not s.finished()]
        if pending:
            problems.append(f"runs not delivered to {client.config.endpoint}: {', '.join(pending)}")
        problems += client.undelivered_report()
    for client in alive:
        client.stop()
    for run in left_open:
        run.close("aborted", "left open by its test")  # the client is stopped: this only forgets it
    assert not problems, "a producer was left behind: " + "; ".join(problems)
