"""``bench.stats``: summaries of repeated measurements."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from bench.report import jsonable  # noqa: E402
from bench.stats import summarize  # noqa: E402


def test_a_summary_of_no_values_is_null_in_a_results_file_not_nan():
    """A peer that took no step had ``summarize([])``: NaN statistics, written ``"nan"``
    (strings) to the JSON. They are None, written ``null``; the count says why."""
    empty = summarize([])
    assert empty == {"median": None, "mean": None, "q25": None, "q75": None, "n": 0, "raw": []}
    assert json.loads(json.dumps(jsonable({"step_seconds": empty}))) == {"step_seconds": empty}
    assert summarize([3.0, 1.0, 2.0, 4.0]) == {
        "median": 2.5,
        "mean": 2.5,
        "q25": 1.75,
        "q75": 3.25,
        "n": 4,
        "raw": [3.0, 1.0, 2.0, 4.0],
    }
