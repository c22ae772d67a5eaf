"""``benchmarks/ddp_scaling.py``: runs too short to time are one line, not a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import ddp_scaling  # noqa: E402


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--repeats", "0"], "--repeats must be >= 1, got 0"),
        (["--steps", "0"], "--steps must be >= 1, got 0"),
    ],
)
def test_flags_that_leave_nothing_to_time_are_refused_first(monkeypatch, capsys, argv, message):
    """``--repeats 0`` trained nothing and ended in an IndexError (the median of no runs)."""
    monkeypatch.setattr(sys, "argv", ["ddp_scaling.py", *argv])
    monkeypatch.setattr(ddp_scaling, "run", lambda *a: pytest.fail("trained"))
    with pytest.raises(SystemExit) as stop:
        ddp_scaling.main()
    assert stop.value.code == 2
    assert capsys.readouterr().err == (
        f"ddp_scaling.py: error: {message} (see `ddp_scaling.py --help`)\n"
    )


@pytest.mark.parametrize("logged", [[], [{"step": 5, "seconds": 0.4, "loss": 1.0}]])
def test_a_run_with_fewer_than_two_training_rows_says_to_give_more_steps(
    monkeypatch, capsys, tmp_path, logged
):
    """``--steps 5`` logged one training row (one every train.log_every = 10 steps): the
    steps per second were 0 / 0, a ZeroDivisionError."""
    done = subprocess.CompletedProcess([], 0, "", "")
    monkeypatch.setattr(ddp_scaling.subprocess, "run", lambda *a, **k: done)
    monkeypatch.setattr(ddp_scaling, "records", lambda out: logged)
    monkeypatch.setattr(sys, "argv", ["ddp_scaling.py"])
    with pytest.raises(SystemExit) as stop:
        ddp_scaling.run("toy-8gaussians", 5, 2, 64, tmp_path)
    rows = "1 training row" if logged else "0 training rows"
    assert stop.value.code == 2
    assert capsys.readouterr().err == (
        f"ddp_scaling.py: error: the 2-process run logged {rows} in 5 steps (one every "
        "train.log_every steps), too few to time; give more --steps\n"
    )
