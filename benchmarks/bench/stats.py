"""Summaries of repeated measurements, and the verdict of a difference against its error."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from iresnet.app.tasks import mean_se

__all__ = ["iqr", "mean_se", "median", "paired_ratios", "summarize", "verdict"]


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if len(xs) else math.nan


def iqr(xs: Sequence[float]) -> tuple[float, float]:
    """(25th, 75th) percentiles (inclusive method)."""
    if len(xs) < 2:
        v = float(xs[0]) if xs else math.nan
        return v, v
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return float(q[0]), float(q[2])


def summarize(xs: Sequence[float]) -> dict[str, Any]:
    """Median, mean, quartiles, count and the values themselves. Of no values (a model that
    took no timed step) the statistics are None, written ``null`` to a results file: NaN was
    written as the string ``"nan"``, which a reader must know to look for."""
    if not len(xs):
        return {"median": None, "mean": None, "q25": None, "q75": None, "n": 0, "raw": []}
    lo, hi = iqr(xs)
    return {
        "median": median(xs),
        "mean": float(statistics.fmean(xs)),
        "q25": lo,
        "q75": hi,
        "n": len(xs),
        "raw": [float(x) for x in xs],
    }


def paired_ratios(num: Sequence[float], den: Sequence[float]) -> list[float]:
    """Round-by-round ratios of two interleaved series (same length)."""
    return [a / b for a, b in zip(num, den, strict=True)]


def verdict(difference: float, se: float) -> str:
    """``ours - peer`` of a lower-is-better number against twice its standard error."""
    if difference < -2 * se:
        return "ours better"
    if difference > 2 * se:
        return "peer better"
    return "tie (within 2 SE)"
