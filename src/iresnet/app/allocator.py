"""The C allocator's settings for the command line: keep freed tensor memory for reuse.

A CPU training step or evaluation allocates and frees the same tensors again and again. glibc's
``malloc`` gives a block above its mmap threshold (128 KiB at first, moved on the fly up to
32 MiB as blocks are freed) a fresh mapping and hands it back to the kernel when it is freed,
and trims the heap's free top above its trim threshold (twice the mmap threshold); every new
tensor in memory handed back costs one page fault per 4 KiB page touched. How many depends on
the order of the first frees: the same ``iresnet evaluate --n-test 1000`` took 0.9-1.5 million
faults in seven runs and 7.4 million (19 s of system time against 3.5) in an eighth (by hand
and in ``benchmarks/allocator.py``; with memory kept, 0.6-0.8 million in every run).
[`retain_freed_memory`][iresnet.app.allocator.retain_freed_memory] fixes both thresholds
(``mallopt``): blocks up to 32 MiB come from the heap, and up to 128 MiB of free memory at the
heap's top stays with the process for the next step. ``benchmarks/allocator.py`` measures it
against glibc's defaults (three repetitions each, alternating, medians of the paired ratios of
CPU time): a training step of a 4-block convolutional residual flow (4x14x14, batch 32, one
thread) spent a fifth of its CPU time in the kernel and took 0.72 of it with memory kept
(normflows' the same model, 0.68); ``iresnet evaluate`` of a Fashion-MNIST run 0.91; the
``fashion-mnist`` preset's training steps (two threads) 0.98 and the 2-D toy step 1.00, no
change; the numbers computed are identical. The price: the resident set shrinks less after a
peak (a 60-step ``iresnet train fashion-mnist`` peaked at 1035 MiB against 817 MiB).
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
TRIM_THRESHOLD = 128 * 1024**2
"""Free memory at the heap's top is handed back to the kernel only beyond this many bytes."""
OPT_OUT = "IRESNET_ALLOCATOR"
"""Environment variable: ``system`` leaves the allocator as the process found it."""

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_ALLOCATOR_LIBRARIES = ("jemalloc", "tcmalloc", "mimalloc")

_applied: str | None = None


def allocator_choice() -> str | None:
    """Why the allocator is to be left alone, or None when ``retain_freed_memory`` may set it.

    Left alone: ``IRESNET_ALLOCATOR=system`` (any case, spaces around it ignored; ``retain``
    or empty: the default); a choice the user made already (one of glibc's ``MALLOC_..._``
    variables, such as ``MALLOC_TRIM_THRESHOLD_``, a ``glibc.malloc`` tunable, or jemalloc,
    tcmalloc or mimalloc named in ``LD_PRELOAD``); a platform other than Linux with glibc.

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
    threshold at 128 MiB, fixed (``mallopt``), unless
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
        return f"glibc {version}: mmap threshold 32 MiB (it refused a trim threshold of 128 MiB)"
    return f"glibc {version}: freed memory kept (mmap threshold 32 MiB, trim threshold 128 MiB)"
