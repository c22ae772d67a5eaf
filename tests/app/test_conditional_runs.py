"""Conditional runs end to end (tiny): ``train --data --context``, the conditional toys with
their per-context gap to the truth, ``sample --context``, and ``score`` against ``evaluate``."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import iresnet
from iresnet.app.cli import main
from iresnet.app.runs import load_run
from iresnet.datasets import load_dataset
from iresnet.datasets.conditional import (
    conditional_log_density,
    conditional_toy_split,
    sample_conditional,
)
from tests.helpers import TINY_RUN, assert_figures_named

TINY = [*TINY_RUN, "--no-progress"]


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(err: str, message: str) -> None:
    lines = [line for line in err.splitlines() if line.startswith("iresnet")]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in err, err


# --------------------------------------------------------------------------- conditional toys
@pytest.mark.parametrize("name", ["rotated-8gaussians", "moving-gaussian"])
def test_conditional_toy_truth_is_a_normalised_density_of_its_samples(name):
    """The closed form integrates to 1 at a fixed context (a grid sum) and its samples have
    the entropy the density says (Monte Carlo, 4 SE)."""
    log_p = conditional_log_density(name)
    c0 = 0.3
    grid = torch.linspace(-6, 6, 601, dtype=torch.float64)
    xx, yy = torch.meshgrid(grid, grid, indexing="ij")
    pts = torch.stack([xx.flatten(), yy.flatten()], 1)
    cell = float(grid[1] - grid[0]) ** 2
    mass = float(log_p(pts, torch.full((pts.shape[0], 1), c0, dtype=torch.float64)).exp().sum())
    assert mass * cell == pytest.approx(1.0, abs=2e-3)
    # The samples at c0 follow the density: the mean of log p under the samples matches the
    # grid's -entropy.
    g = torch.Generator().manual_seed(0)
    x = sample_conditional(name, torch.full((20000, 1), c0, dtype=torch.float64), g)
    lp = log_p(x, torch.full((20000, 1), c0, dtype=torch.float64))
    dens = log_p(pts, torch.full((pts.shape[0], 1), c0, dtype=torch.float64)).exp()
    grid_mean = float((dens * torch.nan_to_num(dens.log(), neginf=0.0)).sum() * cell)
    se = float(lp.std()) / math.sqrt(lp.numel())
    assert abs(float(lp.mean()) - grid_mean) < 4 * se + 2e-3


def test_rotated_8gaussians_is_the_8gaussians_rotated():
    log_p = conditional_log_density("rotated-8gaussians")
    x = torch.randn(50, 2, dtype=torch.float64)
    theta = math.pi / 8
    rot = torch.tensor(
        [[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]],
        dtype=torch.float64,
    )
    base = load_dataset("8gaussians", n_train=2, n_test=2).true_log_density
    c = torch.full((50, 1), theta, dtype=torch.float64)
    torch.testing.assert_close(log_p(x @ rot.T, c), base(x), rtol=0, atol=1e-12)


def test_conditional_toy_splits_are_fixed_by_the_seed():
    a = conditional_toy_split("moving-gaussian", 20, 10, seed=4)
    b = conditional_toy_split("moving-gaussian", 50, 10, seed=4)
    assert torch.equal(a[2], b[2]) and torch.equal(a[3], b[3])  # the test set ignores n_train


def test_a_conditional_toy_run_reports_the_gap_per_context(tmp_path, capsys):
    out_dir = tmp_path / "r"
    code, out, err = run(
        capsys, "train", "toy-moving-gaussian", *TINY, "--steps", "10", "--out", str(out_dir)
    )
    assert code == 0, err
    assert_figures_named(out_dir)
    code, out, err = run(capsys, "evaluate", str(out_dir), "--json", "--n-inverse", "16")
    assert code == 0, err
    result = json.loads(out)
    rows = result["kl_per_context"]
    assert len(rows) == 8 and all(r["kl_se"] > 0 for r in rows)
    assert result["kl_mean_over_contexts"] == pytest.approx(np.mean([r["kl"] for r in rows]))
    assert result["entropy_gap"] is not None and result["invertible"]
    # E_c H(x | c) on the test pairs (it was None): each p(. | c) is a Gaussian with standard
    # deviations 0.25 e^{c/2} and 0.25 e^{-c/2}, so H = 1 + log(2 pi) + 2 log 0.25 for every c.
    exact = 1 + math.log(2 * math.pi) + 2 * math.log(0.25)
    assert abs(result["true_entropy"] - exact) < 4 * result["true_entropy_se"]
    assert all(b["conditional"] for b in result["certificate"]["blocks"])
    code, out, err = run(capsys, "evaluate", str(out_dir), "--n-inverse", "16")
    assert code == 0 and "true_entropy" in out and "None" not in out  # no row for what is not
    saved = json.loads((out_dir / "data.json").read_text())
    assert saved["context_dim"] == 1 and "context_standardizer" in saved


# ------------------------------------------------------------------- user data with contexts
def _user_data(tmp_path, n=300):
    rng = np.random.default_rng(0)
    c = rng.uniform(-1, 1, size=(n, 2))
    x = np.stack([c[:, 0] + 0.1 * rng.normal(size=n), c[:, 1] * rng.normal(size=n)], 1)
    np.savetxt(tmp_path / "x.csv", 10.0 + 3.0 * x, delimiter=",")
    np.save(tmp_path / "c.npy", 100.0 * c)
    return tmp_path / "x.csv", tmp_path / "c.npy"


def _train_with_contexts(tmp_path, capsys, steps: int):
    """A tiny conditional run on the user files of ``_user_data``: (data, contexts, run)."""
    x_path, c_path = _user_data(tmp_path)
    out_dir = tmp_path / "run"
    argv = ["--data", str(x_path), "--context", str(c_path), *TINY, "--steps", str(steps)]
    code, _, err = run(capsys, "train", *argv, "--out", str(out_dir))
    assert code == 0, err
    return x_path, c_path, out_dir


def test_train_with_contexts_then_score_agrees_with_evaluate(tmp_path, capsys):
    x_path, c_path, out_dir = _train_with_contexts(tmp_path, capsys, 10)
    saved = json.loads((out_dir / "data.json").read_text())
    assert saved["context_dim"] == 2
    assert_figures_named(out_dir)
    assert saved["context_standardizer"]["std"][0] > 10  # standardised like the data
    # score the run's own test split: the same points evaluate reports on
    trained = load_run(out_dir)
    np.save(tmp_path / "tx.npy", trained.data.test_x.numpy())
    np.savetxt(tmp_path / "tc.csv", trained.data.test_c.numpy(), delimiter=",")

    def score(out: str, *flags: str) -> tuple[int, str, str]:
        inputs = ["--data", str(tmp_path / "tx.npy"), "--context", str(tmp_path / "tc.csv")]
        return run(capsys, "score", str(out_dir), *inputs, "--out", str(tmp_path / out), *flags)

    code, out, err = score("logp.csv")
    assert code == 0, err and "exact" in out
    table = np.loadtxt(tmp_path / "logp.csv", delimiter=",", skiprows=1)
    assert (tmp_path / "logp.csv").read_text().splitlines()[0] == "log_prob"
    code, out, err = run(capsys, "evaluate", str(out_dir), "--json", "--n-inverse", "8")
    result = json.loads(out)
    assert result["n_test"] == table.shape[0]
    assert -table.mean() == pytest.approx(result["test_nll"], rel=1e-12)  # the same numbers
    # .npy output too; the contexts matter: other contexts give other densities
    code, out, err = score("logp.npy")
    assert code == 0
    np.testing.assert_allclose(np.load(tmp_path / "logp.npy")[:, 0], table)
    # an exact log-det is evaluated once: one repeat is enough, none is not
    code, out, err = score("logp.npy", "--repeats", "1", "--overwrite")
    assert code == 0, err
    np.testing.assert_allclose(np.load(tmp_path / "logp.npy")[:, 0], table)
    code, out, err = score("logp1.npy", "--repeats", "0")
    assert code == 2 and not (tmp_path / "logp1.npy").exists()
    _one_line_error(err, "--repeats must be >= 1")
    # sampling at a context, from the command line
    code, out, err = run(
        capsys,
        "sample",
        str(out_dir),
        "-n",
        "7",
        "--context",
        "10,-20;0,0",
        "--out",
        str(tmp_path / "s.npy"),
    )
    assert code == 0, err
    assert np.load(tmp_path / "s.npy").shape == (14, 2) and "2 contexts" in out
    # a picture of a conditional vector run: one histogram panel per context
    from iresnet.app import plots

    panels = []
    monkey = pytest.MonkeyPatch()
    monkey.setattr(plots, "plot_histograms", lambda sets, out, **kw: panels.extend(sets))
    try:
        argv = ["sample", str(out_dir), "-n", "7", "--context", "10,-20;0,0"]
        code, out, err = run(capsys, *argv, "--out", str(tmp_path / "s.png"))
    finally:
        monkey.undo()
    assert code == 0, err
    assert [tuple(p.shape) for p, _ in panels] == [(7, 2), (7, 2)]
    assert [t for _, t in panels] == ["c = 10, -20: 7 samples, T=1", "c = 0, 0: 7 samples, T=1"]


def test_sample_without_context_names_the_context_it_used(tmp_path, capsys):
    """A run on the user's contexts sampled without --context draws at the training contexts'
    mean: one note on stderr says so, with the values and how to pass a context (a user try-out:
    it was silent). With --context, no note."""
    _, _, out_dir = _train_with_contexts(tmp_path, capsys, 2)
    mean = load_run(out_dir).data.train_c.numpy().mean(0)
    code, out, err = run(
        capsys, "sample", str(out_dir), "-n", "3", "--out", str(tmp_path / "a.npy")
    )
    assert code == 0, err
    notes = [line for line in err.splitlines() if line.startswith("iresnet")]
    assert notes == [
        "iresnet sample: note: no --context given, so the samples are at the training contexts' "
        f"mean ({mean[0]:.4g}, {mean[1]:.4g}); choose one with --context {mean[0]:.4g},"
        f"{mean[1]:.4g} (2 values; ';' between several contexts) or --context FILE.npy/.csv of "
        "rows"
    ]
    np.testing.assert_allclose(np.load(tmp_path / "a.contexts.npy"), np.tile(mean, (3, 1)))
    argv = ["sample", str(out_dir), "-n", "3", "--context", "1,2", "--out", str(tmp_path / "b.npy")]
    code, out, err = run(capsys, *argv)
    assert code == 0 and "note" not in err, err


def test_score_and_context_mistakes_are_one_line_errors(tmp_path, capsys):
    x_path, c_path, out_dir = _train_with_contexts(tmp_path, capsys, 5)
    np.save(tmp_path / "x3.npy", np.zeros((5, 3)))
    np.save(tmp_path / "x2.npy", np.zeros((5, 2)))
    np.save(tmp_path / "c5.npy", np.zeros((5, 2)))
    np.save(tmp_path / "c4.npy", np.zeros((4, 2)))
    np.save(tmp_path / "c1.npy", np.zeros((5, 1)))
    np.save(tmp_path / "c1row.npy", np.zeros((1, 2)))
    (tmp_path / "nan.csv").write_text("1,2\n3,nan\n")
    (tmp_path / "c.txt").write_text("1,2\n")
    logp = str(tmp_path / "o.csv")
    cases = [
        (["--data", str(tmp_path / "x3.npy"), "--context", str(tmp_path / "c5.npy")], "3 columns"),
        (["--data", str(tmp_path / "x2.npy")], "pass --context"),
        (
            ["--data", str(tmp_path / "x2.npy"), "--context", str(tmp_path / "c4.npy")],
            "4 context rows for 5 points",
        ),
        (  # counted in words: "1 context rows" was the message
            ["--data", str(tmp_path / "x2.npy"), "--context", str(tmp_path / "c1row.npy")],
            "1 context row for 5 points",
        ),
        (
            ["--data", str(tmp_path / "x2.npy"), "--context", str(tmp_path / "c1.npy")],
            "2 values per row",
        ),
        (["--data", str(tmp_path / "nan.csv"), "--context", str(tmp_path / "c5.npy")], "NaN"),
        (["--data", str(tmp_path / "x2.npy"), "--context", str(tmp_path / "c.txt")], "no such"),
    ]
    # broken context files (found by a try-out: tracebacks, or numpy's advice to unpickle)
    (tmp_path / "rnd.npy").write_bytes(bytes(range(50)))
    (tmp_path / "empty.npy").write_bytes(b"")
    (tmp_path / "empty.csv").write_bytes(b"")
    (tmp_path / "blank.csv").write_text("\n\n")
    (tmp_path / "png.csv").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    for name, message in [
        ("rnd.npy", "bad magic bytes"),
        ("empty.npy", "the file is empty"),
        ("png.csv", "not UTF-8 text"),
        ("obj.npy", "cannot load without pickle"),
        ("empty.csv", "file is empty"),  # it reached the sampler as zero contexts
        ("blank.csv", "zero data rows"),
    ]:
        cases.append(
            (["--data", str(tmp_path / "x2.npy"), "--context", str(tmp_path / name)], message)
        )
    for argv, message in cases:
        code, _, err = run(capsys, "score", str(out_dir), *argv, "--out", logp)
        assert code == 2
        _one_line_error(err, message)
    code, _, err = run(
        capsys, "score", str(out_dir), "--data", str(tmp_path / "x2.npy"), "--out", "o.txt"
    )
    assert code == 2
    _one_line_error(err, ".npy or .csv")
    # --context without --data, and to a toy preset
    code, _, err = run(capsys, "train", "--context", str(c_path), "--dry-run")
    assert code == 2
    _one_line_error(err, "pass --data")
    code, _, err = run(capsys, "train", "data.context_path=c.npy", "--dry-run")
    assert code == 2
    _one_line_error(err, "--data FILE")
    # mismatched rows at training time
    np.save(tmp_path / "short.npy", np.zeros((10, 1)))
    code, _, err = run(
        capsys,
        "train",
        "--data",
        str(x_path),
        "--context",
        str(tmp_path / "short.npy"),
        *TINY,
        "--steps",
        "2",
        "--out",
        str(tmp_path / "r2"),
    )
    assert code == 2
    _one_line_error(err, "row i of the contexts goes with row i")


def test_score_of_an_unconditional_run_refuses_contexts(tmp_path, capsys):
    out_dir = tmp_path / "u"
    code, _, err = run(capsys, "train", *TINY, "--steps", "3", "--out", str(out_dir))
    assert code == 0, err
    np.save(tmp_path / "x.npy", np.zeros((4, 2)))
    np.save(tmp_path / "c.npy", np.zeros((4, 1)))
    code, out, err = run(
        capsys,
        "score",
        str(out_dir),
        "--data",
        str(tmp_path / "x.npy"),
        "--out",
        str(tmp_path / "o.csv"),
        "--context",
        str(tmp_path / "c.npy"),
    )
    assert code == 2
    _one_line_error(err, "not conditional")
    code, out, err = run(
        capsys,
        "score",
        str(out_dir),
        "--data",
        str(tmp_path / "x.npy"),
        "--out",
        str(tmp_path / "o.csv"),
    )
    assert code == 0 and "exact" in out
    # One point is something to score (only training needs two rows).
    for name in ("one.npy", "one.csv"):
        if name.endswith(".npy"):
            np.save(tmp_path / name, np.array([[0.5, -0.25]]))
        else:
            (tmp_path / name).write_text("0.5,-0.25\n")
        code, out, err = run(
            capsys,
            "score",
            str(out_dir),
            "--data",
            str(tmp_path / name),
            "--out",
            str(tmp_path / f"{name}.scores.csv"),
        )
        assert code == 0, err
        assert len((tmp_path / f"{name}.scores.csv").read_text().splitlines()) == 2
        assert "scored 1 point:" in out
    # A file of another width, even wider than training data may be: the mismatch is named.
    for width in (3, 80):
        np.save(tmp_path / f"w{width}.npy", np.zeros((4, width)))
        wide = ["--data", str(tmp_path / f"w{width}.npy"), "--out", str(tmp_path / "w.csv")]
        code, out, err = run(capsys, "score", str(out_dir), *wide)
        assert code == 2
        _one_line_error(err, f"{width} columns, but the run models 2-dimensional points")
    code, out, err = run(capsys, "sample", str(out_dir), "--context", "1", "-n", "3")
    assert code == 2
    _one_line_error(err, "not conditional")


# ------------------------------------------------------------------ class-conditional images
def test_a_class_conditional_digits_run_samples_each_class_and_scores_in_bits(tmp_path, capsys):
    pytest.importorskip("sklearn")
    out_dir = tmp_path / "d"
    code, out, err = run(
        capsys,
        "train",
        "digits-conditional",
        "model.n_blocks=1",
        "model.hidden=8",
        "train.steps=4",
        "train.batch_size=32",
        "train.eval_every=4",
        "train.checkpoint_every=4",
        "train.eval_batches=1",
        "train.max_seconds=0",
        "--out",
        str(out_dir),
        "--no-progress",
    )
    assert code == 0, err
    assert (out_dir / "samples.png").is_file()
    assert_figures_named(out_dir)
    trained = load_run(out_dir)
    assert trained.model.context == 10
    assert all(b.conditional for b in iresnet.certify(trained.model).blocks)
    # the yardstick of p(x | y): per-class categoricals beside the unconditional ones (the
    # class-conditional run was set against the unconditional floor alone: try-out 17)
    ev = trained.task.full_evaluation(trained.model, n_inverse=4, n_test=64)
    assert ev["categorical_bpd_per_class"] < ev["categorical_bpd"]
    assert ev["categorical_bpd_per_class_se"] > 0
    # per class: n samples at each label
    code, out, err = run(
        capsys,
        "sample",
        str(out_dir),
        "-n",
        "2",
        "--context",
        "3;7",
        "--out",
        str(tmp_path / "s.npy"),
    )
    assert code == 0, err
    assert "each of 2 labels, in order: 3, 7)" in out  # the labels, not their one-hot rows
    assert np.load(tmp_path / "s.npy").shape == (4, 1, 8, 8)
    labels = np.load(tmp_path / "s.contexts.npy")  # each sample's class, as --context takes it
    assert labels.dtype == np.int64 and labels.tolist() == [[3], [3], [7], [7]]
    # The pair scores back as it was written: samples in [0, 1] are read as the levels they
    # fall in (floor(u K)), with their contexts.
    code, out, err = run(
        capsys,
        "score",
        str(out_dir),
        "--data",
        str(tmp_path / "s.npy"),
        "--context",
        str(tmp_path / "s.contexts.npy"),
        "--out",
        str(tmp_path / "s_scores.csv"),
    )
    assert code == 0, err
    scores = np.loadtxt(tmp_path / "s_scores.csv", delimiter=",", skiprows=1)
    assert scores.shape == (4, 4) and np.isfinite(scores).all()
    # The same samples as a .csv (x1..x64,label) score back at their own labels, to the same
    # numbers (try-out F8: image runs refused the .csv that `iresnet sample` wrote).
    csv_out = ["--out", str(tmp_path / "s.csv")]
    code, _, err = run(capsys, "sample", str(out_dir), "-n", "2", "--context", "3;7", *csv_out)
    assert code == 0, err
    back = ["--data", str(tmp_path / "s.csv"), "--out", str(tmp_path / "s_csv_scores.csv")]
    code, _, err = run(capsys, "score", str(out_dir), *back)
    assert code == 0, err
    again = np.loadtxt(tmp_path / "s_csv_scores.csv", delimiter=",", skiprows=1)
    np.testing.assert_array_equal(again, scores)
    np.save(tmp_path / "far.npy", np.load(tmp_path / "s.npy") * 3)  # floats beyond [0, 1]
    far = ["--data", str(tmp_path / "far.npy"), "--context", "3", "--out", str(tmp_path / "f.csv")]
    code, _, err = run(capsys, "score", str(out_dir), *far)
    assert code == 2
    _one_line_error(err, "floats in [0, 1]")
    code, _, err = run(capsys, "sample", str(out_dir), "-n", "2", "--context", "12")
    assert code == 2
    _one_line_error(err, "0..9")
    code, _, err = run(capsys, "sample", str(out_dir), "-n", "2", "--context", "3.5")
    assert code == 2
    _one_line_error(err, "class labels are integers 0..9, got 3.5")
    # a picture: one row per label, whatever the number of samples (40 filled 9-wide rows)
    from iresnet.app import plots

    grids = []
    monkey = pytest.MonkeyPatch()
    monkey.setattr(plots, "plot_image_grid", lambda imgs, out, **kw: grids.append((imgs, kw)))
    try:
        png = str(tmp_path / "big.png")
        code, _, err = run(
            capsys, "sample", str(out_dir), "-n", "40", "--context", "3;7", "--out", png
        )
    finally:
        monkey.undo()
    assert code == 0, err
    ((imgs, kw),) = grids
    assert kw["nrow"] == 32 and imgs.shape[0] == 64  # two rows of 32 of the 40 per label
    assert "rows: label 3, label 7" in kw["title"]
    # score a few test images with their labels: nats and bits/dim with per-point SEs
    x = trained.data.test_x[:6].numpy()
    np.save(tmp_path / "x.npy", x)
    np.savetxt(tmp_path / "y.csv", trained.data.test_y[:6].numpy()[:, None], delimiter=",")
    code, out, err = run(
        capsys,
        "score",
        str(out_dir),
        "--data",
        str(tmp_path / "x.npy"),
        "--context",
        str(tmp_path / "y.csv"),
        "--out",
        str(tmp_path / "o.csv"),
        "--repeats",
        "3",
    )
    assert code == 0, err
    one = ["--data", str(tmp_path / "x.npy"), "--context", str(tmp_path / "y.csv")]
    code, _, err = run(
        capsys, "score", str(out_dir), *one, "--out", str(tmp_path / "o1.csv"), "--repeats", "1"
    )
    assert code == 2 and not (tmp_path / "o1.csv").exists()
    _one_line_error(err, "--repeats must be >= 2")
    header = (tmp_path / "o.csv").read_text().splitlines()[0]
    assert header == "log_prob,log_prob_se,bpd,bpd_se"
    table = np.loadtxt(tmp_path / "o.csv", delimiter=",", skiprows=1)
    assert (table[:, 1] > 0).all()
    np.testing.assert_allclose(table[:, 2], -table[:, 0] / (64 * math.log(2)))  # level units
    np.testing.assert_allclose(table[:, 3], table[:, 1] / (64 * math.log(2)))
    for name, content, message in [
        ("rnd.npy", bytes(range(50)), "bad magic bytes"),
        ("empty.npy", b"", "the file is empty"),
    ]:
        (tmp_path / name).write_bytes(content)
        argv = ["--data", str(tmp_path / name), "--context", str(tmp_path / "y.csv")]
        code, _, err = run(capsys, "score", str(out_dir), *argv, "--out", str(tmp_path / "b.csv"))
        assert code == 2 and not (tmp_path / "b.csv").exists()
        _one_line_error(err, message)
    np.save(tmp_path / "bad.npy", (x + 20).astype(np.int64))
    code, _, err = run(
        capsys,
        "score",
        str(out_dir),
        "--data",
        str(tmp_path / "bad.npy"),
        "--context",
        str(tmp_path / "y.csv"),
        "--out",
        str(tmp_path / "o2.csv"),
    )
    assert code == 2
    _one_line_error(err, "levels must lie in 0..16")


def test_the_fashion_mnist_conditional_preset_builds_a_class_conditional_flow():
    """Without the data files: the preset on a stand-in bundle of Fashion-MNIST's shape."""
    from iresnet.app.builder import build_model
    from iresnet.app.presets import get_preset
    from iresnet.app.tasks import make_task
    from iresnet.datasets import DataBundle

    cfg = get_preset("fashion-mnist-conditional")
    assert cfg.data.class_context and cfg.data.name == "fashion-mnist"
    images = torch.randint(0, 256, (12, 1, 28, 28), dtype=torch.uint8)
    labels = torch.arange(12) % 10
    data = DataBundle(
        "fashion-mnist",
        "image",
        images,
        images,
        labels,
        labels,
        n_levels=256,
        class_context=True,
    )
    model = build_model(cfg, data)
    task = make_task(cfg, data, torch.device("cpu"))
    x, c = task.batch("train", torch.arange(3))
    assert c.shape == (3, 10) and torch.equal(c.argmax(1), labels[:3])
    assert model.log_prob(x, c).shape == (3,)  # (the convolutions learn their input size)
    cert = iresnet.certify(model.eval())
    assert model.context == 10 and cert.invertible
    assert all(b.conditional for b in cert.blocks)
