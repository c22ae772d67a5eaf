"""``benchmarks/step_vs_normflows.py``: counts that leave nothing to time are refused first."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.benchmarks import usage_error

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import step_vs_normflows  # noqa: E402


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--rounds", "0"], "argument --rounds: must be at least 1, got 0"),
        (["--rounds", "-2"], "argument --rounds: must be at least 1, got -2"),
        (["--batch", "0"], "argument --batch: must be at least 1, got 0"),
    ],
)
def test_no_timing_round_is_a_one_line_usage_error(monkeypatch, capsys, argv, message):
    """``--rounds 0`` timed nothing and printed "nan" for every time and ratio."""
    assert usage_error(monkeypatch, capsys, step_vs_normflows, *argv) == (
        f"step_vs_normflows.py: error: {message} (see `step_vs_normflows.py --help`)\n"
    )
