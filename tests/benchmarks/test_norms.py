"""``benchmarks/bench/norms.py``: the tables of the norm comparisons."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from bench.norms import UNTIMED, likelihood_table, ms, pair_parser, parse_or_render  # noqa: E402
from bench.stats import summarize  # noqa: E402


def _run(median: float) -> dict:
    return {
        "test_nll": 2.5,
        "test_nll_se": 0.01,
        "kl": 0.1,
        "kl_se": 0.01,
        "certified_max_bound": 0.9,
        "actual_max_bound": 0.8,
        "certified_invertible": True,
        "train_step_seconds_from_metrics": {"median": median},
        "steps": 5,
    }


def test_a_loop_with_no_timed_step_shows_a_dash_and_says_why():
    """``--steps 5`` logs one training row (one every train.log_every = 10 steps, and the
    last): no step is timed, and the table said "nan µs"."""
    assert (ms(math.nan), ms(0.0123), ms(0.0000456)) == ("-", "12.3 ms", "45.6 µs")
    pair = ("spectral", "frobenius")
    likelihood = {
        "moons": {
            "spectral": _run(math.nan),
            "frobenius": _run(0.002),
            "nll_difference": {"mean": 0.01, "se": 0.02},
        }
    }
    table = likelihood_table(likelihood, ["moons"], pair)
    rows = [line.split(" | ") for line in table.splitlines() if line.startswith("| moons")]
    assert [row[7] for row in rows[:2]] == ["-", "2 ms"]
    assert table.endswith(f"\n\n{UNTIMED}") and "nan" not in table
    likelihood["moons"]["spectral"] = _run(0.003)
    assert UNTIMED not in likelihood_table(likelihood, ["moons"], pair)


def test_a_median_of_no_steps_shows_a_dash_whether_null_or_a_recorded_nan():
    """``summarize([])`` gives None (``null`` in a results file); files written before hold
    the string ``"nan"``: both are "-", never a traceback."""
    assert (ms(summarize([])["median"]), ms("nan"), ms(None), ms("0.5")) == (
        "-",
        "-",
        "-",
        "500 ms",
    )


def test_no_timing_round_is_refused_as_the_flags_are_read(monkeypatch, capsys):
    """``frobenius.py --repeats 0`` timed no round of the toy case, after training the toy
    models: its ratio cells read "nan (nan-nan)". It is a usage error, in one line, first."""
    ap = pair_parser(None, "rounds")
    ap.prog = "demo.py"
    monkeypatch.setattr(sys, "argv", ["demo.py", "--repeats", "0"])
    with pytest.raises(SystemExit) as stop:
        parse_or_render(ap, lambda path: pytest.fail("rendered"))
    assert stop.value.code == 2
    assert capsys.readouterr().err == (
        "demo.py: error: --repeats must be >= 1, got 0 (see `demo.py --help`)\n"
    )
    monkeypatch.setattr(sys, "argv", ["demo.py", "--repeats", "1"])
    assert parse_or_render(ap, lambda path: pytest.fail("rendered")).repeats == 1


class _Stop(Exception):
    pass


def test_the_progress_line_counts_one_step_in_words(monkeypatch, capsys):
    """``frobenius.py --steps 1`` said "training ... for 1 steps"."""
    from bench import norms

    def stop(*args, **kwargs):
        raise _Stop

    monkeypatch.setattr(norms, "train_and_evaluate", stop)
    with pytest.raises(_Stop):
        norms.compare_toy_likelihood(["moons"], ("spectral", "frobenius"), 1, 0)
    assert "[moons] training with lipschitz_norm=spectral for 1 step ...\n" in (
        capsys.readouterr().out
    )


@pytest.mark.parametrize(("n", "words"), [(1, "1 round"), (4, "4 rounds")])
def test_the_timing_table_counts_its_rounds_in_words(n, words):
    """``--repeats 1`` labelled the rows "training step (1 rounds)"."""
    from bench.norms import time_table

    ratio = {"median": 1.0, "q25": 0.9, "q75": 1.1, "n": n}
    both = {"spectral": {"median": 0.001}, "frobenius": {"median": 0.002}, "ratio": ratio}
    table = time_table(
        {"toy": {"step": both, "normalisation_only": both}}, ("spectral", "frobenius")
    )
    assert f"| training step ({words}) |" in table
    assert f"| normalisation only ({words}) |" in table
