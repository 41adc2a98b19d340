"""Snapshots: what a Logger call copies of its arguments on the caller's thread, and finishes later.

The caller's thread copies only what the caller may change after the call returns (an array's
bytes, a figure's pickle, a DataFrame's copy); everything that costs more (encoding, drawing,
converting a table) runs on the writer thread in the ``make`` functions handed over with the
event (:class:`~producer.transport.payload.Payload`). numpy, pandas and matplotlib are imported
only when a call hands one over, so ``import producer`` stays light.
"""

from __future__ import annotations

import copyreg
import io
import os
import pickle
import sys
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final

import msgspec

from producer.arguments import CallError
from producer.wire import reports

#: Bytes a csv file or URL table may have (as ``reports.Table.csv``).
MAX_CSV_BYTES: Final = 256 * 1024 * 1024
#: Seconds the writer thread waits for a table's URL.
URL_TIMEOUT: Final = 30.0
#: The dpi ClearML draws a figure at for the plots section (binding/matplotlib_bind.py).
FIGURE_PLOT_DPI: Final = 300


def _plain_hook(obj: Any) -> Any:
    """Numpy values and other objects in plotly dicts and layouts: as plain msgpack values."""
    tolist = getattr(obj, "tolist", None)
    if callable(tolist):
        return tolist()
    if isinstance(obj, (set, frozenset)):
        return list(obj)
    return str(obj)


_plain_encoder = msgspec.msgpack.Encoder(enc_hook=_plain_hook)


def plain_bytes(arg: str, value: object) -> bytes:
    """A dict (a plotly figure, a layout) encoded as plain msgpack: the caller's snapshot."""
    if not isinstance(value, Mapping):
        raise CallError(f"{arg}-type", f"{arg} must be a dict, got {type(value).__name__}")
    try:
        return _plain_encoder.encode(value)
    except (TypeError, ValueError, RecursionError, OverflowError) as exc:
        raise CallError(f"{arg}-value", f"{arg} cannot be encoded: {exc}") from None


def plain(arg: str, value: object) -> dict[str, Any] | None:
    """A small dict (``extra_layout``, ``data_args``) as plain values, or None."""
    if value is None:
        return None
    decoded: dict[str, Any] = msgspec.msgpack.decode(plain_bytes(arg, value))
    return decoded


def labels(arg: str, value: object) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise CallError(f"{arg}-type", f"{arg} must be a list of strings, got {type(value).__name__}")
    return [str(item)[:1024] for item in value]


# ------------------------------------------------------------------------------------ arrays


def array(arg: str, value: object, *, dims: tuple[int, ...] = (1, 2, 3, 4)) -> reports.Array:
    """A copy of ``value`` (a numpy array, or a nested sequence of numbers) as a wire array."""
    import numpy as np  # noqa: PLC0415 - the caller has numpy (it passes an array or numbers)

    try:
        data = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise CallError(f"{arg}-value", f"{arg} must be an array of numbers: {exc}") from None
    if data.dtype.name not in reports.ITEMSIZE:
        raise CallError(
            f"{arg}-dtype",
            f"{arg} must hold numbers or booleans, got dtype {data.dtype} "
            f"(supported: {', '.join(reports.ITEMSIZE)})",
        )
    if data.ndim not in dims:
        raise CallError(
            f"{arg}-shape", f"{arg} must have {' or '.join(map(str, dims))} dimensions, got {data.shape}"
        )
    if data.dtype.byteorder == ">":
        data = data.astype(data.dtype.newbyteorder("<"))
    return reports.Array(dtype=data.dtype.name, shape=list(data.shape), data=data.tobytes())


def image(value: object) -> tuple[bytes, reports.Dtype, list[int]]:
    """An image (numpy array or PIL image) as its pixels: (bytes, dtype, shape); ClearML's shapes."""
    import numpy as np  # noqa: PLC0415 - numpy comes with the image

    pil = sys.modules.get("PIL.Image")
    if pil is not None and isinstance(value, pil.Image):
        pixels = np.array(value)  # what clearml.Logger.report_image does with a PIL image
    elif isinstance(value, np.ndarray):
        pixels = value
    else:
        raise CallError(
            "image-type", f"image must be a numpy.ndarray or a PIL.Image, got {type(value).__name__}"
        )
    if pixels.dtype.name not in reports.ITEMSIZE:
        raise CallError("image-dtype", f"image must hold numbers, got dtype {pixels.dtype}")
    if (
        pixels.ndim not in (2, 3)
        or (pixels.ndim == 3 and pixels.shape[2] not in (1, 3, 4))
        or not pixels.size
    ):
        raise CallError(
            "image-shape", f"image must be HxW or HxWxC with 1, 3 or 4 channels, got shape {pixels.shape}"
        )
    if pixels.dtype.byteorder == ">":
        pixels = pixels.astype(pixels.dtype.newbyteorder("<"))
    dtype: reports.Dtype = pixels.dtype.name
    return pixels.tobytes(), dtype, list(pixels.shape)


# ------------------------------------------------------------------------------------ tables


def frame_snapshot(value: Any) -> Callable[[], reports.Frame]:
    """Copy a DataFrame now; what makes its wire form later (on the writer thread)."""
    copied = value.copy(deep=True)
    return lambda: _frame(copied)


def _frame(df: Any) -> reports.Frame:
    import pandas as pd  # noqa: PLC0415 - only with a DataFrame

    columns = [_column(name, df.iloc[:, i]) for i, name in enumerate(df.columns)]
    index = df.index
    plain_range = isinstance(index, pd.RangeIndex)
    if isinstance(index, pd.MultiIndex):
        index = pd.Index([str(v) for v in index], name=", ".join(str(n) for n in index.names if n))
    return reports.Frame(
        columns=columns, index=None if plain_range else _column(index.name, pd.Series(index))
    )


def _column(name: object, series: Any) -> reports.Column:
    label = name if isinstance(name, (str, int, float, bool)) or name is None else str(name)
    if series.dtype.name in reports.ITEMSIZE:
        values = series.to_numpy()
        return reports.Column(
            name=label,
            array=reports.Array(
                dtype=values.dtype.name,
                shape=[len(values)],
                data=values.astype(values.dtype.newbyteorder("<")).tobytes(),
            ),
        )
    return reports.Column(name=label, cells=[_cell(v) for v in series.tolist()])


#: The cell types a table carries, most specific first (bool is an int), as builtins: a numpy
#: scalar that subclasses one (numpy.float64, numpy.str_) becomes the builtin.
_CELL_TYPES: Final = (bool, int, float, str)


def _cell(value: object) -> reports.Cell:
    """A table cell as a plain value: numpy scalars converted, big ints and the rest as text."""
    if value is None:
        return None
    kind = next((k for k in _CELL_TYPES if isinstance(value, k)), None)
    if kind is None:  # a date, a numpy scalar (numpy.int64, numpy.bool_), anything else
        if hasattr(value, "isoformat"):
            return str(value.isoformat())
        item = getattr(value, "item", None)
        converted = item() if callable(item) else None
        return _cell(converted) if isinstance(converted, _CELL_TYPES) else str(value)
    plain: reports.Cell = kind(value)  # type: ignore[call-overload,arg-type]  # an instance of kind
    if isinstance(plain, int) and kind is int and not -(2**63) <= plain < 2**64:
        return str(plain)  # beyond what msgpack carries
    return plain


def rows(value: Sequence[Any]) -> list[list[reports.Cell]]:
    """A table given as a list of rows (the first is the header), copied cell by cell."""
    return [[_cell(cell) for cell in row] for row in value]


def csv_text(path: str) -> str:
    """(writer thread) The text of a csv file, for the collector to read as ClearML does."""
    with open(path, "rb") as file:
        data = file.read(MAX_CSV_BYTES + 1)
    if len(data) > MAX_CSV_BYTES:
        raise CallError("csv-size", f"{path} is larger than {MAX_CSV_BYTES} bytes")
    return data.decode("utf-8", "replace")


def url_text(url: str) -> str:
    """(writer thread) The csv a table's URL points at, fetched by this process as ClearML would."""
    with urllib.request.urlopen(url, timeout=URL_TIMEOUT) as response:  # noqa: S310 - the caller's own URL
        data = response.read(MAX_CSV_BYTES + 1)
    if len(data) > MAX_CSV_BYTES:
        raise CallError("url-size", f"{url} holds more than {MAX_CSV_BYTES} bytes")
    return bytes(data).decode("utf-8", "replace")


# ----------------------------------------------------------------------------------- figures


def figure_pickle(figure: Any) -> bytes:
    """The figure's pickle, without the flag that would make unpickling register it with pyplot.

    A pickled pyplot figure asks to be put back into pyplot's figure manager when unpickled
    (``_restore_to_pcf``): on a writer thread or in the collector that would touch pyplot's
    global state (and open a window with an interactive backend), so the flag is left out.
    """
    from matplotlib.figure import Figure  # noqa: PLC0415 - the caller has a figure

    if hasattr(figure, "gcf") and not isinstance(figure, Figure):
        figure = figure.gcf()  # matplotlib.pyplot itself, as clearml.Logger accepts
    if not isinstance(figure, Figure):
        raise CallError(
            "figure-type", f"figure must be a matplotlib Figure or pyplot, got {type(figure).__name__}"
        )
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.dispatch_table = copyreg.dispatch_table.copy()
    pickler.dispatch_table[type(figure)] = _reduce_figure
    try:
        pickler.dump(figure)
    except Exception as exc:  # noqa: BLE001 - anything a figure's artists raise
        raise CallError("figure-pickle", f"figure cannot be pickled: {type(exc).__name__}: {exc}") from None
    return buffer.getvalue()


def _reduce_figure(figure: Any) -> Any:
    reduced = figure.__reduce_ex__(pickle.HIGHEST_PROTOCOL)
    state = dict(reduced[2])
    state.pop("_restore_to_pcf", None)
    return (*reduced[:2], state, *reduced[3:])


def render_figure(pickled: bytes, *, report_image: bool) -> bytes:
    """(writer thread) The figure as ClearML saves a figure it does not convert.

    For the plots section a PNG at 300 dpi, as a debug sample (``report_image``) a JPEG at the
    figure's own dpi; both cropped to the drawing (``bbox_inches="tight"``, no padding), as
    ``clearml/binding/matplotlib_bind.py`` does.
    """
    os.environ.setdefault("MPLBACKEND", "Agg")
    figure = pickle.loads(pickled)  # noqa: S301 - this process's own pickle, made by figure_pickle
    buffer = io.BytesIO()
    dpi, kind = (None, "jpeg") if report_image else (FIGURE_PLOT_DPI, "png")
    figure.savefig(buffer, dpi=dpi, format=kind, bbox_inches="tight", pad_inches=0, facecolor=None)
    return buffer.getvalue()
