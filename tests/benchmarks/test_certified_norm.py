"""``benchmarks/certified_norm.py``: the image table."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from bench.stats import summarize  # noqa: E402
from certified_norm import image_table  # noqa: E402


def _run(step_seconds: list[float]) -> dict:
    return {
        "test_bpd": 3.5,
        "test_bpd_se": 0.02,
        "certified_max_bound": 0.9,
        "actual_max_bound_forward": 0.85,
        "actual_max_bound": 0.88,
        "certified_invertible": True,
        "inverse_max_error": 1e-6,
        "max_grad_mode_scale": 1.01,
        "train_step_seconds_from_metrics": summarize(step_seconds),
        "steps": 5,
    }


def test_an_untimed_image_loop_shows_a_dash_and_says_why():
    """``--image-steps 5`` logs one training row: the s/step cell was "-" with nothing to say
    why (the toy table under it had its line)."""
    image = {
        "spectral": _run([]),
        "certified": _run([0.02, 0.03]),
        "bpd_difference": {"mean": -0.01, "se": 0.005},
    }
    table = image_table(image)
    rows = [line.split(" | ") for line in table.splitlines() if line.startswith("| digits")]
    assert [row[9] for row in rows[:2]] == ["-", "25 ms"]
    assert table.endswith(
        '\n\n"-" in s/step: fewer than two training rows were logged (one every '
        "train.log_every steps), so no step of the loop was timed; give more --image-steps"
    )
    image["spectral"] = _run([0.01, 0.01])
    assert "give more" not in image_table(image)


class _Stop(Exception):
    pass


def test_the_image_progress_line_counts_one_step_in_words(monkeypatch, capsys):
    """``--image-steps 1`` said "training ... for 1 steps"."""
    import certified_norm

    def stop(*args, **kwargs):
        raise _Stop

    monkeypatch.setattr(certified_norm.norms, "train_preset", stop)
    with pytest.raises(_Stop):
        certified_norm.image_likelihood(1, 0)
    assert "lipschitz_norm=spectral for 1 step ...\n" in capsys.readouterr().out
