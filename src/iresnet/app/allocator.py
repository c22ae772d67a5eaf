"""The C allocator's settings for the command line: keep freed tensor memory for reuse.

A CPU training step or evaluation allocates and frees the same tensors again and again. glibc's
``malloc`` gives a block above its mmap threshold (128 KiB at first, raised on the fly up to
32 MiB) a fresh mapping and hands it back to the kernel when it is freed, and trims the heap's
free top above its trim threshold; every new tensor of that size then costs one page fault per
4 KiB page touched. Measured on a 4-block convolutional residual flow
(``benchmarks/allocator.py``), these faults made up about a third of a training step's CPU time, and
``iresnet evaluate`` of a Fashion-MNIST model ran about twice as long as it does with freed
memory kept. [`retain_freed_memory`][iresnet.app.allocator.retain_freed_memory] fixes both
thresholds (``mallopt``): blocks up to 32 MiB come from the heap and freed memory stays with
the process, as jemalloc and tcmalloc keep it. The price: the resident set does not shrink
after a peak (it was needed once, it is kept for the next step).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

from ..errors import ConfigError

__all__ = [
    "MMAP_THRESHOLD",
    "OPT_OUT",
    "TRIM_THRESHOLD",
    "allocator_choice",
    "retain_freed_memory",
]

MMAP_THRESHOLD = 32 * 1024**2
"""Blocks below this many bytes come from the heap (glibc's largest allowed threshold)."""
TRIM_THRESHOLD = 1024**3
"""Free memory at the heap's top is handed back to the kernel only beyond this many bytes."""
OPT_OUT = "IRESNET_ALLOCATOR"
"""Environment variable: ``system`` leaves the allocator as the process found it."""

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_ALLOCATOR_LIBRARIES = ("jemalloc", "tcmalloc", "mimalloc")

_applied: str | None = None


def allocator_choice() -> str | None:
    """Why the allocator is to be left alone, or None when ``retain_freed_memory`` may set it.

    Left alone: ``IRESNET_ALLOCATOR=system``; a choice the user made already (a ``MALLOC_*``
    variable, a ``glibc.malloc`` tunable, or jemalloc, tcmalloc or mimalloc preloaded); a
    platform other than Linux with glibc.

    Raises:
        ConfigError: ``IRESNET_ALLOCATOR`` is set to something other than ``system`` or
            ``retain``.
    """
    setting = os.environ.get(OPT_OUT, "").strip().lower()
    if setting == "system":
        return f"{OPT_OUT}=system"
    if setting not in ("", "retain"):
        raise ConfigError(
            f"{OPT_OUT}={os.environ[OPT_OUT]!r}: use 'system' (leave the C allocator as it is) "
            "or 'retain' (keep freed memory, the default), or unset it"
        )
    chosen = sorted(k for k in os.environ if k.startswith("MALLOC_") and k.endswith("_"))
    if chosen:
        return f"{chosen[0]} is set"
    if "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return "GLIBC_TUNABLES sets glibc.malloc"
    preload = os.environ.get("LD_PRELOAD", "")
    for name in _ALLOCATOR_LIBRARIES:
        if name in preload:
            return f"{name} is preloaded"
    if not sys.platform.startswith("linux"):
        return f"not Linux ({sys.platform})"
    return None


def retain_freed_memory() -> str:
    """Keep freed memory in the process: glibc's mmap threshold at 32 MiB and its trim
    threshold at 1 GiB, fixed (``mallopt``), unless
    [`allocator_choice`][iresnet.app.allocator.allocator_choice] gives a reason to leave the
    allocator alone.

    Called once by the ``iresnet`` command before any work; safe to call again (the settings
    are applied once per process). Only blocks allocated afterwards follow the new thresholds.

    Returns:
        One line saying what is in force: the thresholds set, or why nothing was changed (an
        opt-out, the user's own settings, not glibc, or ``mallopt`` refusing a value).

    Raises:
        ConfigError: as [`allocator_choice`][iresnet.app.allocator.allocator_choice].
    """
    global _applied
    if _applied is not None:
        return _applied
    reason = allocator_choice()
    if reason is None:
        reason = _set_thresholds()
    _applied = reason
    return reason


def _set_thresholds() -> str:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        version = libc.gnu_get_libc_version().decode()
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return "system allocator (not glibc)"
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # The mmap threshold first: fixing either threshold ends glibc's dynamic adjustment of
    # both, and a trim threshold alone would leave every block above 128 KiB on its own mapping.
    if not mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD):
        return f"system allocator (glibc {version} refused an mmap threshold of 32 MiB)"
    if not mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD):
        return f"glibc {version}: mmap threshold 32 MiB (it refused a trim threshold of 1 GiB)"
    return f"glibc {version}: freed memory kept (mmap threshold 32 MiB, trim threshold 1 GiB)"
