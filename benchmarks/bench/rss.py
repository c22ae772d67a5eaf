"""Peak resident memory (CPU) of one step, meant for a fresh process (:mod:`bench.worker`)."""

from __future__ import annotations

import gc
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _proc_status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure_peak_rss(step: Callable[[], Any]) -> dict[str, Any]:
    """Run ``step`` once and report how far the resident set rose above its level right before.

    The kernel's peak mark is reset just before the step where Linux allows it
    (``/proc/self/clear_refs``), otherwise the increase of ``ru_maxrss`` is used (which
    under-reports a step that stays below an earlier peak).
    """
    gc.collect()
    reset = _reset_peak_rss()
    rss_before = _proc_status_kib("VmRSS")
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    t0 = time.perf_counter()
    step()
    seconds = time.perf_counter() - t0
    maxrss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    hwm_after = _proc_status_kib("VmHWM")
    if reset and hwm_after is not None and rss_before is not None:
        peak_kib, method = hwm_after - rss_before, "VmHWM after reset - VmRSS before"
    else:
        peak_kib, method = maxrss_after - maxrss_before, "ru_maxrss after - before"
    return {
        "peak_increase_mib": peak_kib / 1024,
        "method": method,
        "rss_before_mib": (rss_before or 0) / 1024,
        "ru_maxrss_increase_mib": (maxrss_after - maxrss_before) / 1024,
        "step_seconds": seconds,
    }
