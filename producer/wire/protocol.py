"""The clearml-relay wire protocol: the one place that defines what travels between processes.

Everything else imports this module; the collector imports it from here. Decoding is the only
place that trusts nothing, and the only exception it lets out is :class:`ProtocolError`. The
specification (frames, sequence numbers and acks, writers, files, hostile input, non-finite
numbers) is ``docs/protocol.md``; the structs below are its definition.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Annotated, Any, Final, Literal

import msgspec

from producer.wire.execution import ExecutionContext
from producer.wire.reports import ITEMSIZE, MAX_ELEMENTS, Call, Dtype

PROTOCOL_VERSION: Final = 2
MAGIC: Final = b"CRLY"
HEADER: Final = MAGIC + struct.pack(">H", PROTOCOL_VERSION)

#: Default upper bound of one message body, and of one chunk payload.
MAX_BODY_BYTES: Final = 4 * 1024 * 1024
CHUNK_BYTES: Final = 1024 * 1024

_Name = Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
_Text = Annotated[str, msgspec.Meta(max_length=1024 * 1024)]
_Short = Annotated[str, msgspec.Meta(max_length=255)]
# No leading dot: "." and ".." must never reach a path join on either side.
RunId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$")]
Sha256 = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
Seq = Annotated[int, msgspec.Meta(ge=1, le=2**62)]
#: Names one producer incarnation of a run: chosen when its outbox is created, kept with it.
WriterId = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{32}$")]
_Iteration = Annotated[int, msgspec.Meta(ge=-(2**31), le=2**62)]
_Size = Annotated[int, msgspec.Meta(ge=0, le=2**50)]
ParamValue = str | int | float | bool | None

RefuseCode = Literal[
    "version",  # frame 0 names another protocol version (or is not ours at all)
    "malformed",  # undecodable body, wrong frame count, wrong types
    "unknown_type",  # a body whose type tag this collector does not know
    "too_large",  # a frame above the collector's size limits
    "invalid",  # a decodable event with a bad field: it is replaced by a Gap
    "out_of_order",  # a FileChunk at an offset other than what the collector holds
    "backoff",  # the collector is at a resource bound: keep spooling, retry after
    "internal",  # the collector failed to handle the message; it keeps serving
    "denied",  # CURVE: the run belongs to another producer key
    "limit",  # a configured limit (open runs per key) is reached
    "conflict",  # the run id belongs to another producer incarnation (another outbox)
]
RunStatus = Literal["completed", "failed", "aborted"]
TextLevel = Literal["debug", "info", "warning", "error"]


class ProtocolError(Exception):
    """A message that cannot be accepted; ``code`` is one of :data:`RefuseCode`."""

    def __init__(self, code: RefuseCode, reason: str, run: str | None = None) -> None:
        super().__init__(f"{code}: {reason}")
        self.code: RefuseCode = code
        self.reason = reason
        self.run = run


class _Struct(msgspec.Struct, kw_only=True, omit_defaults=True, tag_field="t"):
    """Common base: keyword-only, compact (defaults are not sent), tagged with ``t``."""


# --------------------------------------------------------------------------------------- events


class FileRef(msgspec.Struct, kw_only=True, frozen=True):
    """A file that travels by content; ``name`` is a display name only, never a path."""

    sha256: Sha256
    size: _Size
    name: _Name


class _Event(_Struct):
    run: RunId
    seq: Seq
    ts: float = 0.0


class RunOpen(_Event, tag="open", kw_only=True):
    """The first event of every run (seq 1)."""

    project: _Name
    name: _Name
    tags: list[_Name] = []
    task_type: _Short = "training"
    hyperparams: dict[_Name, dict[_Name, ParamValue]] = {}
    context: ExecutionContext | None = None
    #: Report into this existing ClearML task instead of creating one.
    task_id: _Short | None = None
    #: Continue the ClearML task of this earlier run (a resumed training).
    resume_run: RunId | None = None
    #: The producer incarnation that writes this run (see :data:`WriterId`).
    writer: WriterId | None = None


class Scalar(_Event, tag="scalar", kw_only=True):
    title: _Name
    series: _Name
    value: float
    iteration: _Iteration


class SingleValue(_Event, tag="single", kw_only=True):
    name: _Name
    value: float


class Hyperparams(_Event, tag="params", kw_only=True):
    section: _Name
    values: dict[_Name, ParamValue]


#: Which of a series' file names a debug sample reuses (``max_image_history``): ``seq`` when None.
_Slot = Annotated[int, msgspec.Meta(ge=0, le=2**31)]
_Dim = Annotated[int, msgspec.Meta(ge=1, le=2**20)]


class DebugImage(_Event, tag="image", kw_only=True):
    title: _Name
    series: _Name
    iteration: _Iteration
    file: FileRef
    slot: _Slot | None = None


class ImageArray(_Event, tag="image_array", kw_only=True):
    """``report_image(image=...)``: the file holds the array's pixels; the collector encodes them."""

    title: _Name
    series: _Name
    iteration: _Iteration
    file: FileRef
    dtype: Dtype
    #: (height, width) or (height, width, channels) with 1, 3 or 4 channels.
    shape: Annotated[list[_Dim], msgspec.Meta(min_length=2, max_length=3)]
    slot: _Slot | None = None

    def __post_init__(self) -> None:
        if len(self.shape) == 3 and self.shape[2] not in (1, 3, 4):
            raise ValueError(f"an image has 1, 3 or 4 channels, got shape {self.shape}")
        count = self.shape[0] * self.shape[1] * (self.shape[2] if len(self.shape) == 3 else 1)
        if count > MAX_ELEMENTS or count * ITEMSIZE[self.dtype] != self.file.size:
            raise ValueError(
                f"an image of shape {self.shape} and dtype {self.dtype} is "
                f"{count * ITEMSIZE[self.dtype]} bytes, its file {self.file.size}"
            )


class Media(_Event, tag="media", kw_only=True):
    """``report_media``: the file is the media (``local_path`` or ``stream``) as it is."""

    title: _Name
    series: _Name
    iteration: _Iteration
    file: FileRef
    extension: _Short = ""
    slot: _Slot | None = None


class Figure(_Event, tag="figure", kw_only=True):
    """``report_matplotlib_figure``: the file is the figure's pickle, or its PNG drawn by the producer."""

    title: _Name
    series: _Name
    iteration: _Iteration
    file: FileRef
    format: Literal["pickle", "png"]
    report_image: bool = False
    report_interactive: bool = True


class Report(_Event, tag="report", kw_only=True):
    """A Logger call replayed by the collector (``producer.wire.reports``).

    The call travels in ``call``, or, when it is too large for an event, encoded in ``file``
    (``method`` names it then).
    """

    title: _Name
    series: _Name
    iteration: _Iteration | None = None
    call: Call | None = None
    file: FileRef | None = None
    method: _Short = ""

    def __post_init__(self) -> None:
        if (self.call is None) == (self.file is None):
            raise ValueError("a report holds its call, or a file with the call in it, not both")


class Parameters(_Event, tag="parameters", kw_only=True):
    """``Task.connect`` (a dict into ``section``), ``set_parameters`` or ``update_parameters``.

    ``values`` are as the caller gave them (nested for ``connect``, ``Section/name`` keys for the
    other two); the collector calls the task's method of the same name with them.
    """

    values: dict[str, Any]
    how: Literal["connect", "set", "update"]
    section: _Name | None = None


class Configuration(_Event, tag="config", kw_only=True):
    """``Task.connect_configuration``: a dictionary (``value``) or a file's text (``text``)."""

    name: _Name
    description: _Text = ""
    value: dict[str, Any] | list[Any] | None = None
    text: _Text | None = None
    #: The file's name, for a configuration read from a file.
    file_name: _Short = ""

    def __post_init__(self) -> None:
        if (self.value is None) == (self.text is None):
            raise ValueError("a configuration is a dictionary or a text, not both")


class Plot(_Event, tag="plot", kw_only=True):
    """A rendered plot (PNG) destined for the task's plot section."""

    title: _Name
    series: _Name
    iteration: _Iteration
    file: FileRef


class Model(_Event, tag="model", kw_only=True):
    name: _Name
    file: FileRef
    framework: _Short = "PyTorch"
    tags: list[_Name] = []
    comment: _Text = ""
    iteration: _Iteration | None = None


class ConsoleText(_Event, tag="text", kw_only=True):
    text: _Text
    level: TextLevel = "info"


class MachineStats(_Event, tag="stats", kw_only=True):
    values: dict[_Name, float]
    iteration: _Iteration | None = None


class RunClose(_Event, tag="close", kw_only=True):
    status: RunStatus = "completed"
    error: _Text = ""


class Gap(_Event, tag="gap", kw_only=True):
    """Events ``seq`` .. ``last`` are lost (corrupt storage or refused as invalid)."""

    last: Seq
    reason: _Text

    def __post_init__(self) -> None:
        if self.last < self.seq:  # msgspec turns this into a ValidationError on decode
            raise ValueError(f"gap ends at {self.last}, before it starts at {self.seq}")


Event = (
    RunOpen
    | Scalar
    | SingleValue
    | Hyperparams
    | DebugImage
    | ImageArray
    | Media
    | Figure
    | Report
    | Parameters
    | Configuration
    | Plot
    | Model
    | ConsoleText
    | MachineStats
    | RunClose
    | Gap
)
FILE_EVENTS: Final = (DebugImage, ImageArray, Media, Figure, Report, Plot, Model)


def event_file(event: Event) -> FileRef | None:
    """The file an event refers to, if any."""
    return event.file if isinstance(event, FILE_EVENTS) else None


# ------------------------------------------------------------------------------------- requests


class Submit(_Struct, tag="submit", kw_only=True):
    """A batch of pre-encoded events (each one a msgpack-encoded :data:`Event`)."""

    events: list[msgspec.Raw]
    #: The writer of every event in this batch (one run's outbox); None from protocol 1 peers.
    writer: WriterId | None = None


class FileOffer(_Struct, tag="offer", kw_only=True):
    run: RunId
    sha256: Sha256
    size: _Size
    writer: WriterId | None = None


class FileChunk(_Struct, tag="chunk", kw_only=True):
    """Bytes ``offset`` .. ``offset + len(payload)`` of a file; the payload is frame 2."""

    run: RunId
    sha256: Sha256
    offset: _Size


class Heartbeat(_Struct, tag="heartbeat", kw_only=True):
    runs: list[RunId]
    host: _Short = ""
    pid: int = 0


class StatusRequest(_Struct, tag="status?", kw_only=True):
    pass


Request = Submit | FileOffer | FileChunk | Heartbeat | StatusRequest

# -------------------------------------------------------------------------------------- replies


class Ack(_Struct, tag="ack", kw_only=True):
    """Cumulative: every event of each run up to the given seq is journaled."""

    runs: dict[RunId, int]


class Nack(_Struct, tag="nack", kw_only=True):
    """Resend the run's events from ``expect`` on."""

    run: RunId
    expect: Seq


class FileStatus(_Struct, tag="file", kw_only=True):
    run: RunId
    sha256: Sha256
    have: _Size
    complete: bool = False
    error: _Text = ""


class Refuse(_Struct, tag="refuse", kw_only=True):
    code: RefuseCode
    reason: _Text
    run: RunId | None = None
    seq: Seq | None = None
    retry_after: float | None = None


class RunInfo(msgspec.Struct, kw_only=True, omit_defaults=True):
    run: str
    journaled: int = 0
    applied: int = 0
    state: str = "open"
    project: str = ""
    name: str = ""
    task_id: str = ""
    session: str = ""


class StatusReply(_Struct, tag="status", kw_only=True):
    counters: dict[str, int] = {}
    runs: list[RunInfo] = []


Reply = Ack | Nack | FileStatus | Refuse | StatusReply

# ------------------------------------------------------------------------------ encode / decode

_encoder = msgspec.msgpack.Encoder()
_event_decoder = msgspec.msgpack.Decoder(Event)
_request_decoder = msgspec.msgpack.Decoder(Request)
_reply_decoder = msgspec.msgpack.Decoder(Reply)
_any_decoder = msgspec.msgpack.Decoder()
# msgspec raises DecodeError/ValidationError for bad msgpack and bad fields, but also plain
# UnicodeDecodeError (a ValueError) for invalid UTF-8 and RecursionError for deep nesting.
_DECODE_ERRORS: Final = (msgspec.MsgspecError, ValueError, RecursionError)
_KNOWN_TAGS: Final = frozenset(
    cls.__struct_config__.tag for cls in (*Event.__args__, *Request.__args__, *Reply.__args__)
)


def encode(message: Event | Request | Reply) -> bytes:
    """The msgpack body of one message (frame 1)."""
    return _encoder.encode(message)


def check_header(frame: bytes) -> None:
    """Raise ProtocolError unless ``frame`` is this protocol's frame 0 at this version."""
    if frame == HEADER:
        return
    if len(frame) == len(HEADER) and frame.startswith(MAGIC):
        (version,) = struct.unpack(">H", frame[len(MAGIC) :])
        raise ProtocolError(
            "version",
            f"peer speaks clearml-relay protocol {version}, this side speaks {PROTOCOL_VERSION}",
        )
    raise ProtocolError("version", "frame 0 is not a clearml-relay protocol header")


def _classify(body: bytes, exc: Exception, invalid: RefuseCode = "malformed") -> ProtocolError:
    """Tell an unknown type tag from a malformed body (only on the error path).

    ``invalid`` is the code for a body of a known type whose fields fail validation.
    """
    try:
        obj: Any = _any_decoder.decode(body)
    except _DECODE_ERRORS:
        return ProtocolError("malformed", f"body is not valid msgpack: {exc}")
    if isinstance(obj, dict) and isinstance(obj.get("t"), str) and obj["t"] not in _KNOWN_TAGS:
        return ProtocolError("unknown_type", f"unknown message type {obj['t'][:64]!r}")
    if isinstance(exc, msgspec.ValidationError):
        return ProtocolError(invalid, str(exc))
    return ProtocolError("malformed", str(exc))


def decode_request(
    frames: Sequence[bytes | memoryview], max_body: int = MAX_BODY_BYTES
) -> tuple[Request, bytes | memoryview | None]:
    """Decode ``[frame 0, body, payload?]`` from a producer into (request, payload).

    The payload is returned as given (the collector's is a view of ZeroMQ's buffer).
    """
    if not 2 <= len(frames) <= 3:
        raise ProtocolError("malformed", f"expected 2 or 3 frames, got {len(frames)}")
    check_header(bytes(frames[0]))
    body = frames[1]
    if len(body) > max_body:
        raise ProtocolError("too_large", f"message body is {len(body)} bytes, limit {max_body}")
    try:
        request = _request_decoder.decode(body)
    except _DECODE_ERRORS as exc:
        raise _classify(bytes(body), exc) from None
    payload = frames[2] if len(frames) == 3 else None
    if isinstance(request, FileChunk) != (payload is not None):
        raise ProtocolError("malformed", "a payload frame comes with FileChunk and nothing else")
    return request, payload


def decode_event(raw: bytes | msgspec.Raw) -> Event:
    """Decode one pre-encoded event from a Submit batch, an outbox or a journal."""
    try:
        event: Event = _event_decoder.decode(raw)
    except _DECODE_ERRORS as exc:
        raise _classify(bytes(raw), exc, invalid="invalid") from None
    return event


def decode_reply(frames: list[bytes]) -> Reply:
    """Decode ``[frame 0, body]`` from the collector."""
    if len(frames) != 2:
        raise ProtocolError("malformed", f"expected 2 frames, got {len(frames)}")
    check_header(frames[0])
    try:
        reply: Reply = _reply_decoder.decode(frames[1])
    except _DECODE_ERRORS as exc:
        raise _classify(frames[1], exc) from None
    return reply


def peek_event_id(raw: bytes | msgspec.Raw) -> tuple[str, int] | None:
    """Best-effort (run, seq) of an event that failed validation, to keep the run moving."""
    try:
        obj: Any = _any_decoder.decode(raw)
    except _DECODE_ERRORS:
        return None
    if not isinstance(obj, dict):
        return None
    try:
        ident = msgspec.convert({"run": obj.get("run"), "seq": obj.get("seq")}, _EventId)
    except msgspec.ValidationError:
        return None
    return ident.run, ident.seq


class _EventId(msgspec.Struct):
    run: RunId
    seq: Seq
