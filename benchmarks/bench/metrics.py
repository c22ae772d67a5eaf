"""Readers of a run's ``metrics.jsonl`` (the rows the training loop logs)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from iresnet.app.runs import Run

Rows = list[dict[str, Any]]


def records(run_dir: str | Path) -> Rows:
    """Every logged row of the run in ``run_dir`` (a torn last line is skipped)."""
    return Run(run_dir).records()


def train_rows(rows: Rows, clock: str = "seconds") -> Rows:
    """The training-step rows (those with a ``loss``) that carry the clock ``clock``."""
    return [r for r in rows if "loss" in r and clock in r]


def logged_max(rows: Rows, key: str) -> float:
    """The largest value of ``key`` (``seconds``, ``cpu_seconds``, ``step``), NaN if none."""
    return max((r[key] for r in rows if key in r), default=math.nan)


def seconds_per_step(rows: Rows, clock: str = "cpu_seconds") -> list[float]:
    """Per-step seconds of the clock from consecutive training rows (logged every
    ``log_every`` steps, so periodic evaluations and checkpoints are included)."""
    steps = train_rows(rows, clock)
    return [
        (b[clock] - a[clock]) / (b["step"] - a["step"])
        for a, b in zip(steps, steps[1:], strict=False)
        if b["step"] > a["step"]
    ]
