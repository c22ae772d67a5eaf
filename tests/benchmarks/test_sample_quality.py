"""``benchmarks/sample_quality.py``: its KID against an explicit computation, its samplers of
the categorical model and the rounding to levels, and its refusal of folders it cannot read."""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from bench.env import run_script  # noqa: E402
from sample_quality import (  # noqa: E402
    Sampler,
    categorical_samples,
    class_entropy_bits,
    kid,
    mmd2_leave_one_group_out,
    mmd2_unbiased,
    parse_args,
    parse_runs,
    parser,
    to_levels,
)


def _mmd2_by_loops(x, y):
    """The unbiased MMD^2 written out term by term (Gretton et al. 2012, eq. 3)."""

    def k(a, b):
        return (float(a @ b) / a.numel() + 1) ** 3

    n, m = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return xx + yy - 2 * xy


def test_mmd2_agrees_with_the_sum_written_out():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 5, generator=g, dtype=torch.float64)
    y = torch.randn(9, 5, generator=g, dtype=torch.float64) + 0.5
    assert mmd2_unbiased(x, y) == pytest.approx(_mmd2_by_loops(x, y), rel=1e-12)


def test_each_left_out_value_is_the_estimate_recomputed_without_that_group():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(24, 3, generator=g, dtype=torch.float64)
    y = torch.randn(24, 3, generator=g, dtype=torch.float64) * 1.5
    full, left_out = mmd2_leave_one_group_out(x, y, groups=4)
    assert full == pytest.approx(_mmd2_by_loops(x, y), rel=1e-12)
    for group in range(4):
        keep = torch.arange(24) // 6 != group
        assert float(left_out[group]) == pytest.approx(
            mmd2_unbiased(x[keep], y[keep]), rel=1e-10, abs=1e-14
        )
    with pytest.raises(ValueError, match="do not split"):
        mmd2_leave_one_group_out(x[:22], y[:22], groups=4)


@pytest.mark.parametrize("shift", [0.0, 0.5])
def test_kid_standard_error_matches_the_spread_over_repeated_samples(shift):
    """Over 150 independent pairs of samples (100 rows each, 10 groups) the median jackknife
    SE is within [0.75, 1.33] of the spread of KID for a shifted law, and within [0.8, 2] of it
    for one law (the jackknife errs on the large side near 0); KID's mean over the pairs is
    within 3 of its SE of 0 for one law (unbiased); and no more than 15% of the pairs sit over
    2 SE from that mean (~8% for a t with 9 degrees of freedom; 15% is 3 binomial SE over)."""
    g = torch.Generator().manual_seed(4)
    values, ses = [], []
    for _ in range(150):
        x = torch.randn(100, 4, generator=g, dtype=torch.float64)
        y = torch.randn(100, 4, generator=g, dtype=torch.float64) + shift
        value, se = kid(x, y, subsets=10)
        values.append(value)
        ses.append(se)
    v, s = np.array(values), np.array(ses)
    ratio = np.median(s) / v.std()
    assert (0.8 <= ratio <= 2.0) if shift == 0 else (0.75 <= ratio <= 1.33), ratio
    if shift == 0:
        assert abs(v.mean()) < 3 * v.std() / math.sqrt(len(v))
    assert np.mean(np.abs(v - v.mean()) / s > 2) <= 0.15


def test_kid_is_unbiased_zero_for_one_distribution_and_positive_for_two():
    """Same law: KID sits within 3 SE of 0 (an estimate that kept the diagonals would sit
    above it); a shifted law is many SE above 0."""
    g = torch.Generator().manual_seed(1)
    a = torch.randn(2000, 4, generator=g, dtype=torch.float64)
    b = torch.randn(2000, 4, generator=g, dtype=torch.float64)
    mean, se = kid(a, b, subsets=40)
    assert abs(mean) < 3 * se
    shifted, se2 = kid(a, b + 1.0, subsets=40)
    assert shifted > 10 * se2
    with pytest.raises(ValueError, match="fewer than 2"):
        kid(a[:3], b[:3], subsets=2)


def test_categorical_samples_follow_the_smoothed_histograms():
    """Pixel 0 is 0 in 3 of 4 training images and 2 in one: with add-one smoothing over 3
    levels, p = (4, 1, 2) / 7; 20 000 draws' frequencies within 4 binomial SE."""
    train = torch.tensor([[0, 1], [0, 1], [0, 1], [2, 1]], dtype=torch.uint8).reshape(4, 1, 1, 2)
    torch.manual_seed(0)
    draws = categorical_samples(train, levels=3, n=20000)
    assert draws.shape == (20000, 1, 1, 2)
    freq = torch.bincount(draws[:, 0, 0, 0], minlength=3).double() / 20000
    p = torch.tensor([4, 1, 2], dtype=torch.float64) / 7
    se = (p * (1 - p) / 20000).sqrt()
    assert ((freq - p).abs() < 4 * se).all()
    freq1 = torch.bincount(draws[:, 0, 0, 1], minlength=3).double() / 20000
    assert freq1[1] > 0.6  # (1 + 4) / 7 = 0.714


def test_dequantised_images_round_back_to_their_levels():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (50, 1, 4, 4))
    u = (x + torch.rand(x.shape)) / 256  # u = (x + U) / K, as Dequantize does
    assert torch.equal(to_levels(u, 256), x)
    assert to_levels(torch.tensor([0.0, 1.0]), 256).tolist() == [0, 255]  # clamped ends


def test_class_entropy_in_bits():
    assert class_entropy_bits(np.arange(10).repeat(3), 10) == pytest.approx(math.log2(10))
    assert class_entropy_bits(np.zeros(5, dtype=int), 10) == 0.0


def test_runs_and_folders_it_cannot_read_are_one_line(tmp_path):
    assert parse_runs(["a=x", "b=y/z"]) == {"a": Path("x"), "b": Path("y/z")}
    for bad in (["noequals"], ["=x"], ["a="], ["a=x", "a=y"]):
        with pytest.raises(SystemExit):
            parse_runs(bad)
    with pytest.raises(SystemExit, match="neither an iresnet run folder"):
        Sampler(tmp_path)
    (tmp_path / "spec.json").write_text('{"who": "glow", "dataset": "digits"}')
    with pytest.raises(SystemExit, match="not the spec.json"):  # not all its keys
        Sampler(tmp_path)
    spec = '{"who": "glow", "dataset": "digits", "data_dir": null, "seed": 0}'
    (tmp_path / "spec.json").write_text(spec)
    with pytest.raises(SystemExit, match="no peer_checkpoint.pt"):
        Sampler(tmp_path)
    (tmp_path / "peer_checkpoint.pt").write_bytes(b"junk")  # a damaged file: one line
    with pytest.raises(SystemExit, match="not a readable checkpoint"):
        Sampler(tmp_path)
    (tmp_path / "spec.json").write_text("{")
    with pytest.raises(SystemExit, match="not the spec.json images.py writes"):
        Sampler(tmp_path)


def test_the_library_s_errors_end_a_script_in_one_line(capsys, monkeypatch):
    from iresnet.errors import DataError

    def main():
        raise DataError("fashion-mnist train split not found: expected ...")

    monkeypatch.setattr(sys, "argv", ["sample_quality.py"])
    with pytest.raises(SystemExit) as stop:
        run_script(main)
    assert stop.value.code == 2
    assert capsys.readouterr().err == (
        "sample_quality.py: error: fashion-mnist train split not found: expected ...\n"
    )


def test_a_non_finite_sample_has_no_level():
    """A NaN pixel cast to int64 became -2**63 and blew KID up to 1e101 (a Glow sample whose
    inverse overflowed): such samples are refused here and counted apart by the script."""
    with pytest.raises(ValueError, match="non-finite"):
        to_levels(torch.tensor([0.5, float("nan")]), 256)


def test_failed_samples_count_as_not_confident():
    """Two classes a classifier cannot miss (dark and bright images): all 20 bright samples
    are confident; with 20 failed draws beside them the fraction halves, KID stays over the 20."""
    from sample_quality import Judge

    torch.manual_seed(0)
    dark = torch.randint(0, 3, (100, 1, 2, 2))
    bright = torch.randint(13, 16, (100, 1, 2, 2))
    x, y = torch.cat([dark, bright]), torch.tensor([0] * 100 + [1] * 100)
    judge = Judge(x, y, levels=16, seed=0, epochs=200)
    assert judge.accuracy(x, y) == 1.0
    reference = judge.features(bright[:20])
    alone = judge.judge(bright[20:40], reference, subsets=2)
    assert alone["confident"] == 1.0 and alone["n"] == 20
    with_failed = judge.judge(bright[20:40], reference, subsets=2, failed=20)
    assert with_failed["confident"] == 0.5 and with_failed["n"] == 40
    assert with_failed["non_finite"] == 20 and with_failed["kid"] == alone["kid"]


def test_a_model_whose_every_draw_overflowed_gets_nan_not_a_traceback():
    from sample_quality import Judge

    torch.manual_seed(0)
    x = torch.randint(0, 16, (40, 1, 2, 2))
    judge = Judge(x, torch.arange(40) % 2, levels=16, seed=0, epochs=1)
    r = judge.judge(x[:0], judge.features(x[:20]), subsets=2, failed=30)
    assert math.isnan(r["kid"]) and math.isnan(r["confident"])
    assert r["n"] == 30 and r["non_finite"] == 30


@pytest.mark.parametrize(
    "flags, says", [(["--subsets", "1"], "--subsets"), (["--epochs", "0"], "--epochs")]
)
def test_flags_that_cannot_give_a_number_are_refused_first(flags, says):
    import subprocess

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "sample_quality.py"
    done = subprocess.run(
        [sys.executable, str(script), "--runs", "a=nowhere", *flags],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and says in done.stderr
    assert "Traceback" not in done.stderr


def test_quick_lowers_only_the_sizes_not_given():
    """``--quick --n-samples 500`` judged 60 samples: --quick overwrote the sizes given."""
    args = parse_args(parser(), ["--runs", "a=x", "--quick", "--n-samples", "500"])
    assert (args.n_samples, args.subsets, args.epochs) == (500, 3, 1)
    args = parse_args(parser(), ["--runs", "a=x", "--quick", "--epochs", "4", "--subsets", "5"])
    assert (args.n_samples, args.subsets, args.epochs) == (60, 5, 4)
    args = parse_args(parser(), ["--runs", "a=x", "--subsets", "4"])
    assert (args.n_samples, args.subsets, args.epochs) == (1000, 4, 12)


class _FakeRun:
    """A run as ``main`` sees it before judging: its data set, folder and test images."""

    def __init__(self, images):
        self.kind, self.dataset, self.data_dir, self.images = "fake", "digits", None, images

    def test_images(self, n_test):
        return self.images if n_test is None else self.images[:n_test]


class _Judged(Exception):
    """Raised where ``main`` goes on to read the reference images: the runs were accepted."""


def _main(monkeypatch, tmp_path, images, *flags):
    import sample_quality

    runs = {"a": _FakeRun(images[0]), "b": _FakeRun(images[1])}
    monkeypatch.setattr(sample_quality, "Sampler", lambda path: runs[str(path)])

    def load_dataset(*args, **kwargs):
        raise _Judged

    monkeypatch.setattr(sample_quality, "load_dataset", load_dataset)
    argv = ["sample_quality.py", "--runs", "A=a", "B=b", "--out-dir", str(tmp_path), *flags]
    monkeypatch.setattr(sys, "argv", argv)
    sample_quality.main()


def test_runs_that_read_different_test_images_are_refused_before_the_judge(monkeypatch, tmp_path):
    """The judge's reference came from the first run's folder: a second run trained on another
    folder's files (here the same images in another order) was judged against images it never
    had, without a word. paired_bpd.py refused such runs; sample_quality.py now does too, with
    the same check, before the judge is fitted."""
    x = torch.arange(6).reshape(3, 1, 1, 2)
    with pytest.raises(SystemExit) as stop:
        _main(monkeypatch, tmp_path, [x, x.flip(0)])
    assert str(stop.value) == (
        "A and B read different test images (a and b name different data folders' files): "
        "their samples are judged against one set of test images; give runs of one data "
        "folder, or --data-dir to judge every run against that folder's"
    )
    with pytest.raises(_Judged):  # the same images: judged
        _main(monkeypatch, tmp_path, [x, x.clone()])
    with pytest.raises(_Judged):  # --data-dir names the one reference for all
        _main(monkeypatch, tmp_path, [x, x.flip(0)], "--data-dir", str(tmp_path))
