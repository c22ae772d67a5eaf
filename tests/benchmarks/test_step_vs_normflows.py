"""``benchmarks/step_vs_normflows.py``: counts that leave nothing to time are refused first."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

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
    monkeypatch.setattr(sys, "argv", ["step_vs_normflows.py", *argv])
    monkeypatch.setattr(step_vs_normflows, "environment", lambda: pytest.fail("ran"))
    with pytest.raises(SystemExit) as stop:
        step_vs_normflows.main()
    assert stop.value.code == 2
    assert capsys.readouterr().err == (
        f"step_vs_normflows.py: error: {message} (see `step_vs_normflows.py --help`)\n"
    )
