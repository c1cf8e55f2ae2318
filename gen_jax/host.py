"""Process-wide settings that make training on a CPU host faster."""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.metadata
import os
import sys
import warnings

# XLA:CPU's operations handed to the YNNPACK library: jaxlib 0.10's default without the
# convolutions, which XLA's own multi-threaded (Eigen) kernels run faster: conv nets train
# 1.3-2x faster on 2 cores (benchmarks/README.md, finding 16). Measured on jaxlib 0.10 only;
# other versions keep their default.
YNN_FUSION_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
GEN_JAX_YNN_FUSIONS = f"{YNN_FUSION_FLAG}=individual_dot,reduce"
XLA_YNN_FUSIONS = f"{YNN_FUSION_FLAG}=individual_dot,reduce,individual_convolution"  # its own
MEASURED_JAXLIB = "0.10."

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


def multithreaded_convolutions() -> bool:
    """Set `XLA_FLAGS` so that XLA:CPU keeps convolutions in its own multi-threaded kernels
    (`GEN_JAX_YNN_FUSIONS`) in this process: `import gen_jax` calls it, before JAX starts its
    backends.

    Left alone (returns False): a flag the user set in `XLA_FLAGS`, another jaxlib than the one
    measured (an unknown flag would stop XLA), or backends already started, where a flag no longer
    applies (with a warning: this process trains slower, and rounds differently, than `gen-jax`).
    """
    flags = os.environ.get("XLA_FLAGS", "")
    try:
        jaxlib = importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        return False
    if YNN_FUSION_FLAG in flags or not jaxlib.startswith(MEASURED_JAXLIB):
        return False
    if "jax" in sys.modules and _backends_started():
        warnings.warn(
            "gen_jax was imported after JAX ran a computation, so XLA's CPU convolutions stay in "
            "YNNPACK here (slower, and rounded differently from `gen-jax train`); import gen_jax "
            "first, or set XLA_FLAGS yourself",
            stacklevel=3,
        )
        return False
    os.environ["XLA_FLAGS"] = f"{flags} {GEN_JAX_YNN_FUSIONS}".strip()
    return True


def _backends_started() -> bool:
    from jax._src import xla_bridge  # no public API says whether the backends exist yet

    return xla_bridge.backends_are_initialized()
