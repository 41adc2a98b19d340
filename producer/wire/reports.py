"""The Logger calls that travel as data: plots, tables and links, replayed by the collector.

A ``Report`` event (``producer.wire.protocol``) carries one of the calls below, named by its
``m`` tag after the ``clearml.Logger`` method it replays (``report_<m>``). Every field is the
keyword argument of the same name; the collector hands them to the SDK's own method, so what
lands in ClearML is what that call on ``clearml.Logger`` makes. Nothing here is code: arrays
are dtype, shape and little-endian bytes, dictionaries are plain msgpack maps (plotly layouts).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Final, Literal

import msgspec

#: Element sizes of the dtypes an array may have (little-endian, numpy's names).
ITEMSIZE: Final = {
    "bool": 1,
    "int8": 1,
    "uint8": 1,
    "int16": 2,
    "uint16": 2,
    "float16": 2,
    "int32": 4,
    "uint32": 4,
    "float32": 4,
    "int64": 8,
    "uint64": 8,
    "float64": 8,
}
Dtype = Literal[
    "bool",
    "int8",
    "uint8",
    "int16",
    "uint16",
    "float16",
    "int32",
    "uint32",
    "float32",
    "int64",
    "uint64",
    "float64",
]
MAX_DIMS: Final = 4
#: Most elements an array may claim (a header cannot make the collector allocate more).
MAX_ELEMENTS: Final = 2**31

_Label = Annotated[str, msgspec.Meta(max_length=1024)]
_Short = Annotated[str, msgspec.Meta(max_length=255)]
_Comment = Annotated[str, msgspec.Meta(max_length=64 * 1024)]
_Url = Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]
_Dim = Annotated[int, msgspec.Meta(ge=0, le=MAX_ELEMENTS)]
Cell = str | int | float | bool | None
_Layout = dict[str, Any]


class Array(msgspec.Struct, kw_only=True, frozen=True):
    """A numpy array as its dtype, shape and bytes (C order, little-endian)."""

    dtype: Dtype
    shape: Annotated[list[_Dim], msgspec.Meta(max_length=MAX_DIMS)]
    data: bytes

    def __post_init__(self) -> None:
        count = math.prod(self.shape)
        if count > MAX_ELEMENTS:
            raise ValueError(f"array of shape {self.shape} has more than {MAX_ELEMENTS} elements")
        if len(self.data) != count * ITEMSIZE[self.dtype]:
            raise ValueError(
                f"array of shape {self.shape} and dtype {self.dtype} needs "
                f"{count * ITEMSIZE[self.dtype]} bytes, got {len(self.data)}"
            )


class _Call(msgspec.Struct, kw_only=True, omit_defaults=True, tag_field="m"):
    """Common base: keyword-only, compact, tagged with the method name in ``m``."""


class Histogram(_Call, tag="histogram", kw_only=True):
    values: Array
    labels: list[_Label] | None = None
    xlabels: list[_Label] | None = None
    xaxis: _Short | None = None
    yaxis: _Short | None = None
    mode: _Short | None = None
    data_args: _Layout | None = None
    extra_layout: _Layout | None = None


class Vector(_Call, tag="vector", kw_only=True):
    values: Array
    labels: list[_Label] | None = None
    xlabels: list[_Label] | None = None
    xaxis: _Short | None = None
    yaxis: _Short | None = None
    mode: _Short | None = None
    extra_layout: _Layout | None = None


class SeriesData(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One ``Logger.SeriesInfo`` of a line plot."""

    name: _Short
    data: Array
    labels: list[_Label] | None = None


class LinePlot(_Call, tag="line_plot", kw_only=True):
    series: Annotated[list[SeriesData], msgspec.Meta(max_length=10_000)]
    xaxis: _Short
    yaxis: _Short
    mode: _Short = "lines"
    reverse_xaxis: bool = False
    comment: _Comment | None = None
    extra_layout: _Layout | None = None


class Scatter2d(_Call, tag="scatter2d", kw_only=True):
    scatter: Array
    xaxis: _Short | None = None
    yaxis: _Short | None = None
    labels: list[_Label] | None = None
    mode: _Short = "lines"
    comment: _Comment | None = None
    extra_layout: _Layout | None = None


class Scatter3d(_Call, tag="scatter3d", kw_only=True):
    scatter: Array
    xaxis: _Short | None = None
    yaxis: _Short | None = None
    zaxis: _Short | None = None
    labels: list[_Label] | None = None
    mode: _Short = "markers"
    fill: bool = False
    comment: _Comment | None = None
    extra_layout: _Layout | None = None


class ConfusionMatrix(_Call, tag="confusion_matrix", kw_only=True):
    matrix: Array
    xaxis: _Short | None = None
    yaxis: _Short | None = None
    xlabels: list[_Label] | None = None
    ylabels: list[_Label] | None = None
    yaxis_reversed: bool = False
    comment: _Comment | None = None
    extra_layout: _Layout | None = None


class Matrix(_Call, tag="matrix", kw_only=True):
    matrix: Array
    xaxis: _Short | None = None
    yaxis: _Short | None = None
    xlabels: list[_Label] | None = None
    ylabels: list[_Label] | None = None
    yaxis_reversed: bool = False
    extra_layout: _Layout | None = None


class Surface(_Call, tag="surface", kw_only=True):
    matrix: Array
    xaxis: _Short | None = None
    yaxis: _Short | None = None
    zaxis: _Short | None = None
    xlabels: list[_Label] | None = None
    ylabels: list[_Label] | None = None
    camera: Annotated[list[float], msgspec.Meta(max_length=3)] | None = None
    comment: _Comment | None = None
    extra_layout: _Layout | None = None


class Column(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One column (or the index) of a table: a numeric array, or a list of cells."""

    name: Cell = None
    array: Array | None = None
    cells: list[Cell] | None = None

    def __post_init__(self) -> None:
        if (self.array is None) == (self.cells is None):
            raise ValueError("a table column holds either an array or cells")
        if self.array is not None and len(self.array.shape) != 1:
            raise ValueError(f"a table column is 1-dimensional, got shape {self.array.shape}")

    def __len__(self) -> int:
        return self.array.shape[0] if self.array is not None else len(self.cells or ())


class Frame(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A pandas DataFrame: its columns and, unless it is a default RangeIndex, its index."""

    columns: Annotated[list[Column], msgspec.Meta(max_length=100_000)]
    index: Column | None = None

    def __post_init__(self) -> None:
        lengths = {len(column) for column in (*self.columns, *([self.index] if self.index else []))}
        if len(lengths) > 1:
            raise ValueError(f"table columns differ in length: {sorted(lengths)}")


class Table(_Call, tag="table", kw_only=True):
    """``table_plot`` as a DataFrame (``frame``) or a list of rows (``rows``), or ``csv`` text."""

    frame: Frame | None = None
    rows: list[list[Cell]] | None = None
    csv: Annotated[str, msgspec.Meta(max_length=256 * 1024 * 1024)] | None = None
    extra_layout: _Layout | None = None
    extra_data: _Layout | None = None

    def __post_init__(self) -> None:
        if sum(x is not None for x in (self.frame, self.rows, self.csv)) != 1:
            raise ValueError("a table is given as exactly one of a frame, rows or csv text")


class Plotly(_Call, tag="plotly", kw_only=True):
    figure: _Layout


class ImageUrl(_Call, tag="image_url", kw_only=True):
    url: _Url


class MediaUrl(_Call, tag="media_url", kw_only=True):
    url: _Url


class YoloResults(_Call, tag="yolo_results", kw_only=True):
    """``results.png`` from the training's ``results.csv`` (the collector draws it)."""

    csv: Annotated[str, msgspec.Meta(max_length=64 * 1024 * 1024)]


class YoloLabels(_Call, tag="yolo_labels", kw_only=True):
    """``labels.jpg`` from the training set's boxes (``(N, 4)`` x, y, w, h normalized) and classes."""

    boxes: Array
    classes: Array
    names: list[_Label]


class YoloCurve(_Call, tag="yolo_curve", kw_only=True):
    """A ``*PR_curve.png`` (with ``ap``: each class's AP@0.5) or ``*F1/P/R_curve.png``."""

    x: Array
    y: Array
    names: list[_Label]
    xlabel: _Short
    ylabel: _Short
    ap: Array | None = None


class YoloConfusion(_Call, tag="yolo_confusion", kw_only=True):
    """``confusion_matrix.png`` or, ``normalize``d, ``confusion_matrix_normalized.png``."""

    matrix: Array
    names: list[_Label]
    normalize: bool = False
    background: bool = True


#: The plots of an Ultralytics training with ``plots="collector"``: the collector draws them with
#: matplotlib (:mod:`collector.backends.clearml.drawings`); no ``clearml.Logger`` method replays them.
Drawing = YoloResults | YoloLabels | YoloCurve | YoloConfusion
DRAWING_TYPES: Final = Drawing.__args__

Call = (
    Histogram
    | Vector
    | LinePlot
    | Scatter2d
    | Scatter3d
    | ConfusionMatrix
    | Matrix
    | Surface
    | Table
    | Plotly
    | ImageUrl
    | MediaUrl
    | YoloResults
    | YoloLabels
    | YoloCurve
    | YoloConfusion
)
CALL_TYPES: Final = Call.__args__

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Call)


def method(call: Call) -> str:
    """The ``clearml.Logger`` method a call replays; a drawing's is ``draw_<its tag>``.

    A URL is ``report_image``/``report_media``'s ``url``.
    """
    tag = str(call.__struct_config__.tag)
    if isinstance(call, DRAWING_TYPES):
        return f"draw_{tag}"
    return f"report_{tag.removesuffix('_url')}"


def encode_call(call: Call) -> bytes:
    return _encoder.encode(call)


def decode_call(raw: bytes | memoryview) -> Call:
    """Decode a call spilled into a file; raises ``msgspec`` errors, ``ValueError``, ``RecursionError``."""
    call: Call = _decoder.decode(raw)
    return call
