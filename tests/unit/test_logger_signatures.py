"""``run.logger`` and ``Run``'s task calls have ``clearml``'s signatures, and cost no heavy import.

A script written against ``clearml.Logger`` / ``clearml.Task`` must run unchanged against
clearml-relay: every public method of ``clearml.Logger`` (clearml 2.1) exists on
:class:`producer.logger.Logger` with the same parameter names, kinds, order and defaults, and so
do the ``Task`` methods that ``Run`` offers. ``import producer`` being light is checked by
``tests/integration/test_client.py``; here, using the logger with and without a run is too.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
import textwrap
from typing import Any

import clearml
import pytest

from producer import Run
from producer.logger import Logger

#: The ``clearml.Task`` methods that ``Run`` offers under the same name.
TASK_METHODS = ("connect", "connect_configuration", "set_parameters", "update_parameters",
                "update_output_model", "get_logger")  # fmt: skip
#: Where our descriptor differs from clearml's, and why. The call (on the class or an instance)
#: and the signature are the same; only the implicit first argument differs.
DESCRIPTOR_EXCEPTIONS = {
    # clearml's classmethods that only set process-wide SDK state; ours change nothing (they
    # log "not supported" once), so they do not need the class.
    "set_reporting_nan_value": ("classmethod", "staticmethod"),
    "set_reporting_inf_value": ("classmethod", "staticmethod"),
    "matplotlib_force_report_non_interactive": ("classmethod", "staticmethod"),
    "tensorboard_auto_group_scalars": ("classmethod", "staticmethod"),
    "tensorboard_single_series_per_graph": ("classmethod", "staticmethod"),
}
#: Parameters allowed to differ, by (method, parameter): none today. A ``*args`` / ``**kwargs``
#: passthrough of ours must keep clearml's name and kind to stay out of this list.
PARAMETER_EXCEPTIONS: dict[tuple[str, str], str] = {}


def _public_methods(cls: type) -> list[str]:
    return sorted(
        name
        for name in dir(cls)
        if not name.startswith("_")
        and callable(getattr(cls, name))
        and not inspect.isclass(getattr(cls, name))
    )


def _shape(method: str, function: Any) -> list[tuple[str, Any, Any]]:
    """(name, kind, default) of each parameter, in order, less the excepted ones."""
    return [
        (p.name, p.kind, p.default)
        for p in inspect.signature(function).parameters.values()
        if (method, p.name) not in PARAMETER_EXCEPTIONS
    ]


def _descriptor(cls: type, name: str) -> str:
    return type(inspect.getattr_static(cls, name)).__name__


def test_the_comparison_sees_clearmls_api() -> None:
    methods = _public_methods(clearml.Logger)
    assert len(methods) >= 30, methods
    assert {"report_scalar", "report_image", "report_table", "current_logger"} <= set(methods)
    assert clearml.__version__.startswith("2.1"), "the signatures are clearml 2.1's"


@pytest.mark.parametrize("method", _public_methods(clearml.Logger))
def test_logger_method_has_clearmls_signature(method: str) -> None:
    ours = getattr(Logger, method, None)
    assert ours is not None, f"Logger.{method} is missing"
    # Through the class: a classmethod's cls and a staticmethod are both left out.
    assert _shape(method, ours) == _shape(method, getattr(clearml.Logger, method))
    theirs_kind, our_kind = _descriptor(clearml.Logger, method), _descriptor(Logger, method)
    assert (theirs_kind, our_kind) == DESCRIPTOR_EXCEPTIONS.get(method, (theirs_kind, theirs_kind))


def test_the_exception_lists_name_only_real_methods() -> None:
    for method in DESCRIPTOR_EXCEPTIONS:
        assert _descriptor(clearml.Logger, method) != _descriptor(Logger, method), f"{method}: not needed"
    for method, _ in PARAMETER_EXCEPTIONS:
        assert hasattr(clearml.Logger, method) or hasattr(clearml.Task, method), method


def test_logger_has_no_public_method_clearml_lacks() -> None:
    assert set(_public_methods(Logger)) == set(_public_methods(clearml.Logger))


def test_series_info_is_built_as_clearmls() -> None:
    assert _shape("SeriesInfo", Logger.SeriesInfo) == _shape("SeriesInfo", clearml.Logger.SeriesInfo)
    info = Logger.SeriesInfo("s", [[0, 1]])
    assert (info.name, info.data, info.labels) == ("s", [[0, 1]], None)


@pytest.mark.parametrize("method", TASK_METHODS)
def test_run_task_method_has_clearmls_signature(method: str) -> None:
    assert _shape(method, getattr(Run, method)) == _shape(method, getattr(clearml.Task, method))
    assert _descriptor(Run, method) == _descriptor(clearml.Task, method) == "function"


def test_using_the_logger_loads_no_heavy_library() -> None:
    """In a fresh interpreter: a run's logger, and ``current_logger()`` with no run, import nothing heavy.

    The environment is the test's (tests/conftest.py): a private spool, nothing listening.
    """
    code = """
        import sys
        import producer
        from producer.logger import Logger
        orphan = Logger.current_logger()
        orphan.report_scalar("loss", "train", 0.5, 1)
        orphan.report_text("nobody", print_console=False)
        run = producer.Run("proj", "light", endpoint="tcp://127.0.0.1:9", flush_timeout=0.1)
        assert producer.Run is type(run) and run.logger is run.get_logger() is Logger.current_logger()
        run.logger.report_scalar("loss", "train", 0.25, 2)
        run.logger.report_single_value("mAP", 0.5)
        run.logger.report_text("hello", print_console=False)
        run.logger.report_image("links", "remote", 0, url="https://example.com/x.png")
        run.connect({"lr": 0.1}, name="opt")
        run.close()
        assert callable(producer.capture_tensorboard) and callable(producer.release_tensorboard)
        producer.release_tensorboard()  # nothing captured: nothing to do, nothing imported
        heavy = ("clearml", "numpy", "PIL", "matplotlib", "pandas", "torch", "plotly", "ultralytics",
                 "lightning", "pytorch_lightning", "transformers", "tensorboard", "accelerate")
        print(",".join(sorted(m for m in heavy if m in sys.modules)))
    """
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""
    assert done.stderr.count("no producer.Run is open") == 1, done.stderr
