"""The collector's heap: memory freed after a message kept for the next one, not handed back.

Every file chunk arrives in a fresh 1 MiB buffer (ZeroMQ allocates one per message). glibc's
malloc gives memory freed at the top of a heap back to the kernel once more than its trim
threshold is free there; the threshold follows the largest buffer freed (about 2 MiB here), so
chunk after chunk the same pages went back to the kernel and were faulted in again, zeroed:
40,000-60,000 page faults per GB received (120,000-180,000 when the payload was still copied out
of ZeroMQ's buffer). With the thresholds fixed by :func:`keep_freed_memory`, a chunk's buffer
reuses the pages of the one before: about 1,000 faults per GB, and 0.1-0.4 s less kernel CPU per GB.

The cost is bounded: at most :data:`TRIM_BYTES` free at the top of each of malloc's arenas stays
resident (the peak of the buffers in use is resident anyway while they are in use).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from typing import Final

log = logging.getLogger(__name__)

#: Allocations up to this size come from the heap (a chunk's buffer, 1 MiB and its header).
MMAP_BYTES: Final = 4 * 1024 * 1024
#: Free memory kept at the top of a heap before it is given back to the kernel.
TRIM_BYTES: Final = 32 * 1024 * 1024
# mallopt parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD: Final = -1
_M_MMAP_THRESHOLD: Final = -3


def keep_freed_memory() -> bool:
    """Fix malloc's mmap and trim thresholds for this process; False where malloc is not glibc's."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        log.debug("no mallopt in this C library: the heap keeps its defaults")
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_BYTES))
