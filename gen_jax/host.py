"""Process-wide settings that make training on a CPU host faster."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# glibc mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3


def keep_freed_memory_in_heap() -> bool:
    """Stop glibc from handing large freed blocks straight back to the kernel.

    XLA on CPU allocates and frees tens of MB of temporaries every step; with glibc's defaults
    each step maps them afresh and page-faults them in again (a fifth of a CNN run's time was
    spent in the kernel). Keeping them in the heap trains the baseline CNN ~15% faster
    (benchmarks/README.md). Returns whether the settings took effect (False off glibc).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    settings = ((M_MMAP_THRESHOLD, 1 << 30), (M_TRIM_THRESHOLD, 1 << 30), (M_TOP_PAD, 256 << 20))
    return all(mallopt(parameter, value) == 1 for parameter, value in settings)
