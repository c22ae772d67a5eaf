"""Classifier and hybrid training through the one loop, evaluation, and the coefficient sweep."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import iresnet
from iresnet.app.builder import build_model, load_data
from iresnet.app.config import Config
from iresnet.app.presets import get_preset
from iresnet.app.runs import load_run
from iresnet.app.sweep import run_sweep, sweep_table
from iresnet.app.tasks import ClassificationTask, HybridTask, make_task
from iresnet.app.tasks.classification import augment
from iresnet.app.training import train
from iresnet.errors import ConfigError
from tests.helpers import assert_figures_named

pytest.importorskip("sklearn")

TINY = [
    "model.n_scales=2",
    "model.n_blocks=1",
    "model.hidden=8",
    "train.batch_size=32",
    "train.steps=40",
    "train.eval_every=40",
    "train.checkpoint_every=40",
    "train.log_every=10",
    "train.warmup_steps=5",
    "train.eval_batches=1",
    "train.lr=3e-3",
    "train.ema_decay=0",
]


def tiny(*extra: str, preset: str = "digits-classifier") -> Config:
    return get_preset(preset).override([*TINY, *extra])


def test_trained_constrained_classifier_inverts_its_features(tmp_path):
    result = train(tiny(), tmp_path / "run", progress=False)
    run = tmp_path / "run"
    for name in (
        "model.safetensors",
        "learning_curve.png",
        "error_curve.png",
        "reconstructions.png",
    ):
        assert (run / name).is_file(), name
    assert_figures_named(run)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"loss", "acc", "grad_norm"} <= set(next(r for r in rows if "acc" in r))
    assert {"test_error", "test_loss"} <= set(result.last_metrics)
    trained = load_run(run)
    ev = trained.task.full_evaluation(trained.model, n_inverse=64)
    assert ev["test_error"] < 0.9 and ev["n_test"] == 359  # better than chance after 40 steps
    # its standard error over the test images: the binomial one, sqrt(e (1 - e) / (n - 1))
    e = ev["test_error"]
    assert ev["test_error_se"] == pytest.approx(math.sqrt(e * (1 - e) / 358), rel=1e-9)
    assert ev["test_loss_se"] > 0
    losses = [r["loss"] for r in rows if "acc" in r]
    assert losses[-1] < losses[0]
    assert ev["invertible"] and ev["max_lipschitz"] < 1
    assert ev["feature_inverse_max_error"] <= 1e-4 and ev["inverse_converged"]
    assert "note" not in ev and ev["certificate"]["invertible"]
    json.dumps(ev)  # what `iresnet evaluate --json` prints
    # Without its data (certify, sample, score read none): the run still loads and certifies
    # (empty labels stand for the labels; it refused "needs a labelled image data set").
    bare = load_run(run, data=False)
    assert bare.data.train_x.numel() == 0 and bare.data.train_y.numel() == 0
    assert iresnet.certify(bare.model).invertible


def test_vanilla_evaluation_reports_a_failed_inverse_without_raising():
    cfg = tiny("model.constrained=false", "model.inverse_max_iter=20")
    data = load_data(cfg.data)
    model = build_model(cfg, data)
    task = make_task(cfg, data, torch.device("cpu"))
    assert type(task) is ClassificationTask
    with torch.no_grad():
        model.train()
        task.loss(model, task.batch("train", torch.arange(32)))
        for m in model.modules():  # Lip(g) >> 1: the fixed-point iteration must diverge
            if isinstance(m, torch.nn.Conv2d):
                m.weight.mul_(20.0)
    ev = task.full_evaluation(model, n_inverse=16)
    assert not ev["invertible"] and ev["max_lipschitz"] > 1
    assert "no inverse is guaranteed" in ev["note"]
    assert not ev["inverse_converged"] and ev["inverse_warnings"] > 0
    err = ev["feature_inverse_max_error"]
    assert err is None or err > 1e-2
    with pytest.raises(ConfigError, match="nothing to sample"):
        task.sample(model, 4)


def test_hybrid_trains_and_reports_bpd_and_error(tmp_path):
    cfg = tiny(
        "model.kind=hybrid",
        "model.logdet=exact",
        "data.logit_alpha=0.05",
        "train.steps=10",
        "train.eval_every=10",
        "train.checkpoint_every=10",
    )
    result = train(cfg, tmp_path / "hybrid", progress=False)
    assert {"test_bpd", "test_error"} <= set(result.last_metrics)
    lines = (tmp_path / "hybrid" / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert {"loss", "ce", "bpd", "acc"} <= set(next(r for r in rows if "bpd" in r))
    trained = load_run(tmp_path / "hybrid")
    assert isinstance(trained.task, HybridTask)
    torch.manual_seed(5)  # the dequantisation noise the periodic evaluation below shares
    ev = trained.task.full_evaluation(trained.model, n_inverse=16)
    # Better than the uniform density on the cube (log2 17 bits/dim for digits), and a test
    # error below chance (90%).
    assert ev["estimator"] == "exact" and ev["test_bpd"] + 4 * ev["test_bpd_se"] < math.log2(17)
    # its density's yardstick, as image flows report it (a hybrid had none: try-out 17)
    assert 0 < ev["categorical_bpd"] < math.log2(17) and ev["categorical_bpd_se"] > 0
    assert 0 <= ev["test_error"] < 0.9
    assert ev["feature_inverse_max_error"] <= 1e-4
    # The periodic evaluation scores the density as `evaluate` does (exact at D = 64), not
    # with a cheap estimator the blocks might train with (a one-term series, biased).
    with iresnet.swap_logdets(trained.model, iresnet.PowerSeriesLogDet(n_terms=1)):
        torch.manual_seed(5)
        periodic = trained.task.evaluate(trained.model)
        torch.manual_seed(5)
        given = trained.task.evaluate(trained.model, estimator=iresnet.PowerSeriesLogDet(n_terms=1))
    assert periodic["test_bpd"] == pytest.approx(ev["test_bpd"], abs=1e-5)
    assert abs(given["test_bpd"] - ev["test_bpd"]) > 1e-4  # an estimator given is the one used
    samples, diagnostics = trained.task.sample(trained.model, 4)
    assert (
        len(diagnostics) == 2
        and samples.shape == (4, 1, 8, 8)
        and 0 <= samples.min()
        and samples.max() <= 1
    )
    # `iresnet sample` and `certify` load the hybrid without its data
    bare = load_run(tmp_path / "hybrid", data=False)
    assert bare.task.sample(bare.model, 2)[0].shape == (2, 1, 8, 8)
    assert iresnet.certify(bare.model).invertible


def test_sweep_writes_its_table(tmp_path, capsys):
    rows = run_sweep(
        "digits-classifier",
        ["vanilla", 0.5],
        tmp_path / "sweep",
        steps=8,
        overrides=["train.eval_every=8", "train.checkpoint_every=8", *TINY[:4]],
        n_inverse=16,
        command="iresnet sweep digits-classifier",
    )
    assert [r["coeff"] for r in rows] == ["vanilla", 0.5]
    assert rows[1]["invertible"] and not rows[0]["invertible"]
    assert rows[1]["max_lipschitz"] <= 0.5**3 * 1.01 and rows[1]["feature_inverse_max_error"] < 1e-4
    table = (tmp_path / "sweep" / "sweep.md").read_text()
    assert "| vanilla |" in table and "| 0.5 |" in table and "guaranteed inverse" in table
    assert table.count("\n| ") == 3  # header and two rows
    assert json.loads((tmp_path / "sweep" / "sweep.json").read_text())["rows"][1]["coeff"] == 0.5
    assert (tmp_path / "sweep" / "sweep.png").is_file()
    assert sweep_table(rows) in table
    # What it says as it goes is the table's figure (it said the process's time, 3 s, beside 0)
    said = capsys.readouterr().err
    assert f"sweep c0.5: trained 8 steps in {rows[1]['train_seconds']:.1f} s" in said
    with pytest.raises(ConfigError):
        run_sweep("digits-classifier", ["1.5"], tmp_path / "bad")


def test_classification_needs_labelled_images():
    cfg = Config().override(["model.kind=classifier", "data.n_train=64", "data.n_test=64"])
    with pytest.raises(ConfigError, match="labelled image"):
        make_task(cfg, load_data(cfg.data), torch.device("cpu"))


def test_augmentation_translates_and_keeps_shape():
    x = torch.zeros(64, 1, 8, 8)
    x[:, :, 3:5, 3:5] = 1.0
    y = augment(x, flip=False)
    assert y.shape == x.shape and torch.all(y.sum((1, 2, 3)) == 4)  # 1-pixel shifts keep the blob
    assert not torch.equal(y, x)


def test_train_augment_changes_training_batches_only():
    """``train.augment`` is a real config field: the training inputs move, the test inputs and
    the default (off) stay the images themselves."""
    cfg = tiny("train.augment=true")
    data = load_data(cfg.data)
    model = build_model(cfg, data)
    task = make_task(cfg, data, torch.device("cpu"))
    x, _ = task.batch("train", torch.arange(64))
    plain = x.float() / 16
    torch.manual_seed(0)
    assert not torch.equal(task.inputs(model, x, train=True), plain)
    assert torch.equal(task.inputs(model, x), plain)
    off = make_task(tiny(), data, torch.device("cpu"))
    assert torch.equal(off.inputs(model, x, train=True), plain)


def test_hybrid_augmentation_moves_whole_levels():
    cfg = tiny("model.kind=hybrid", "model.logdet=exact", "train.augment=true")
    data = load_data(cfg.data)
    task = make_task(cfg, data, torch.device("cpu"))
    model = build_model(cfg, data)
    x, y = task.batch("train", torch.arange(16))
    seen = []
    model.trunk[0].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    with torch.no_grad():
        loss, metrics = task.loss(model.train(), (x, y))
    assert torch.isfinite(loss) and {"bpd", "ce"} <= set(metrics)
    moved = seen[0]
    assert torch.equal(moved, moved.round()) and moved.shape == x.shape  # whole levels
    assert not torch.equal(moved, x.to(moved.dtype))  # and moved


def test_score_gives_a_hybrids_density_and_refuses_a_classifier_by_its_command(tmp_path, capsys):
    """A hybrid has a density (``evaluate`` reports its ``test_bpd``): ``iresnet score`` gives
    each image's ``log p`` and bits/dim, the model's own ``log_prob`` under the same noise (it
    refused: "score and conditional sampling need a density run"). A plain classifier is
    refused by a message that names the command used, not "conditional sampling"."""
    from iresnet.app.cli import main
    from iresnet.app.scoring import score_file
    from iresnet.transforms import bits_per_dim

    cfg = tiny("model.kind=hybrid", "model.logdet=exact", "train.steps=2", "train.eval_every=2")
    train(cfg.override(["train.checkpoint_every=2"]), tmp_path / "hybrid", progress=False)
    images = np.random.default_rng(0).integers(0, 17, size=(3, 1, 8, 8))
    np.save(tmp_path / "img.npy", images)
    bare = load_run(tmp_path / "hybrid", data=False)
    torch.manual_seed(5)
    result = score_file(bare.task, bare.model, tmp_path / "img.npy", repeats=2)
    assert (
        result.estimator
        == "exact + uniform dequantisation (estimates of E_u log p(x + u), a lower bound of "
        "log P(x))"
    )
    x = torch.as_tensor(images)
    torch.manual_seed(5)
    with torch.no_grad():
        bare.model.eval()
        own = torch.stack([bare.model.log_prob(x) for _ in range(2)]).double().mean(0)
    np.testing.assert_allclose(result.columns["log_prob"], own.numpy(), rtol=1e-6)
    np.testing.assert_allclose(result.columns["bpd"], bits_per_dim(own, 64).numpy(), rtol=1e-6)
    assert result.columns["bpd_se"].shape == (3,)
    out = tmp_path / "s.csv"
    code = main(["score", str(tmp_path / "hybrid"), "--data", str(tmp_path / "img.npy"),
                 "--out", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert out.read_text().splitlines()[0] == "log_prob,log_prob_se,bpd,bpd_se"
    capsys.readouterr()
    missing = ["score", str(tmp_path / "hybrid"), "--data", str(tmp_path / "gone.npy")]
    assert main([*missing, "--out", str(tmp_path / "g.csv")]) == 2
    assert "gone.npy: no such file" in capsys.readouterr().err  # it described a shape

    train(tiny("train.steps=1", "train.eval_every=1", "train.checkpoint_every=1"),
          tmp_path / "cls", progress=False)  # fmt: skip
    capsys.readouterr()
    argv = ["score", str(tmp_path / "cls"), "--data", str(tmp_path / "img.npy")]
    assert main([*argv, "--out", str(tmp_path / "c.csv")]) == 2
    err = capsys.readouterr().err
    assert "score needs a run with a density" in err and "conditional sampling" not in err


@pytest.mark.parametrize(
    "coeffs,needle",
    [
        (["0.9", "0.9"], "--coeffs 0.9 twice"),
        (["vanilla", "0.9", "VANILLA"], "--coeffs vanilla twice"),
        (["0.9", "0.90"], "--coeffs 0.9 twice"),
        (["0.9", "0.9000001"], "0.9 and 0.9000001 share the run folder c0.9"),
    ],
)
def test_sweep_refuses_a_coefficient_given_twice(tmp_path, capsys, coeffs, needle):
    """``--coeffs 0.9 0.9`` trained and listed the same coefficient twice into one folder."""
    from iresnet.app.cli import main

    out = tmp_path / "sweep"
    assert main(["sweep", "digits-classifier", "--coeffs", *coeffs, "--out", str(out)]) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("iresnet")]
    assert len(lines) == 1 and needle in lines[0] and not out.exists(), lines


def test_a_hybrid_sweeps_table_shows_its_density():
    """A hybrid sweep's table left out its bits/dim (only ``sweep.json`` had ``test_bpd``);
    a classifier sweep's table has no such column."""
    row = {
        "coeff": 0.9,
        "test_error_pct": 8.5,
        "invertible": True,
        "feature_inverse_max_error": 1e-6,
        "inverse_converged": True,
        "max_lipschitz": 0.9,
        "steps": 2,
        "train_seconds": 1.0,
    }
    hybrid = sweep_table([{**row, "test_bpd": 3.8812}])
    assert "test bits/dim" in hybrid and "| 0.9 | 8.50 | 3.881 | yes |" in hybrid
    header, rule = hybrid.splitlines()[:2]
    assert header.count("|") == rule.count("|")
    plain = sweep_table([{**row, "test_bpd": None}])
    assert "bits/dim" not in plain and "| 0.9 | 8.50 | yes |" in plain
    with_se = sweep_table([{**row, "test_bpd": None, "test_error_pct_se": 1.47}])
    assert "| 0.9 | 8.50 ± 1.47 | yes |" in with_se and "test error (%) ± SE" in with_se
    # a hybrid's bits/dim with its SE; a vanilla one's is not a density's (try-out 10, F15)
    hybrid_se = sweep_table([{**row, "test_bpd": 3.8812, "test_bpd_se": 0.0043}])
    assert "| 0.9 | 8.50 | 3.881 ± 0.004 | yes |" in hybrid_se
    vanilla = sweep_table(
        [{**row, "coeff": "vanilla", "invertible": False, "test_bpd": 3.82, "test_bpd_se": 0.004}]
    )
    assert "| vanilla | 8.50 | 3.820 ± 0.004 (not a density) | no |" in vanilla


def test_a_vanilla_hybrids_bits_per_dim_is_flagged_as_no_density():
    """Its test_bpd is the change of variables of a map not known to be a bijection; the note
    spoke only of the inverse (try-out 10, F15)."""
    cfg = tiny("model.kind=hybrid", "model.constrained=false", "model.logdet=exact")
    data = load_data(cfg.data)
    model = build_model(cfg, data)
    task = make_task(cfg, data, torch.device("cpu"))
    with torch.no_grad():
        model.train()
        task.loss(model, task.batch("train", torch.arange(32)))  # ActNorm's first batch
    ev = task.full_evaluation(model, n_inverse=4, n_test=32)
    assert "test_bpd" in ev and "not the bits/dim of a density" in ev["note"]
    plain_cfg = tiny("model.constrained=false")  # a plain classifier: no density to flag
    plain = make_task(plain_cfg, data, torch.device("cpu"))
    note = plain.full_evaluation(build_model(plain_cfg, data), n_inverse=4, n_test=32)["note"]
    assert "no inverse is guaranteed" in note and "density" not in note


def test_a_hybrid_sweep_scores_as_evaluate_does(tmp_path, capsys):
    """The sweep evaluated unseeded, so its table disagreed with ``iresnet evaluate`` (seed 0)
    on the same weights by more than its SE (try-out 11, F5: dequantisation noise)."""
    from iresnet.app.cli import main

    rows = run_sweep(
        "digits-hybrid",
        [0.5],
        tmp_path / "sweep",
        steps=4,
        overrides=["train.eval_every=4", "train.checkpoint_every=4", *TINY[:4]],
        n_inverse=4,
    )
    capsys.readouterr()
    assert main(["evaluate", rows[0]["run_dir"], "--json", "--n-inverse", "4"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["test_error"] == rows[0]["test_error"] and ev["test_bpd"] == rows[0]["test_bpd"]


def test_a_quick_evaluation_reconstructs_no_more_than_it_tests():
    """``evaluate --n-test 10`` of a classifier reconstructed every test image (n_inverse 512
    regardless); by default the inverse check now takes at most the points tested, as a
    density run's now does too (it was capped only at the test set), and an explicit
    ``n_inverse`` is kept."""
    cfg = tiny()
    data = load_data(cfg.data)
    task = make_task(cfg, data, torch.device("cpu"))
    model = build_model(cfg, data).eval()
    assert task.full_evaluation(model, n_test=10)["n_inverse"] == 10
    assert task.full_evaluation(model, n_test=10, n_inverse=12)["n_inverse"] == 12
    toy = get_preset("toy-8gaussians").override(["model.n_blocks=1", "data.n_test=64"])
    toy_data = load_data(toy.data)
    density = make_task(toy, toy_data, torch.device("cpu"))
    assert density.full_evaluation(build_model(toy, toy_data), n_test=10)["n_inverse"] == 10
