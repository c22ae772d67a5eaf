"""``benchmarks/scoring_law.py``: counts that leave nothing to score are refused first."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.benchmarks import usage_error

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import scoring_law  # noqa: E402


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--draws", "0"], "argument --draws: must be at least 1, got 0"),
        (["--batches", "-1"], "argument --batches: must be at least 1, got -1"),
        (["--batches", "1"], "--batches must be >= 2 (a spread needs two estimates), got 1"),
        (["--n-test", "1"], "--n-test must be >= 2 (a standard error needs two images), got 1"),
    ],
)
def test_counts_too_small_to_score_are_one_line_usage_errors(monkeypatch, capsys, argv, message):
    """``--draws 0`` loaded the run and ended in a ValueError (the smallest of no draws);
    ``--batches 1`` in a StatisticsError (the quantiles of one estimate)."""
    assert usage_error(monkeypatch, capsys, scoring_law, "--runs", "r", *argv) == (
        f"scoring_law.py: error: {message} (see `scoring_law.py --help`)\n"
    )
