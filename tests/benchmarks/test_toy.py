"""``benchmarks/toy.py``: the results table."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import toy  # noqa: E402
from bench.stats import summarize  # noqa: E402
from toy import table  # noqa: E402


def _result(steps: int, step_seconds: dict, train_seconds: float | str | None) -> dict:
    return {
        "test_nll": 2.5,
        "test_nll_se": 0.01,
        "kl": 0.1,
        "kl_se": 0.01,
        "steps": steps,
        "step_seconds": step_seconds,
        "train_seconds": train_seconds,
        "cpu_share": 0.98,
        "params": 1234,
    }


def _rows(text: str) -> dict[str, list[str]]:
    return {
        row.split(" | ")[1]: row.split(" | ")
        for row in text.split("\n\n")[0].splitlines()[2:]  # below the header and its rule
    }


def test_a_budget_that_ended_before_a_timed_step_shows_a_dash_and_says_why():
    """``toy.py --budget 0.05`` printed "nan ms" (and "nan" CPU seconds) for ours, which
    stopped before it logged two training rows (its steps are timed by their differences).
    Such cells are "-", with a line under the table that says why and what to do."""
    results = {
        "8gaussians": {
            "models": {
                "ours": _result(3, summarize([]), math.nan),
                "normflows": _result(0, {"median": "nan"}, 0.0),  # as a results file held it
                "nsf": _result(40, summarize([0.002, 0.004, 0.003]), 0.31),
            }
        }
    }
    text = table(results)
    rows = _rows(text)
    assert rows["ours (i-ResNet, preset)"][4:7] == ["-", "3", "-"]
    assert rows["normflows ResFlow"][4:7] == ["-", "0", "0.0"]
    assert rows["zuko NSF"][4:7] == ["3.0 ms", "40", "0.3"]
    assert "nan" not in text.lower()
    assert text.split("\n\n")[1].splitlines() == [
        "- 8gaussians, ours (i-ResNet, preset): it stopped at step 3 with fewer than two "
        "training rows logged (one every train.log_every steps), so its CPU time per step is "
        "not known; give a larger --budget",
        "- 8gaussians, normflows ResFlow: no training step finished, so its CPU time per step "
        "is not known; give a larger --budget",
    ]
    # a run stopped by --max-steps may need more of those instead
    assert text.replace("--budget", "--budget or --max-steps") == table(results, max_steps=3)
    del results["8gaussians"]["models"]["ours"], results["8gaussians"]["models"]["normflows"]
    assert "\n\n" not in table(results)  # every cost known: no note


@pytest.mark.parametrize(
    ("steps", "seconds", "said"), [(1, math.nan, "1 step,"), (3, 0.31, "3 steps in 0.3 s,")]
)
def test_the_progress_line_counts_steps_and_names_no_unknown_time(
    monkeypatch, capsys, steps, seconds, said
):
    """It read "1 steps in nan s" for ours stopped before its first logged row."""
    info = {"steps": steps, "train_seconds": seconds, "cpu_share": 0.9}
    monkeypatch.setattr(toy, "train_peer", lambda name, x, args: (None, None, dict(info)))
    monkeypatch.setattr(
        toy, "peer_log_density", lambda name, peer, std: (lambda x: -torch.ones(len(x)), {})
    )
    args = argparse.Namespace(models=["realnvp"], budget=0.05, figure_all=False, no_figure=True)
    toy.run_dataset("8gaussians", args, Path("unused"))
    line = capsys.readouterr().out.splitlines()[-1]
    assert line.startswith(f"[8gaussians] zuko RealNVP: {said} test NLL 1.0000 ± 0.0000, KL ")
    assert "nan" not in line
