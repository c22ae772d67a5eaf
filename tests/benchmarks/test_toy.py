"""``benchmarks/toy.py``: the results table."""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

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
