"""``benchmarks/kid_calibration.py``: its earlier estimator against the explicit one, and a
quick run's results."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from kid_calibration import calibrate, kid_subset_mean, main  # noqa: E402
from sample_quality import mmd2_unbiased  # noqa: E402


def test_the_subset_mean_is_the_mean_of_the_slices_estimates():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 3, generator=g, dtype=torch.float64)
    y = torch.randn(30, 3, generator=g, dtype=torch.float64) + 0.3
    slices = [mmd2_unbiased(x[i : i + 10], y[i : i + 10]) for i in (0, 10, 20)]
    mean, se = kid_subset_mean(x, y, subsets=3)
    assert mean == pytest.approx(np.mean(slices), rel=1e-12)
    assert se == pytest.approx(np.std(slices, ddof=1) / np.sqrt(3), rel=1e-12)


def test_calibrate_counts_the_replicates_beyond_two_reported_se():
    values = np.array([0.0, 1.0, -1.0, 4.0])  # mean 1: distances 1, 0, 2, 3
    c = calibrate(values, np.full(4, 1.0))
    assert c["mean"] == 1.0 and c["beyond_2se"] == 0.25  # only 3 > 2
    assert c["spread"] == pytest.approx(np.std(values, ddof=1))


def test_a_quick_run_writes_both_estimators_for_each_mix(tmp_path, monkeypatch):
    monkeypatch.setattr(
        sys,
        "argv",
        ["kid_calibration.py", "--quick", "--replicates", "4", "--mixes", "0", "1"]
        + ["--out-dir", str(tmp_path)],
    )
    main()
    raw = json.loads((tmp_path / "kid-calibration.json").read_text())["raw"]
    assert {k for k in raw if k.startswith("mix=")} == {
        f"mix={m} n=60 {e}" for m in (0, 1) for e in ("all pairs + jackknife", "subset mean")
    }
    assert all(0 <= r["beyond_2se"] <= 1 and r["spread"] > 0 for r in raw.values())
