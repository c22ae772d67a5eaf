"""``benchmarks/images.py`` flags that would otherwise be ignored without a word."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import pytest  # noqa: E402
from images import (  # noqa: E402
    against,
    parse_budgets,
    peer_kw_problem,
    prior_run,
    report,
    variant_problem,
    variants,
)


def test_peer_sizes_must_be_keyed_by_a_peer_that_is_trained():
    peers = ["realnvp", "glow"]
    assert peer_kw_problem(None, peers) is None
    assert peer_kw_problem({"realnvp": {"transforms": 4}}, peers) is None
    unkeyed = peer_kw_problem({"transforms": 4, "hidden_features": [64, 64]}, peers)
    assert unkeyed is not None and "keyed by peer" in unkeyed
    assert "keyed by peer" in peer_kw_problem([1, 2], peers)
    misspelt = peer_kw_problem({"realnpv": {"transforms": 4}}, peers)
    assert misspelt is not None and "realnpv" in misspelt
    # a peer left out of --peers: its sizes would be unused
    assert "glow" in peer_kw_problem({"glow": {"blocks": 4}}, ["realnvp"])


def test_variants_by_name_pick_a_subset_and_a_misspelt_name_is_refused():
    assert list(variants("fashion-mnist")) == [
        "Residual Flow",
        "Residual Flow + var. deq.",
        "i-DenseNet",
        "i-DenseNet + var. deq.",
    ]
    assert list(variants("fashion-mnist", [])) == list(variants("fashion-mnist"))
    picked = variants("fashion-mnist", ["i-densenet", "residual-flow"])
    assert list(picked) == ["Residual Flow", "i-DenseNet"]  # the table's order, not the flag's
    assert picked["i-DenseNet"] == variants("fashion-mnist")["i-DenseNet"]
    assert variant_problem(None) is None and variant_problem(["i-densenet-var-deq"]) is None
    problem = variant_problem(["idensenet"])
    assert problem is not None and "idensenet" in problem and "i-densenet" in problem


def _result(bpd: float, **extra: object) -> dict:
    ours = {
        "test_bpd": bpd,
        "test_bpd_se": 0.01,
        "estimator": "roulette",
        "steps": 10,
        "train_seconds": 5.0,
        "cpu_share": 1.0,
        "params": 1000,
        "max_lipschitz": 0.9,
        "inverse_max_error": 1e-6,
        "invertible": True,
        "categorical_bpd": 4.5,
        "categorical_bpd_se": 0.02,
    }
    return ours | extra


def test_a_report_without_the_residual_flow_compares_against_the_first_variant():
    """The variational half of the 60-minute run trains no plain Residual Flow: its report
    crashed (KeyError) after three CPU-hours of training."""
    results = {
        "i-DenseNet + var. deq.": _result(
            3.9, dequantization="variational", test_bpd_uniform=4.0, test_bpd_uniform_se=0.01
        ),
        "zuko RealNVP": _result(3.8),
    }
    table, lines = report("fashion-mnist", results, 3600.0)
    assert "i-DenseNet + var. deq." in table and "zuko RealNVP" in table
    assert "zuko RealNVP - i-DenseNet + var. deq. = -0.1000" in lines
    assert against(results) == "Against i-DenseNet + var. deq."
    assert against({"Residual Flow": _result(3.9)}) == "Against the Residual Flow preset"


def test_ours_from_finds_a_plain_or_a_variants_run_and_refuses_a_missing_one(tmp_path):
    """A plain run keeps the preset in ``ours/``, a ``--variants`` run in ``residual-flow/``;
    a path with neither is one line, before any training (it was a traceback after it)."""
    plain, variant = tmp_path / "plain", tmp_path / "variants"
    (plain / "digits" / "ours").mkdir(parents=True)
    (plain / "digits" / "ours" / "ours.json").write_text("{}")
    (variant / "digits" / "residual-flow").mkdir(parents=True)
    (variant / "digits" / "residual-flow" / "ours.json").write_text("{}")
    assert prior_run(plain, "digits") == plain / "digits" / "ours"
    assert prior_run(variant, "digits") == variant / "digits" / "residual-flow"
    with pytest.raises(SystemExit) as stop:
        prior_run(tmp_path / "nowhere", "digits")
    assert "--ours-from" in str(stop.value) and "finished" in str(stop.value)
    with pytest.raises(SystemExit):
        prior_run(plain, "fashion-mnist")  # finished for another data set only


def test_the_peers_train_with_the_data_settings_given_to_ours():
    """A logit margin given to ours by --ours-override reached ours alone: the peers kept the
    preset's, and the comparison favoured ours. The data.* overrides now reach every model, and
    a reused run of ours with other data settings is refused."""
    import argparse

    from images import data_overrides, peer_spec, reuse_problem, spec_config

    assert data_overrides(["train.compile=true", "data.logit_alpha=0.01"]) == [
        "data.logit_alpha=0.01"
    ]
    # the short form the config takes reached ours but not the peers
    assert data_overrides(["logit_alpha=0.01", "hidden=8"]) == ["logit_alpha=0.01"]
    args = argparse.Namespace(ours_override=["data.logit_alpha=0.01"], peer_kw=None)
    spec = peer_spec("glow", args) | {"dataset": "digits", "data_dir": None, "seed": 0}
    cfg = spec_config(spec)  # what the peer's worker trains with
    assert cfg.data.logit_alpha == 0.01
    plain = argparse.Namespace(data_dir=None, seed=0, ours_override=[], peer_kw=None)
    assert "data_override" not in peer_spec("glow", plain)  # old work dirs' spec.json resume
    same = {"config": cfg.to_dict() | {"data": cfg.to_dict()["data"] | {"data_dir": "/elsewhere"}}}
    assert reuse_problem(same, cfg, Path("w")) is None  # where the files are: no matter
    other = {"config": cfg.to_dict() | {"data": cfg.to_dict()["data"] | {"logit_alpha": 0.05}}}
    problem = reuse_problem(other, cfg, Path("w"))
    assert problem is not None and "data.logit_alpha=0.05 there, 0.01 here" in problem


def test_ours_from_refuses_overrides_that_cannot_reach_the_reused_run():
    """`--ours-from W --peers --ours-override data.logit_alpha=0.05` exited 0 and reported the
    reused 1e-6 run under the 0.05 override."""
    from images import preset_config, reuse_problem

    base = preset_config("digits", None, 0)
    reused = {"config": base.to_dict()}
    assert reuse_problem(reused, base, Path("w")) is None
    asked = base.override(["data.logit_alpha=0.01", "model.coeff=0.9"])
    problem = reuse_problem(reused, asked, Path("w"))
    assert problem is not None and "data.logit_alpha" in problem and "model.coeff" in problem
    assert reuse_problem(reused, base.override(["train.compile=true"]), Path("w")) is None


def test_a_fresh_run_into_a_work_dir_that_holds_one_is_refused_before_writing(tmp_path):
    """Rerun without --resume into the same --work-dir: the spec.json files were rewritten
    with the new settings before the worker crashed on the old run, and a later --resume then
    reported the old numbers under the new settings."""
    from images import spec_problem, write_spec

    spec = {"who": "glow", "dataset": "digits", "out": str(tmp_path / "g"), "seed": 0}
    assert spec_problem(spec, tmp_path / "g", resume=False) is None  # a fresh folder
    write_spec(spec, tmp_path / "g")
    problem = spec_problem(spec | {"seed": 1}, tmp_path / "g", resume=False)
    assert problem is not None and "--resume" in problem and "another --work-dir" in problem
    assert spec_problem(spec, tmp_path / "g", resume=True) is None


def test_budgets_are_positive_seconds_of_a_data_set_that_is_trained():
    """``--budget digits=0`` and ``-5`` gave a worker's traceback, ``abc`` a float() traceback,
    and ``fashion-mnist=10`` with ``--datasets digits`` was ignored without a word."""
    assert parse_budgets([], ["digits"], quick=False)["digits"] == 600.0
    assert parse_budgets(["digits=90"], ["digits"], quick=True) == {
        "digits": 90.0,
        "fashion-mnist": 20.0,
    }
    for bad in ("digits=0", "digits=-5", "digits=abc", "digits=nan", "digits=inf"):
        with pytest.raises(ValueError, match="positive number of CPU seconds"):
            parse_budgets([bad], ["digits"], quick=False)
    with pytest.raises(ValueError, match="not among --datasets"):
        parse_budgets(["fashion-mnist=10"], ["digits"], quick=False)
    with pytest.raises(ValueError, match="DATA=SECONDS"):
        parse_budgets(["cifar=10"], ["digits"], quick=False)


def _refusal(argv: list[str], tmp_path: Path) -> str:
    script = Path(__file__).parents[2] / "benchmarks" / "images.py"
    done = subprocess.run(
        [sys.executable, str(script), "--quick", "--datasets", "digits", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ | {"PYTHONPATH": os.pathsep.join(sys.path)},
        cwd=tmp_path,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    return done.stderr


@pytest.mark.parametrize(
    "argv, says",
    [
        (["--n-test", "1"], "--n-test must be >= 2"),
        (["--ours-override", "model.nope=1", "--peers"], "unknown config key 'model.nope'"),
        (["--peer-kw", '{"glow": {"nope": 1}}', "--peers", "glow"], "cannot be built"),
        (["--ours-override", "train.batch_size=5000", "--peers"], "exceeds the 1438 training"),
        (["--ours-override", "data.train_subset=5000", "--peers"], "data.train_subset=5000"),
    ],
)
def test_a_model_that_cannot_start_is_refused_before_any_trains(argv, says, tmp_path):
    """A misspelt override or peer size failed in its worker, after the other models had
    trained their whole budget, and left a work dir that neither a rerun nor --resume took."""
    work = tmp_path / "work"
    stderr = _refusal([*argv, "--work-dir", str(work), "--out-dir", str(tmp_path)], tmp_path)
    assert says in stderr
    assert not work.exists()


def test_a_work_dir_that_is_a_file_is_refused_as_it_is_parsed(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("kept")
    assert "is a file" in _refusal(["--peers", "--work-dir", str(afile)], tmp_path)
    assert afile.read_text() == "kept"


def test_a_peer_size_that_builds_but_cannot_train_is_refused_before_any_trains(tmp_path):
    """``{"glow": {"levels": 0}}`` built a Glow with no parameters: it died at its first step
    while ours trained its whole budget."""
    pytest.importorskip("normflows")
    work = tmp_path / "work"
    argv = ["--peer-kw", '{"glow": {"levels": 0}}', "--peers", "glow", "--work-dir", str(work)]
    stderr = _refusal([*argv, "--out-dir", str(tmp_path)], tmp_path)
    assert "Glow" in stderr and not work.exists()


def test_a_budget_that_ended_before_a_timed_step_says_so_not_nan():
    """``--budget digits=0.3`` printed "nan ms | nan" for ours, which stopped at step 2 before
    its first logged training row (its CPU time at a step is read from those rows), and "0.0
    ms" for a peer with no step. Such cells are "-", with one line under the table that says
    why and what to do; the others are as before."""
    results = {
        "Residual Flow": _result(3.9, steps=2, train_seconds=None),
        "zuko RealNVP": _result(3.8, steps=0, train_seconds=0.0),
        "normflows Glow": _result(3.7, steps=4, train_seconds="nan"),  # as a results file holds
        "i-DenseNet": _result(3.6, steps=10, train_seconds=0.25),
    }
    table, lines = report("digits", results, 0.3)
    rows = {row.split(" | ")[0].lstrip("| "): row.split(" | ") for row in table.splitlines()}
    assert rows["Residual Flow"][5:7] == ["-", "-"]
    assert rows["zuko RealNVP"][5:7] == ["-", "-"]
    assert rows["i-DenseNet"][5:7] == ["25.0 ms", "0.25"]
    assert "nan" not in table.lower()
    assert table.split("\n\n")[1].splitlines() == [
        "- Residual Flow: it stopped at step 2 before its first logged training row (one every "
        "train.log_every steps), so its CPU time per step is not known; give a larger --budget",
        "- zuko RealNVP: no training step finished, so its CPU time per step is not known; give "
        "a larger --budget",
        "- normflows Glow: it stopped at step 4 before its first logged training row (one every "
        "train.log_every steps), so its CPU time per step is not known; give a larger --budget",
    ]
    assert "- digits, 0.3 CPU s: zuko RealNVP - Residual Flow" in lines
