"""``benchmarks/figure1.py``: flags that cannot draw the figure are one line."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import figure1  # noqa: E402


def test_no_training_step_is_refused_before_anything_is_built(monkeypatch, capsys, tmp_path):
    """``--steps 0`` trained nothing and ended in an UnboundLocalError (no loss to report)."""
    monkeypatch.setattr(sys, "argv", ["figure1.py", "--steps", "0", "--out", str(tmp_path / "f")])
    monkeypatch.setattr(figure1, "build", lambda *a: pytest.fail("built"))
    with pytest.raises(SystemExit) as stop:
        figure1.main()
    assert stop.value.code == 2
    assert capsys.readouterr().err == (
        "figure1.py: error: --steps must be >= 1, got 0 (see `figure1.py --help`)\n"
    )
    assert not any(tmp_path.iterdir())
