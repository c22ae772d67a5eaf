"""``benchmarks/conditional.py`` and ``hybrid.py``: a budget of no CPU time is refused first."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.benchmarks import usage_error

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import conditional  # noqa: E402
import hybrid  # noqa: E402


@pytest.mark.parametrize("script", [conditional, hybrid], ids=lambda m: m.__name__)
@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "must be a number above 0, got 0"),
        ("-5", "must be a number above 0, got -5"),
        ("nan", "must be a number above 0, got nan"),
        ("inf", "must be a number above 0, got inf"),
        ("lots", "expected a number, got 'lots'"),
    ],
)
def test_a_budget_that_is_not_above_zero_is_a_one_line_usage_error(
    monkeypatch, capsys, script, value, message
):
    """``conditional.py --budget 0`` (or -5) trained for the default 60 CPU seconds without a
    word (``args.budget or default``); ``hybrid.py --budget 0`` trained nothing."""
    name = f"{script.__name__}.py"
    assert usage_error(monkeypatch, capsys, script, "--budget", value) == (
        f"{name}: error: argument --budget: {message} (see `{name} --help`)\n"
    )


def test_a_positive_budget_is_read_as_given():
    from bench.env import positive_float

    assert (positive_float("0.5"), positive_float(" 2 "), positive_float("1e3")) == (0.5, 2, 1e3)
