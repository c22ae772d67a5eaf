"""``bench.report``: numbers as the tables print them."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from bench.report import fmt, pm  # noqa: E402


def test_numbers_near_a_power_of_ten_print_whole_not_in_exponent_form():
    """A KID's SE of 99.7 printed "1e+02" (``kid_calibration.py --quick``)."""
    assert fmt(99.7, 2) == "100" and fmt(999.6, 3) == "1000"
    assert pm(686.0, 99.7) == "686 ± 100"
    assert fmt(123.4, 2) == "123" and fmt(5.5) == "5.5" and fmt(0.0123, 2) == "0.012"
    assert fmt(2e-4) == "2.00e-04" and fmt(3e5) == "3.00e+05"  # the far ends keep theirs


def test_the_load_line_says_competition_only_when_the_load_was_above_one_per_core():
    from bench.report import load_words

    quiet = {
        "cpu_count": 2,
        "load_average_at_start": [0.01, 0.7, 1.8],
        "load_average_at_end": [0.7, 0.8, 1.9],
    }
    busy = quiet | {"load_average_at_end": [3.5, 2.0, 1.9]}
    assert "quiet" in load_words(quiet) and "competed" in load_words(busy)
    assert load_words({"cpu_count": 2}) == "not recorded"  # nothing recorded: nothing claimed
