"""TensorBoard: ``SummaryWriter`` calls forwarded to a clearml-relay run, the writer left as it is.

``producer.capture_tensorboard()`` wraps the logging methods of
``torch.utils.tensorboard.SummaryWriter`` (the class, so writers made before the call are
captured too); ``producer.release_tensorboard()`` puts the originals back. Each wrapped call
first does what the writer does (its event files are byte for byte what they would be), then
hands the same data to the run: the one given to ``capture_tensorboard``, else the newest open
``producer.Run`` of the process at the time of the call (none open: the call is only
TensorBoard's, and the first such call says so). Forwarding never raises and never waits.

What lands where follows ClearML's own TensorBoard binding ("automagic"), so that a task looks
the same either way; ``global_step=None`` is iteration 0, as TensorBoard writes it:

==================  ================================================================
call                the run
==================  ================================================================
``add_scalar``      a scalar: tag ``a/b/c`` is title ``a/b``, series ``c``; a tag
                    without ``/`` is both
``add_scalars``     one scalar per key: title ``main_tag``, series the key
``add_image``       a debug image: the PNG TensorBoard encoded and wrote (its
                    ``dataformats``, floats scaled by 255), titled as ``add_scalar``
``add_histogram``   a histogram of the buckets TensorBoard counted and wrote (its
                    ``bins``, ``max_bins``), not counted again
``add_text``        a ``.txt`` media file; a tag without ``/`` is titled ``Text``
``add_figure``      the matplotlib figure itself, taken before the writer closes it
                    and drawn by the collector (``report_matplotlib_figure``); a
                    list of figures, each
``add_hparams``     the ``TB_hparams`` hyperparameter section; its metrics reach the
                    run as the scalars TensorBoard writes for them
==================  ================================================================

Not captured: ``add_images``, ``add_video``, ``add_audio``, ``add_embedding``, ``add_graph``,
``add_mesh``, ``add_pr_curve`` and ``tensorboardX``'s writer. Unlike ClearML's binding, two
writers that use the same tag are not told apart by their log directories.
"""

from __future__ import annotations

import functools
import io
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final

from producer.integrations import framework
from producer.logger import snapshot
from producer.logger.base import report_encoded_image, report_later
from producer.once import Once
from producer.run import Run
from producer.wire import reports

log = logging.getLogger(__name__)

#: SummaryWriter's methods that are captured.
METHODS: Final = (
    "add_scalar",
    "add_scalars",
    "add_image",
    "add_histogram",
    "add_text",
    "add_figure",
    "add_hparams",
)
HPARAMS_SECTION: Final = "TB_hparams"
TEXT_TITLE: Final = "Text"

_lock = threading.Lock()
_originals: dict[str, Callable[..., Any]] = {}
#: The summary makers of ``torch.utils.tensorboard.writer`` that ``add_histogram`` and ``add_image``
#: call, replaced while captured by keepers of what they make (the originals are kept here).
_MAKERS: Final = ("histogram", "image")
_makers: dict[str, Callable[..., Any]] = {}
_target: list[Run | None] = [None]
#: Per thread: inside add_figure (its own add_image is not forwarded twice); the summary the
#: writer's call made (``kept``), so that its buckets or PNG are forwarded, not made again.
_inside = threading.local()
_once = Once()


def capture_tensorboard(run: Run | None = None) -> None:
    """Forward ``SummaryWriter``'s logging calls to ``run`` (default: the newest open run).

    Calling it again changes the run and wraps nothing twice. Imports torch's TensorBoard
    writer (it needs the ``tensorboard`` package).
    """
    import torch.utils.tensorboard.writer as module  # noqa: PLC0415 - only when asked for
    from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415

    with _lock:
        _target[0] = run
        for maker in _MAKERS:
            if maker not in _makers and callable(getattr(module, maker, None)):
                _makers[maker] = getattr(module, maker)
                setattr(module, maker, functools.partial(_keep, _makers[maker]))
        for name in METHODS:
            if name not in _originals:
                original = getattr(SummaryWriter, name)
                _originals[name] = original
                setattr(SummaryWriter, name, _wrap(name, original))


def release_tensorboard() -> None:
    """Put ``SummaryWriter``'s own methods back; forwarding stops (nothing when not captured)."""
    with _lock:
        if not _originals:
            return
        import torch.utils.tensorboard.writer as module  # noqa: PLC0415 - imported by capture already
        from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415

        for name, original in _originals.items():
            setattr(SummaryWriter, name, original)
        _originals.clear()
        for maker, original in _makers.items():
            setattr(module, maker, original)
        _makers.clear()
        _target[0] = None


def captured() -> bool:
    """Whether ``SummaryWriter`` is captured now."""
    return bool(_originals)


def _keep(maker: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """A summary TensorBoard makes, made as ever, and kept for the forwarding that follows."""
    summary = maker(*args, **kwargs)
    _inside.kept = summary
    return summary


def _kept() -> Any:
    """The summary the writer's call made (None: none was kept), taken."""
    summary, _inside.kept = getattr(_inside, "kept", None), None
    return summary


def _wrap(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
    forward = _FORWARDS[name]
    first = name == "add_figure"  # the writer may close the figure: take it before

    @functools.wraps(original)
    def wrapper(writer: Any, *args: Any, **kwargs: Any) -> Any:
        if first:
            _forward(name, forward, writer, args, kwargs)
            _inside.figure = True
            try:
                return original(writer, *args, **kwargs)
            finally:
                _inside.figure = False
        _inside.kept = None
        result = original(writer, *args, **kwargs)
        if not (name == "add_image" and getattr(_inside, "figure", False)):
            _forward(name, forward, writer, args, kwargs)
        return result

    return wrapper


def _forward(
    name: str, forward: Callable[..., None], writer: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> None:
    try:
        run = _target[0] or _newest()
        if run is None:
            _once.log(
                log,
                logging.WARNING,
                "no-run",
                "clearml-relay: SummaryWriter.%s is not forwarded: no producer.Run is open",
                name,
            )
            return
        forward(run, writer, *args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - forwarding must never fail the writer's caller
        _once.log(
            log,
            logging.WARNING,
            (name, type(exc)),
            "clearml-relay: SummaryWriter.%s not forwarded: %r",
            name,
            exc,
        )


def _newest() -> Run | None:
    from producer.run import _newest_run  # noqa: PLC0415 - the process's open runs live there

    return _newest_run()


def _step(step: object) -> int:
    return 0 if step is None else int(step)  # type: ignore[call-overload]  # a tensor or NumPy integer too


def _scalar(
    run: Run, _writer: Any, tag: str, scalar_value: Any, global_step: Any = None, *rest: Any, **more: Any
) -> None:
    value = framework.number(scalar_value)
    if value is not None:
        run.scalar(*framework.split_tag(str(tag)), value, _step(global_step))


def _scalars(
    run: Run,
    _writer: Any,
    main_tag: str,
    tag_scalar_dict: Mapping[str, Any],
    global_step: Any = None,
    *rest: Any,
    **more: Any,
) -> None:
    step = _step(global_step)
    for key, scalar_value in tag_scalar_dict.items():
        value = framework.number(scalar_value)
        if value is not None:
            run.scalar(str(main_tag), str(key), value, step)


def _image(  # noqa: PLR0917 - SummaryWriter.add_image's signature
    run: Run,
    _writer: Any,
    tag: str,
    img_tensor: Any,
    global_step: Any = None,
    walltime: Any = None,
    dataformats: str = "CHW",
) -> None:
    title, series = framework.split_tag(str(tag))
    summary = _kept()
    if summary is not None:  # the PNG the writer just wrote
        png = summary.value[0].image.encoded_image_string
        report_encoded_image(run.logger, title, series, _step(global_step), data=png, name="image.png")
        return
    # A torch whose add_image does not call writer.image: convert as it does.
    import numpy as np  # noqa: PLC0415 - torch brought it
    from torch.utils.tensorboard._convert_np import make_np  # noqa: PLC0415
    from torch.utils.tensorboard._utils import convert_to_HWC  # noqa: PLC0415

    array = convert_to_HWC(make_np(img_tensor), dataformats)  # type: ignore[no-untyped-call]
    scale = 1 if array.dtype == np.uint8 else 255
    pixels = (array.astype(np.float32) * scale).clip(0, 255).astype(np.uint8)
    run.logger.report_image(
        title, series, _step(global_step), image=pixels[..., 0] if pixels.shape[-1] == 1 else pixels
    )


def _histogram(  # noqa: PLR0917 - SummaryWriter.add_histogram's signature
    run: Run,
    writer: Any,
    tag: str,
    values: Any,
    global_step: Any = None,
    bins: Any = "tensorflow",
    walltime: Any = None,
    max_bins: Any = None,
) -> None:
    title, series = framework.split_tag(str(tag))
    summary = _kept()
    if summary is not None:  # the buckets the writer just wrote
        histo = summary.value[0].histo
        counts, limits, size = histo.bucket, histo.bucket_limit, 16 * len(histo.bucket)
    else:  # a torch whose add_histogram does not call writer.histogram: count them as it does
        import numpy as np  # noqa: PLC0415 - torch brought it
        from torch.utils.tensorboard._convert_np import make_np  # noqa: PLC0415

        samples = np.array(make_np(values))  # a copy: the caller may change its tensor next step
        if isinstance(bins, str) and bins == "tensorflow":
            bins = writer.default_bins
        counts = limits = None
        size = samples.nbytes

    def buckets() -> reports.Call:
        """(writer thread) The buckets, as ``report_histogram`` takes them."""
        nonlocal counts, limits
        if counts is None:
            from torch.utils.tensorboard.summary import make_histogram  # noqa: PLC0415

            proto = make_histogram(samples.astype(float), bins, max_bins)  # type: ignore[no-untyped-call]
            counts, limits = proto.bucket, proto.bucket_limit
        return reports.Histogram(
            values=snapshot.array("values", list(counts)), xlabels=[f"{x:.6g}" for x in limits]
        )

    report_later(run.logger, title, series, _step(global_step), size=size, make_call=buckets)


def _text(
    run: Run, _writer: Any, tag: str, text_string: str, global_step: Any = None, *rest: Any, **more: Any
) -> None:
    title, found, series = str(tag).rpartition("/")
    if not (found and title and series):
        title, series = TEXT_TITLE, str(tag)
    run.logger.report_media(
        title, series, _step(global_step), stream=io.StringIO(str(text_string)), file_extension=".txt"
    )


def _figure(
    run: Run, _writer: Any, tag: str, figure: Any, global_step: Any = None, *rest: Any, **more: Any
) -> None:
    title, series = framework.split_tag(str(tag))
    for one in _figures(figure):
        run.logger.report_matplotlib_figure(title, series, one, _step(global_step))


def _figures(figure: Any) -> Iterator[Any]:
    yield from figure if isinstance(figure, list) else [figure]


def _hparams(run: Run, _writer: Any, hparam_dict: Mapping[str, Any], *rest: Any, **more: Any) -> None:
    run.update_parameters({f"{HPARAMS_SECTION}/{key}": value for key, value in hparam_dict.items()})


_FORWARDS: Final[dict[str, Callable[..., None]]] = {
    "add_scalar": _scalar,
    "add_scalars": _scalars,
    "add_image": _image,
    "add_histogram": _histogram,
    "add_text": _text,
    "add_figure": _figure,
    "add_hparams": _hparams,
}
