from __future__ import annotations

import contextlib

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from producer.wire import execution
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
]


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
    assert [p.event_file(e) for e in ONE_OF_EACH].count(REF) == 3
    assert p.event_file(ONE_OF_EACH[1]) is None


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
