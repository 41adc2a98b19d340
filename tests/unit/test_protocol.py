from __future__ import annotations

import contextlib

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from producer.wire import execution, reports
from producer.wire import protocol as p

SHA = "ab" * 32
REF = p.FileRef(sha256=SHA, size=3, name="a.png")

ONE_OF_EACH: list[p.Event] = [
    p.RunOpen(
        run="r1",
        seq=1,
        ts=1.5,
        project="proj",
        name="exp",
        tags=["Ultralytics"],
        hyperparams={"General": {"lr0": 0.01, "epochs": 3, "name": "x", "flag": True, "none": None}},
        context=execution.ExecutionContext(argv=["train.py"], git=execution.GitInfo(commit="abc")),
        task_id="t",
        resume_run="r0",
    ),
    p.Scalar(run="r1", seq=2, title="train", series="box_loss", value=1.25, iteration=0),
    p.SingleValue(run="r1", seq=3, name="GFLOPs", value=8.7),
    p.Hyperparams(run="r1", seq=4, section="Args", values={"a": "b"}),
    p.DebugImage(run="r1", seq=5, title="Mosaic", series="train_batch", iteration=1, file=REF),
    p.Plot(run="r1", seq=6, title="results", series="plot image", iteration=0, file=REF),
    p.Model(run="r1", seq=7, name="best.pt", file=REF),
    p.ConsoleText(run="r1", seq=8, text="hello\n", level="warning"),
    p.MachineStats(run="r1", seq=9, values={"cpu": 12.5}, iteration=3),
    p.RunClose(run="r1", seq=10, status="failed", error="boom"),
    p.Gap(run="r1", seq=11, last=12, reason="corrupt"),
    # The ClearML-compatible Logger API (producer.logger):
    p.ImageArray(
        run="r1", seq=13, title="t", series="s", iteration=0, dtype="float32", shape=[1, 3, 1],
        file=p.FileRef(sha256=SHA, size=12, name="image.raw"), slot=1,
    ),
    p.Media(run="r1", seq=14, title="t", series="s", iteration=0, file=REF, extension=".mp4", slot=0),
    p.Figure(
        run="r1", seq=15, title="t", series="s", iteration=2, file=REF, format="pickle",
        report_image=True, report_interactive=False,
    ),
    p.Report(
        run="r1", seq=16, title="t", series="s", iteration=3,
        call=reports.Histogram(
            values=reports.Array(dtype="int64", shape=[2], data=bytes(16)), xlabels=["a", "b"],
            extra_layout={"height": 600, "nested": {"list": [1, "x", None]}},
        ),
    ),
    p.Report(run="r1", seq=17, title="t", series="s", file=REF, method="report_scatter2d"),
    p.Report(run="r1", seq=18, title="t", series="s", call=reports.Table(rows=[["a", 1], ["b", 2.5]])),
    p.Parameters(run="r1", seq=19, values={"lr": 0.1, "nested": {"a": [1, 2]}}, how="connect", section="opt"),
    p.Configuration(run="r1", seq=20, name="data", text="a: 1\n", file_name="data.yaml", description="d"),
    p.Configuration(run="r1", seq=21, name="model", value={"depth": 3}),
    p.Model(run="r1", seq=22, name="best", file=REF, comment="mAP 0.7", iteration=7, tags=["x"]),
    p.DebugImage(run="r1", seq=23, title="Mosaic", series="train_batch", iteration=1, file=REF, slot=4),
]  # fmt: skip


def test_protocol_version_is_pinned() -> None:
    # Changing the version is a deliberate, breaking decision: update this test with it.
    assert p.PROTOCOL_VERSION == 2
    assert p.HEADER == b"CRLY\x00\x02"


def test_wire_encoding_is_pinned() -> None:
    # Field names and tags are the wire contract; a rename must fail here, not in production.
    event = p.Scalar(run="r", seq=1, title="t", series="s", value=0.5, iteration=2)
    assert msgspec.msgpack.decode(p.encode(event)) == {
        "t": "scalar",
        "run": "r",
        "seq": 1,
        "title": "t",
        "series": "s",
        "value": 0.5,
        "iteration": 2,
    }


@pytest.mark.parametrize("event", ONE_OF_EACH, ids=lambda e: type(e).__name__)
@pytest.mark.slow
def test_every_event_round_trips(event: p.Event) -> None:
    assert p.decode_event(p.encode(event)) == event


def test_submit_carries_pre_encoded_events_verbatim() -> None:
    raws = [p.encode(e) for e in ONE_OF_EACH]
    request, payload = p.decode_request([p.HEADER, p.encode(p.Submit(events=[msgspec.Raw(r) for r in raws]))])
    assert payload is None
    assert isinstance(request, p.Submit)
    assert [bytes(r) for r in request.events] == raws


def test_chunk_needs_its_payload_frame_and_nothing_else_has_one() -> None:
    chunk = p.encode(p.FileChunk(run="r", sha256=SHA, offset=0))
    request, payload = p.decode_request([p.HEADER, chunk, b"data"])
    assert isinstance(request, p.FileChunk)
    assert payload == b"data"
    with pytest.raises(p.ProtocolError) as info:
        p.decode_request([p.HEADER, chunk])
    assert info.value.code == "malformed"
    with pytest.raises(p.ProtocolError):
        p.decode_request([p.HEADER, p.encode(p.Heartbeat(runs=[])), b"extra"])


@pytest.mark.parametrize(
    ("frames", "code", "words"),
    [
        ([], "malformed", "got 0"),
        ([p.HEADER], "malformed", "got 1"),
        ([p.HEADER, b"", b"", b""], "malformed", "got 4"),
        ([b"GET / HTTP/1.1", b"x"], "version", "not a clearml-relay"),
        ([b"CRLY\x00\x03", b"x"], "version", "protocol 3"),
        ([p.HEADER, b"\xc1"], "malformed", "not valid msgpack"),
        ([p.HEADER, msgspec.msgpack.encode({"t": "teleport"})], "unknown_type", "teleport"),
        ([p.HEADER, msgspec.msgpack.encode({"t": "offer", "run": "r"})], "malformed", "sha256"),
        ([p.HEADER, b"\x90" * (p.MAX_BODY_BYTES + 1)], "too_large", "limit"),
    ],
)
@pytest.mark.slow
def test_bad_requests_raise_one_error_with_a_reason(frames: list[bytes], code: str, words: str) -> None:
    with pytest.raises(p.ProtocolError) as info:
        p.decode_request(frames)
    assert info.value.code == code
    assert words in info.value.reason


def test_wrong_version_names_both_versions() -> None:
    with pytest.raises(p.ProtocolError) as info:
        p.check_header(b"CRLY\x00\x07")
    assert "7" in info.value.reason
    assert str(p.PROTOCOL_VERSION) in info.value.reason


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ({"run": "../etc"}, "$.run"),
        ({"run": ".."}, "$.run"),
        ({"run": "."}, "$.run"),
        ({"run": "r", "seq": 0}, "$.seq"),
        ({"title": ""}, "$.title"),
        ({"title": "x" * 256}, "$.title"),
        ({"value": "1.0"}, "$.value"),
    ],
)
@pytest.mark.slow
def test_event_fields_are_validated(fields: dict[str, object], where: str) -> None:
    base = {"t": "scalar", "run": "r", "seq": 1, "title": "t", "series": "s", "value": 1.0, "iteration": 0}
    body = msgspec.msgpack.encode({**base, **fields})
    with pytest.raises(p.ProtocolError) as info:
        p.decode_event(body)
    assert info.value.code == "invalid"
    assert where in info.value.reason


def test_file_names_on_the_wire_are_bounded_and_hashes_are_hex() -> None:
    bad = {"t": "image", "run": "r", "seq": 1, "title": "t", "series": "s", "iteration": 0}
    for file in ({"sha256": "zz" * 32, "size": 1, "name": "a"}, {"sha256": SHA, "size": -1, "name": "a"}):
        with pytest.raises(p.ProtocolError):
            p.decode_event(msgspec.msgpack.encode({**bad, "file": file}))


def test_a_gap_cannot_end_before_it_starts() -> None:
    body = msgspec.msgpack.encode({"t": "gap", "run": "r", "seq": 5, "last": 4, "reason": "x"})
    with pytest.raises(p.ProtocolError) as info:
        p.decode_event(body)
    assert info.value.code == "invalid"
    assert "before it starts" in info.value.reason


def test_peek_event_id_recovers_run_and_seq_of_an_invalid_event() -> None:
    body = msgspec.msgpack.encode({"t": "scalar", "run": "r7", "seq": 9, "title": ""})
    assert p.peek_event_id(body) == ("r7", 9)
    assert p.peek_event_id(msgspec.msgpack.encode({"run": "../x", "seq": 9})) is None
    assert p.peek_event_id(b"\xc1") is None
    assert p.peek_event_id(msgspec.msgpack.encode([1, 2])) is None


def test_replies_round_trip() -> None:
    replies: list[p.Reply] = [
        p.Ack(runs={"a": 3}),
        p.Nack(run="a", expect=4),
        p.FileStatus(run="a", sha256=SHA, have=10, complete=True),
        p.Refuse(code="backoff", reason="journal full", retry_after=2.0),
        p.StatusReply(counters={"x": 1}, runs=[p.RunInfo(run="a", journaled=3)]),
    ]
    for reply in replies:
        assert p.decode_reply([p.HEADER, p.encode(reply)]) == reply


def test_event_file_finds_the_file_of_file_events_only() -> None:
    with_file = [type(e).__name__ for e in ONE_OF_EACH if p.event_file(e) is not None]
    assert with_file == [
        "DebugImage", "Plot", "Model", "ImageArray", "Media", "Figure", "Report", "Model", "DebugImage",
    ]  # fmt: skip
    assert p.event_file(ONE_OF_EACH[1]) is None
    inline = next(e for e in ONE_OF_EACH if isinstance(e, p.Report) and e.call is not None)
    assert p.event_file(inline) is None


@given(st.lists(st.binary(max_size=64), max_size=4))
def test_decode_request_only_ever_raises_protocol_error(frames: list[bytes]) -> None:
    with contextlib.suppress(p.ProtocolError):
        p.decode_request(frames)


@given(st.binary(max_size=256))
def test_decode_request_with_a_valid_header_only_raises_protocol_error(body: bytes) -> None:
    for frames in ([p.HEADER, body], [p.HEADER, body, b"x"]):
        with contextlib.suppress(p.ProtocolError):
            p.decode_request(frames)


_msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["t", "run", "seq", "title", "file", "events", "x"]), _msgpack_values))
@pytest.mark.slow
def test_structured_garbage_only_raises_protocol_error(obj: dict[str, object]) -> None:
    body = msgspec.msgpack.encode(obj)
    for decode in (lambda: p.decode_request([p.HEADER, body]), lambda: p.decode_event(body)):
        with contextlib.suppress(p.ProtocolError):
            decode()
    with contextlib.suppress(p.ProtocolError):
        p.decode_reply([p.HEADER, body])


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ({"t": "report", "title": "t", "series": "s"}, "holds its call, or a file"),
        ({"t": "config", "name": "n"}, "a dictionary or a text"),
        ({"t": "config", "name": "n", "value": {}, "text": "x"}, "a dictionary or a text"),
        ({"t": "image_array", "title": "t", "series": "s", "iteration": 0, "dtype": "uint8",
          "shape": [2, 2, 2], "file": {"sha256": SHA, "size": 8, "name": "x"}}, "1, 3 or 4 channels"),
        ({"t": "image_array", "title": "t", "series": "s", "iteration": 0, "dtype": "uint8",
          "shape": [65536, 65536, 3], "file": {"sha256": SHA, "size": 8, "name": "x"}}, "its file 8"),
        ({"t": "figure", "title": "t", "series": "s", "iteration": 0, "format": "svg",
          "file": {"sha256": SHA, "size": 8, "name": "x"}}, "format"),
        ({"t": "parameters", "values": {}, "how": "replace"}, "how"),
    ],
)  # fmt: skip
def test_logger_events_are_validated(fields: dict[str, object], where: str) -> None:
    body = msgspec.msgpack.encode({"run": "r1", "seq": 2, **fields})
    with pytest.raises(p.ProtocolError, match=where):
        p.decode_event(body)


def test_every_logger_call_round_trips_and_names_its_sdk_method() -> None:
    array = reports.Array(dtype="float64", shape=[2, 2], data=bytes(32))
    calls: list[reports.Call] = [
        reports.Histogram(values=array),
        reports.Vector(values=array),
        reports.LinePlot(series=[reports.SeriesData(name="a", data=array)], xaxis="x", yaxis="y"),
        reports.Scatter2d(scatter=array),
        reports.Scatter3d(scatter=reports.Array(dtype="float64", shape=[1, 3], data=bytes(24))),
        reports.ConfusionMatrix(matrix=array, xlabels=["a", "b"]),
        reports.Matrix(matrix=array),
        reports.Surface(matrix=array, camera=[1.0, 2.0, 3.0]),
        reports.Table(csv="a,b\n1,2\n"),
        reports.Plotly(figure={"data": [], "layout": {}}),
        reports.ImageUrl(url="https://example.com/a.png"),
        reports.MediaUrl(url="https://example.com/a.mp4"),
        reports.YoloResults(csv="epoch,train/box_loss\n1,0.5\n"),
        reports.YoloLabels(
            boxes=array, classes=reports.Array(dtype="int32", shape=[2], data=bytes(8)), names=["a"]
        ),
        reports.YoloCurve(x=array, y=array, names=["a", "b"], xlabel="Recall", ylabel="Precision", ap=array),
        reports.YoloConfusion(matrix=array, names=["a"], normalize=True),
    ]
    assert {type(c) for c in calls} == set(reports.CALL_TYPES)
    for call in calls:
        assert reports.decode_call(reports.encode_call(call)) == call
    assert [reports.method(c) for c in calls] == [
        "report_histogram", "report_vector", "report_line_plot", "report_scatter2d", "report_scatter3d",
        "report_confusion_matrix", "report_matrix", "report_surface", "report_table", "report_plotly",
        "report_image", "report_media",
        "draw_yolo_results", "draw_yolo_labels", "draw_yolo_curve", "draw_yolo_confusion",
    ]  # fmt: skip


_CALL_TAGS = [str(t.__struct_config__.tag) for t in reports.CALL_TYPES]
_CALL_FIELDS = [
    "values", "scatter", "matrix", "series", "figure", "rows", "csv", "frame", "url", "labels",
    "boxes", "classes", "names", "x", "y", "ap", "xlabel", "ylabel", "normalize",
]  # fmt: skip
_arrays = st.fixed_dictionaries(
    {"dtype": st.sampled_from([*reports.ITEMSIZE, "complex64"]),
     "shape": st.lists(st.integers(-1, 2**40), max_size=5), "data": st.binary(max_size=32)}
)  # fmt: skip


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(_CALL_TAGS),
    st.dictionaries(st.sampled_from(_CALL_FIELDS), _arrays | _msgpack_values, max_size=4),
)
@pytest.mark.slow
def test_a_spilled_call_file_only_raises_what_the_collector_catches(
    tag: str, fields: dict[str, object]
) -> None:
    """The collector's replay reads a large call from a file: garbage raises only what it skips."""
    body = msgspec.msgpack.encode({"m": tag, **fields})
    with contextlib.suppress(msgspec.MsgspecError, ValueError, RecursionError):
        reports.decode_call(body)
    report = {"t": "report", "run": "r1", "seq": 2, "title": "t", "series": "s", "call": {"m": tag, **fields}}
    with contextlib.suppress(p.ProtocolError):
        p.decode_event(msgspec.msgpack.encode(report))
