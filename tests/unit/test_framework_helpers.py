"""The pieces the framework integrations share (producer.integrations.framework) and the zip packing
of a reported directory (producer.transport.package)."""

from __future__ import annotations

import io
import logging
import math
import os
import zipfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from producer.integrations import framework
from producer.transport import package


def test_flatten_joins_nested_keys_like_clearml() -> None:
    nested = {"a": 1, "b": {"c": 2, "d": {"e": None}}, "f": [1, 2], "g": {}}
    assert framework.flatten(nested) == {"a": 1, "b/c": 2, "b/d/e": None, "f": [1, 2]}
    assert framework.flatten({"x": {"y": 1}}, sep=".") == {"x.y": 1}


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        ("loss/train", ("loss", "train")),
        ("a/b/c", ("a/b", "c")),
        ("accuracy", ("accuracy", "accuracy")),
        ("/lead", ("/lead", "/lead")),
        ("trail/", ("trail/", "trail/")),
    ],
)
def test_split_tag_splits_at_the_last_separator(tag: str, expected: tuple[str, str]) -> None:
    assert framework.split_tag(tag) == expected


class _Tensorish:
    def __float__(self) -> float:
        return 0.25


class _Unconvertible:
    def __float__(self) -> float:
        raise RuntimeError("a tensor of more than one element")


def test_number_takes_what_float_takes_and_nothing_else() -> None:
    assert framework.number(3) == 3.0
    assert framework.number(True) == 1.0
    assert framework.number(_Tensorish()) == 0.25
    assert math.isnan(framework.number(float("nan")) or 0.0)
    for bad in ("1.5", b"1", None, object(), _Unconvertible(), [1.0]):
        assert framework.number(bad) is None, bad


def test_guarded_logs_each_failing_hook_once_and_returns_none(caplog: pytest.LogCaptureFixture) -> None:
    calls = []

    class Hooks:
        @framework.guarded
        def on_step(self, value: int) -> None:
            calls.append(value)
            raise KeyError(value)

    hooks = Hooks()
    for value in range(3):
        hooks.on_step(value)  # never raises
    assert calls == [0, 1, 2]
    said = [r for r in caplog.records if "Hooks.on_step failed" in r.getMessage()]
    assert len(said) == 1
    assert said[0].levelno == logging.WARNING


def _pack(directory: Path) -> zipfile.ZipFile:
    out = io.BytesIO()
    package.pack(directory, lambda data: out.write(bytes(data)))
    return zipfile.ZipFile(io.BytesIO(out.getvalue()))


@given(
    st.dictionaries(
        st.sampled_from(["a", "b/c", "b/d", "e/f/g", "h.bin"]), st.binary(max_size=3000), max_size=5
    )
)
def test_a_packed_directory_holds_its_files_in_order(
    tmp_path_factory: pytest.TempPathFactory, files: dict[str, bytes]
) -> None:
    root = tmp_path_factory.mktemp("dir")
    for name, data in files.items():
        if any(other.startswith(f"{name}/") for other in files):
            continue  # a name cannot be both a file and a folder
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    expected = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    with _pack(root) as packed:
        assert packed.testzip() is None
        assert sorted(packed.namelist()) == expected
        for name in expected:
            assert packed.read(name) == (root / name).read_bytes()


def test_packing_follows_links_to_files_and_names_the_zip_after_the_folder(tmp_path: Path) -> None:
    root = tmp_path / "checkpoint-3"
    root.mkdir()
    (tmp_path / "outside").write_bytes(b"linked")
    os.symlink(tmp_path / "outside", root / "weights")
    with _pack(root) as packed:
        assert packed.read("weights") == b"linked"
    assert package.packed_name(root) == package.packed_name(f"{root}/") == "checkpoint-3.zip"


def test_a_dangling_link_is_left_out_and_a_write_error_passes_through(tmp_path: Path) -> None:
    root = tmp_path / "d"
    root.mkdir()
    os.symlink(tmp_path / "missing", root / "dangling")
    (root / "f").write_bytes(b"x" * 10)
    with _pack(root) as packed:
        assert packed.namelist() == ["f"]

    def refuse(_: memoryview) -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        package.pack(root, refuse)


def test_a_lazy_run_ended_before_it_was_made_is_never_made() -> None:
    lazy = framework.LazyRun(project="p", name="n", endpoint="tcp://127.0.0.1:9")
    lazy.end("failed", "before any event")
    assert lazy.get() is None
    assert lazy.started is None


def test_a_lazy_run_with_a_bad_setting_is_tried_once(caplog: pytest.LogCaptureFixture) -> None:
    lazy = framework.LazyRun(project="", name="n")
    assert lazy.get() is None
    assert lazy.get() is None
    assert sum("the run cannot be made" in r.getMessage() for r in caplog.records) == 1
