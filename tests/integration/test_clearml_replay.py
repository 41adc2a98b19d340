"""The collector's replay of Logger calls against the real ClearML SDK (offline), and hostile input.

A producer's Logger events that cannot be replayed (a pickle that is not a figure, a call file
that does not decode, a call the SDK refuses) are skipped: counted in ``reports_failed``, noted in
the task's console, never retried, and the run goes on. Read back from the offline session. (A
figure that does replay is in tests/e2e/test_logger_parity.py: in this process pytest's warnings
filter would make the SDK's plotly conversion fail.)
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from PIL import Image
from sessions import local_file
from test_clearml_backend import console, metrics, opening, put, scalar, session_of, task_json

from collector.backends.clearml.backend import ClearMLBackend
from collector.counters import Counters
from collector.pipeline.files import FileStore
from producer.wire import protocol as p
from producer.wire import reports


@pytest.fixture
def files(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "files", fsync=False)


def _array(values: Any) -> reports.Array:
    array = np.ascontiguousarray(values, dtype=np.float64)
    return reports.Array(dtype="float64", shape=list(array.shape), data=array.astype("<f8").tobytes())


def _figure(run: str, seq: int, files: FileStore, data: bytes, series: str) -> p.Figure:
    return p.Figure(
        run=run, seq=seq, title="figures", series=series, iteration=0,
        file=put(files, run, data, "figure.pickle"), format="pickle",
    )  # fmt: skip


def _replayed(
    tmp_path: Path, files: FileStore, run: str, events: list[p.Event], *, allow_pickled_figures: bool = False
) -> tuple[Counters, Path]:
    """Apply ``events`` (ending with the run's close) to a fresh offline backend, each one landing;
    its counters and the run's offline session."""
    counters = Counters()
    backend = ClearMLBackend(
        tmp_path / "clearml", offline=True, call_timeout=10, counters=counters,
        allow_pickled_figures=allow_pickled_figures,
    )  # fmt: skip
    try:
        for event in events:
            backend.apply(run, event, files)
        assert backend.applied(run) == events[-1].seq
    finally:
        backend.close()
    return counters, session_of(tmp_path / "clearml", run)


@pytest.mark.slow
def test_calls_that_cannot_be_replayed_are_skipped_noted_and_the_run_goes_on(
    tmp_path: Path, files: FileStore
) -> None:
    run = "r1"
    not_a_figure = pickle.dumps({"just": "a dict"})
    spilled = p.Report(
        run=run, seq=5, title="plots", series="spilled", iteration=0,
        file=put(files, run, b"\xc1 not msgpack", "call.msgpack"), method="report_scatter2d",
    )  # fmt: skip
    refused_by_sdk = p.Report(  # the SDK asserts a 2-D array
        run=run, seq=6, title="plots", series="one-d", iteration=0,
        call=reports.Scatter2d(scatter=_array(np.arange(3.0))),
    )  # fmt: skip
    good = p.Report(
        run=run, seq=7, title="plots", series="good", iteration=0,
        call=reports.Scatter2d(scatter=_array([[0.0, 1.0], [1.0, 0.0]]), mode="markers"),
    )  # fmt: skip
    pixels = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    image = p.ImageArray(
        run=run, seq=8, title="images", series="array", iteration=3,
        file=put(files, run, pixels.tobytes(), "image.raw"), dtype="uint8", shape=[4, 6, 3],
    )  # fmt: skip
    events: list[p.Event] = [
        opening(run),
        _figure(run, 2, files, b"\x80\x05 truncated pickle", "garbage"),
        _figure(run, 3, files, not_a_figure, "dict"),
        p.SingleValue(run=run, seq=4, name="after the bad figures", value=1.0),
        spilled,
        refused_by_sdk,
        good,
        image,
        scalar(run, 9),
        p.RunClose(run=run, seq=10, status="completed"),
    ]
    counters, session = _replayed(tmp_path, files, run, events, allow_pickled_figures=True)
    assert counters.get("reports_failed") == 4
    lines = [line for level, line in console(session) if level == "warning"]
    assert any(
        "report_matplotlib_figure figures / garbage (event 2)" in line and "unpickled" in line
        for line in lines
    )
    assert any("(event 3)" in line and "holds a dict, not a matplotlib figure" in line for line in lines)
    assert any(
        "report_scatter2d plots / spilled (event 5)" in line and "cannot be decoded" in line for line in lines
    )
    assert any("(event 6)" in line and "AssertionError" in line for line in lines)
    landed = {(e["type"], e["metric"], e["variant"]) for e in metrics(session)}
    assert ("training_stats_scalar", "Summary", "after the bad figures") in landed
    assert ("plot", "plots", "good") in landed
    assert ("training_debug_image", "images", "array") in landed
    assert ("training_stats_scalar", "loss", "train") in landed
    assert not {("plot", "figures", s) for s in ("garbage", "dict")} & landed


@pytest.mark.slow
def test_a_pickled_figure_journaled_before_a_restart_without_the_flag_is_not_unpickled(
    tmp_path: Path, files: FileStore
) -> None:
    """The flag gone (the collector restarted without it): nothing journaled earlier is unpickled."""
    run = "r2"
    marker = tmp_path / "unpickled"
    evil = b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
    closing = p.RunClose(run=run, seq=4, status="completed")
    events = [opening(run), _figure(run, 2, files, evil, "evil"), scalar(run, 3), closing]
    counters, session = _replayed(tmp_path, files, run, events)
    assert not marker.exists(), "the pickle was unpickled"
    assert counters.get("reports_failed") == 1
    assert any("pickled figures are not allowed" in line for _, line in console(session))


@pytest.mark.slow
def test_update_output_model_lands_with_its_comment_tags_and_iteration(
    tmp_path: Path, files: FileStore
) -> None:
    backend = ClearMLBackend(tmp_path / "clearml", offline=True, call_timeout=10)
    run = "r3"
    model = p.Model(
        run=run, seq=2, name="best", file=put(files, run, b"weights" * 10, "best.pt"),
        tags=["fine-tuned"], comment="mAP50 0.71 at epoch 7", iteration=7,
    )  # fmt: skip
    for event in (opening(run), model, p.RunClose(run=run, seq=3, status="completed")):
        backend.apply(run, event, files)
    (landed,) = task_json(session_of(tmp_path / "clearml", run))["offline_output_models"]
    assert landed["init"]["name"] == "best"
    assert landed["init"]["tags"] == ["fine-tuned"]
    assert "mAP50 0.71 at epoch 7\nclearml-relay r3#2" in landed["init"]["comment"]
    assert landed["weights"]["iteration"] == 7
    backend.close()


def test_an_array_whose_file_does_not_match_its_header_is_refused_at_decode() -> None:
    """A 10 GB header over a small file never makes the collector allocate: refused as invalid."""
    ref = p.FileRef(sha256="0" * 64, size=12, name="image.raw")
    valid = p.ImageArray(
        run="r", seq=2, title="t", series="s", iteration=0, file=ref, dtype="uint8", shape=[2, 2, 3]
    )
    body = msgspec.msgpack.decode(p.encode(valid))
    assert p.decode_event(msgspec.msgpack.encode(body)) == valid
    for shape, dtype in (
        ([100_000, 100_000, 1], "uint8"),
        ([2, 2, 3], "float64"),
        ([2, 2, 2], "uint8"),
        ([2, 2], "uint16"),
    ):
        with pytest.raises(p.ProtocolError, match=r"bytes, its file 12|channels"):
            p.decode_event(msgspec.msgpack.encode({**body, "shape": shape, "dtype": dtype}))
    call = msgspec.msgpack.decode(reports.encode_call(reports.Scatter2d(scatter=_array([[0.0, 1.0]]))))
    for array in ({"shape": [100_000, 100_000]}, {"shape": [2, 2]}, {"dtype": "complex128"}):
        with pytest.raises((ValueError, msgspec.ValidationError)):
            reports.decode_call(msgspec.msgpack.encode({**call, "scatter": {**call["scatter"], **array}}))


RESULTS_CSV = "epoch,time,train/box_loss,metrics/mAP50(B)\n1,2,0.9,0.1\n2,4,0.8,0.2\n"


def _drawings(run: str) -> list[p.Report]:
    """Each Ultralytics drawing once, as ``plots="collector"`` sends them, and a bad one (seq 7)."""
    x = np.linspace(0, 1, 50)
    y = np.stack([x, 1 - x])
    labels = reports.Array(dtype="int32", shape=[3], data=np.array([0, 1, 1], dtype="<i4").tobytes())
    calls: list[tuple[str, reports.Call]] = [
        ("results", reports.YoloResults(csv=RESULTS_CSV)),
        ("labels", reports.YoloLabels(boxes=_array(np.full((3, 4), 0.3)), classes=labels, names=["a", "b"])),
        ("BoxPR_curve", reports.YoloCurve(x=_array(x), y=_array(y), names=["a", "b"], xlabel="Recall",
                                          ylabel="Precision", ap=_array([0.5, 0.25]))),
        ("BoxF1_curve", reports.YoloCurve(x=_array(x), y=_array(y), names=["a", "b"], xlabel="Confidence",
                                          ylabel="F1")),
        ("confusion_matrix", reports.YoloConfusion(matrix=_array(np.eye(3)), names=["a", "b"])),
        ("confusion_matrix_normalized", reports.YoloConfusion(matrix=_array(np.eye(2)), names=["a", "b"])),
        ("confusion_matrix_normalized", reports.YoloConfusion(matrix=_array(np.eye(3)), names=["a", "b"],
                                                              normalize=True)),
    ]  # fmt: skip
    return [
        p.Report(run=run, seq=seq, title=title, series="plot image", iteration=0, call=call)
        for seq, (title, call) in enumerate(calls, start=2)
    ]


@pytest.mark.slow
def test_ultralytics_drawings_land_as_image_plots_and_a_bad_one_is_skipped(
    tmp_path: Path, files: FileStore
) -> None:
    """``plots="collector"``: the collector draws each plot into an image plot of Ultralytics' size."""
    run = "r4"
    events: list[p.Event] = [
        opening(run),
        *_drawings(run),
        scalar(run, 9),
        p.RunClose(run=run, seq=10, status="completed"),
    ]
    counters, session = _replayed(tmp_path, files, run, events)
    assert counters.get("reports_failed") == 1  # the 2x2 matrix of 3 labels (seq 7)
    assert any(
        "(event 7)" in line and "needs shape (3, 3), got (2, 2)" in line for _, line in console(session)
    )
    plots = {e["metric"]: e for e in metrics(session) if e["type"] == "plot"}
    sizes = {
        "results": (800, 1200),  # (2 columns + 2) x 6 inches at 200 dpi
        "labels": (1600, 1600),
        "BoxPR_curve": (2250, 1500),
        "BoxF1_curve": (2250, 1500),
        "confusion_matrix": (3000, 2250),
        "confusion_matrix_normalized": (3000, 2250),
    }
    assert set(plots) == set(sizes)
    for title, size in sizes.items():
        source = json.loads(plots[title]["plot_str"])["layout"]["images"][0]["source"]
        path = local_file(session, source)
        assert path is not None, title
        with Image.open(path) as image:
            assert image.size == size, title
    assert plots["labels"]["variant"] == "plot image"
