"""Sizes in bytes as people write them in settings and flags: ``10GiB``, ``512 MiB``, ``64GB``.

Both sides read byte settings through :func:`parse_size` (the producer's
``CLEARML_RELAY_MAX_OUTBOX_BYTES``, the collector's ``--max-journal-bytes`` and the like) and
write defaults with :func:`format_size`, so that a default copied from the docs is accepted.
``KiB``/``MiB``/``GiB``/``TiB`` (and Kubernetes' ``Ki``, ``Mi``, ``Gi``, ``Ti``) are powers of
1024; ``kB``/``KB``/``MB``/``GB``/``TB`` (and ``k``, ``M``, ``G``, ``T``) powers of 1000, as
IEC 80000-13 and the SI write them. A plain number is bytes.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Final

#: What a size mistake says was expected.
EXPECTED: Final = "expected a size in bytes such as 10GiB, 512MiB, 64GB or 1048576"

_SIZE: Final = re.compile(r"(?P<number>\d[\d_]*(?:\.\d+)?)\s*(?P<prefix>[kKMGT]?)(?P<binary>i?)(?P<unit>B?)")
_POWERS: Final = {"": 0, "k": 1, "K": 1, "M": 2, "G": 3, "T": 4}


class SizeError(ValueError):
    """Not a size in bytes; the message says what was expected."""


def parse_size(raw: object) -> int:
    """``raw`` (an int, or text such as ``10GiB``) as a whole number of bytes.

    Raises:
        SizeError: not a size, or not a whole number of bytes (``1.5B``).

    """
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    match = _SIZE.fullmatch(raw.strip()) if isinstance(raw, str) else None
    if match is None or (match["binary"] and not match["prefix"]):
        raise SizeError(EXPECTED)
    try:
        number = Decimal(match["number"].replace("_", ""))
    except InvalidOperation:
        raise SizeError(EXPECTED) from None
    value = number * (1024 if match["binary"] else 1000) ** _POWERS[match["prefix"]]
    if value != value.to_integral_value():
        raise SizeError(EXPECTED)
    return int(value)


def format_size(value: int) -> str:
    """``value`` bytes as the docs write it: ``10 GiB``, ``8 MiB``, else ``N bytes``."""
    for size, suffix in ((1024**4, "TiB"), (1024**3, "GiB"), (1024**2, "MiB"), (1024, "KiB")):
        if value and value % size == 0:
            return f"{value // size} {suffix}"
    return f"{value} bytes"
