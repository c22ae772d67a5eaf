"""``benchmarks/paired_bpd.py`` and the per-image scores it pairs (``Sampler.test_bits_per_dim``
of ``sample_quality.py``): ours as ``iresnet evaluate`` scores, the pairing over images."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import paired_bpd  # noqa: E402
import pytest  # noqa: E402
import sample_quality  # noqa: E402
import torch  # noqa: E402
from sample_quality import Sampler  # noqa: E402

from iresnet.app.config import Config  # noqa: E402
from iresnet.app.runs import load_run  # noqa: E402
from iresnet.app.training import train  # noqa: E402
from tests.app.test_image_runs import TRAIN  # noqa: E402

# The image-run tests' tiny digits flow, trained 3 steps instead of 30.
TINY = [*TRAIN, "train.steps=3", "train.eval_every=3", "train.checkpoint_every=3"]


def test_our_per_image_scores_are_what_evaluate_reports(tmp_path):
    """On digits (64 dimensions: exact log-dets) with the same seed and one batch, the
    per-image bits/dim average to ``full_evaluation``'s test bits/dim exactly."""
    pytest.importorskip("sklearn")
    run_dir = tmp_path / "run"
    train(Config().override(TINY), run_dir, progress=False)
    values = Sampler(run_dir).test_bits_per_dim(100, seed=0)
    assert values.shape == (100,) and values.dtype == torch.float64
    trained = load_run(run_dir)
    torch.manual_seed(0)
    ev = trained.task.full_evaluation(trained.model, n_inverse=4, n_test=100)
    assert ev["estimator"] == "exact"
    assert float(values.mean()) == pytest.approx(ev["test_bpd"], rel=1e-6)


class _Fake:
    def __init__(self, path, table):
        self.kind, self.dataset, self.values = "fake", table[str(path)][0], table[str(path)][1]
        self.images = table[str(path)][2] if len(table[str(path)]) > 2 else torch.zeros(3)

    def test_images(self, n_test):
        return self.images

    def bits_per_dim(self, x, seed):
        return self.values


def _run(monkeypatch, tmp_path, table):
    monkeypatch.setattr(sample_quality, "Sampler", lambda path: _Fake(path, table))
    monkeypatch.setattr(
        sys, "argv", ["paired_bpd.py", "--runs", "A=a", "B=b", "--out-dir", str(tmp_path)]
    )
    paired_bpd.main()
    return json.loads((tmp_path / "paired-bpd.json").read_text())["raw"]


def test_the_difference_is_per_image_and_skips_images_either_model_lost(monkeypatch, tmp_path):
    a = torch.tensor([3.0, 2.0, 4.0, 5.0, 1.0], dtype=torch.float64)
    b = torch.tensor([2.5, 1.75, 3.5, math.inf, 0.25], dtype=torch.float64)
    raw = _run(monkeypatch, tmp_path, {"a": ("digits", a), "b": ("digits", b)})
    d = torch.tensor([-0.5, -0.25, -0.5, -0.75], dtype=torch.float64)  # image 4 left out
    assert raw["paired"]["b_minus_a"] == pytest.approx(float(d.mean()))
    assert raw["paired"]["se"] == pytest.approx(float(d.std() / 2))
    assert raw["paired"]["n"] == 4 and raw["B"]["non_finite"] == 1


def test_one_model_given_twice_is_reported_not_divided_by_zero(monkeypatch, tmp_path):
    v = torch.tensor([3.0, 2.0, 4.0], dtype=torch.float64)
    raw = _run(monkeypatch, tmp_path, {"a": ("digits", v), "b": ("digits", v)})
    assert raw["paired"]["b_minus_a"] == 0 and raw["paired"]["se"] == 0
    text = (tmp_path / "paired-bpd.md").read_text()
    assert "the same value on every image" in text


def test_too_few_images_scored_by_both_is_one_line(monkeypatch, tmp_path):
    a = torch.tensor([3.0, math.nan, 4.0], dtype=torch.float64)
    b = torch.tensor([2.0, 1.0, math.inf], dtype=torch.float64)
    with pytest.raises(SystemExit, match="only 1 test image scored finitely under both"):
        _run(monkeypatch, tmp_path, {"a": ("digits", a), "b": ("digits", b)})


def test_two_runs_that_read_different_test_images_are_refused(monkeypatch, tmp_path):
    """Two data folders whose test files differ (the same images in another order) paired
    image i of one with image i of the other, without a word."""
    v = torch.ones(3, dtype=torch.float64)
    table = {
        "a": ("digits", v, torch.tensor([1, 2, 3])),
        "b": ("digits", v, torch.tensor([3, 2, 1])),
    }
    with pytest.raises(SystemExit, match="different test images"):
        _run(monkeypatch, tmp_path, table)


def test_two_data_sets_are_refused(monkeypatch, tmp_path):
    v = torch.ones(4, dtype=torch.float64)
    with pytest.raises(SystemExit, match="different data sets"):
        _run(monkeypatch, tmp_path, {"a": ("digits", v), "b": ("fashion-mnist", v)})
