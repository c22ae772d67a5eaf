"""The command line: one-line errors, the JSON contract, and the commands end to end (tiny)."""

import json
import math
import os
import re
import shutil
import warnings

import numpy as np
import pytest
import torch

from iresnet.app.cli import main
from iresnet.app.runs import load_run
from iresnet.certificate import Certificate
from iresnet.errors import ConfigError
from tests.helpers import TINY_RUN, assert_figures_named

TINY = TINY_RUN


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    "argv,message",
    [
        (["train", "no-such-preset"], "unknown preset 'no-such-preset'"),
        (["train", "toy-8gaussians", "model.nope=1"], "unknown config key 'model.nope'"),
        (["train", "toy-8gaussians", "model.coeff=abc"], "model.coeff must be float"),
        (["train", "toy-8gaussians", "model.coeff=1.5"], "model.coeff must lie in"),
        (["evaluate", "/nonexistent/run"], "/nonexistent/run: no such run folder"),
        # --data and an override of what it sets: the override won without a word
        (["train", "--data", "a.npy", "data.path=b.npy"], "data.path=b.npy: give one"),
        (["train", "--data", "a.npy", "path=b.npy"], "data.path=b.npy: give one"),
        (["train", "--data", "a.npy", "name=moons"], "data.name=moons data.path=a.npy"),
        # ... and so did the other flags' keys (try-out 8, F3), in either order
        (
            ["train", "digits", "--steps", "1", "steps=5"],
            "--steps 1 and the override train.steps=5",
        ),
        (["train", "digits", "train.steps=5", "--steps", "3"], "--steps 3 and the override"),
        (
            ["train", "digits", "--seed", "1", "train.seed=2"],
            "--seed 1 and the override train.seed",
        ),
        (["train", "--device", "cpu", "train.device=cuda"], "--device cpu and the override"),
        (["train", "--data-dir", "/a", "data.data_dir=/b"], "--data-dir /a and the override"),
        (["train", "--data-dir", "/a/", "data.data_dir=/a/b"], "data.data_dir=/a/b disagree"),
    ],
)
def test_bad_arguments_give_one_line_errors(capsys, argv, message):
    code, out, err = run(capsys, *argv, *(["--dry-run"] if argv[0] == "train" else []))
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("iresnet")]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in err


def test_overrides_that_agree_with_data_are_accepted(capsys, tmp_path, monkeypatch):
    """Only an override that says otherwise is refused (an agreeing one was, too)."""
    monkeypatch.chdir(tmp_path)
    np.save("a.npy", np.zeros((4, 2)))  # a dry run looks for the file too
    code, out, err = run(capsys, "train", "--data", "a.npy", "data.path=a.npy", "--dry-run")
    assert code == 0, err
    code, out, err = run(capsys, "train", "--data", "a.npy", "name=array", "--dry-run")
    assert code == 0, err


def test_bad_data_files_are_refused(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("1,2\n3,nan\n4,5\n")
    code, _, err = run(
        capsys, "train", "--data", str(bad), "--out", str(tmp_path / "r"), *TINY, "--steps", "2"
    )
    assert code == 2 and "bad.csv" in err and "NaN" in err
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_presets_and_help(capsys):
    code, out, _ = run(capsys, "presets")
    assert code == 0 and "toy-8gaussians" in out and "(default)" in out
    for cmd in ("train", "evaluate", "sample", "certify"):
        with pytest.raises(SystemExit) as exc:
            main([cmd, "--help"])
        assert exc.value.code == 0
        assert "--" in capsys.readouterr().out


def test_score_help_says_what_an_image_run_takes(capsys):
    """Try-out F8 (1, 4, 5): the help named only (N, C, H, W) integer levels in a .npy, while
    flattened rows, floats in [0, 1] (what `iresnet sample` writes) and sample's .csv are
    taken too."""
    with pytest.raises(SystemExit) as exc:
        main(["score", "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for form in (
        "a .npy of images (N, C, H, W) or flattened rows (N, C*H*W)",
        "a .csv of flattened rows (N, C*H*W) as `iresnet sample --out x.csv` writes them",
        "integer levels 0..K-1",
        "floats in [0, 1] as `iresnet sample` writes them",
        "header x1..xd,c1..ck, or x1..xd,label",
    ):
        assert form in text, form


def test_train_evaluate_sample_certify(tmp_path, capsys):
    out_dir = tmp_path / "run"
    code, out, err = run(
        capsys,
        "train",
        *TINY,
        "--steps",
        "10",
        "--seed",
        "3",
        "--out",
        str(out_dir),
        "--no-progress",
    )
    assert code == 0 and "finished at step 10" in out
    assert json.loads((out_dir / "config.json").read_text())["train"]["seed"] == 3
    code, out, _ = run(capsys, "evaluate", str(out_dir), "--json", "--n-inverse", "64")
    result = json.loads(out)
    for key in (
        "test_nll",
        "test_nll_se",
        "entropy_gap",
        "entropy_gap_se",
        "inverse_max_error",
        "invertible",
    ):
        assert key in result
    assert result["invertible"] is True and result["inverse_max_error"] < 1e-4
    assert result["entropy_gap"] > -4 * result["entropy_gap_se"]  # a KL divergence is >= 0
    full = (out_dir / "eval.json").read_text()
    code, out, _ = run(capsys, "evaluate", str(out_dir), "--json", "--n-test", "100")
    part = json.loads(out)
    assert code == 0 and part["n_test"] == 100 and result["n_test"] > 100
    # the partial result has its own file; the whole test set's stays as it was
    assert (out_dir / "eval.json").read_text() == full
    assert json.loads((out_dir / "eval-n100.json").read_text())["n_test"] == 100
    assert part["test_nll_se"] > result["test_nll_se"]  # fewer points, wider error bar
    # the three figures belong to the same points (true_entropy came from other draws)
    for r in (result, part):
        gap = r["test_nll"] - r["true_entropy"]
        assert gap == pytest.approx(r["entropy_gap"], rel=1e-9, abs=1e-9)
    code, _, err = run(capsys, "evaluate", str(out_dir), "--n-test", "0")
    assert code != 0 and "--n-test" in err and "Traceback" not in err
    code, out, _ = run(capsys, "sample", str(out_dir), "-n", "50", "--out", str(tmp_path / "s.npy"))
    assert code == 0 and np.load(tmp_path / "s.npy").shape == (50, 2)
    assert "certified error <= " in out and "composed" not in out  # one block, one solve
    # the composed bound grows with depth: with more solves the line gives one solve's bound
    deep = ["--steps", "2", "model.n_blocks=3", "--no-progress", "--out", str(tmp_path / "d")]
    assert run(capsys, "train", *TINY, *deep)[0] == 0
    sample = ["sample", str(tmp_path / "d"), "-n", "20", "--out", str(tmp_path / "d.npy")]
    code, out, _ = run(capsys, *sample)
    pattern = (
        r"certified error <= (\S+) each solve; composed over (\d+) solves, a worst case that "
        r"grows with depth: <= (\S+)\)"
    )
    composed = re.search(pattern, out)
    assert code == 0 and composed and int(composed[2]) == 3, out
    assert float(composed[1]) <= float(composed[3])
    code, out, _ = run(capsys, "certify", str(out_dir), "--json")
    assert json.loads(out)["invertible"] is True


def test_resume_refuses_overrides(tmp_path, capsys):
    code, _, err = run(capsys, "train", "--resume", str(tmp_path), "model.coeff=0.5")
    assert code == 2


def test_a_run_that_spent_its_time_budget_is_resumed_with_a_new_one(tmp_path, capsys):
    out_dir = tmp_path / "run"
    argv = ["train", *TINY, "--steps", "100000", "train.max_cpu_seconds=0.5", "--out"]
    code, _, err = run(capsys, *argv, str(out_dir))
    assert code == 0, err
    stopped = load_run(out_dir).run.last_step()
    assert 0 < stopped < 100000
    code, _, err = run(capsys, "train", "--resume", str(out_dir))
    assert code == 2 and "has spent its CPU budget" in err and "train.max_cpu_seconds=N" in err
    assert load_run(out_dir).run.last_step() == stopped  # nothing trained, nothing lost
    code, _, err = run(capsys, "train", "--resume", str(out_dir), "train.max_cpu_seconds=1.5")
    assert code == 0, err
    assert load_run(out_dir).run.last_step() > stopped + 1
    code, _, err = run(capsys, "train", "--resume", str(out_dir), "model.coeff=0.5")
    assert code == 2 and "not KEY=VALUE overrides" in err


@pytest.mark.parametrize(
    "budget,schedule,words",
    [
        ("max_cpu_seconds", "cosine", "CPU budget (train.max_cpu_seconds=1e-09)"),
        ("max_seconds", "constant", "wall-clock budget (train.max_seconds=1e-09)"),
    ],
)
def test_a_run_its_budget_stopped_says_so_not_finished(tmp_path, capsys, budget, schedule, words):
    """A user try-out: a run its budget stopped at 3% of its steps said "finished at step 155",
    and its step-based cosine had barely decayed without a word."""
    argv = ["train", *TINY, "--steps", "100000", f"train.{budget}=1e-9", "--no-progress"]
    argv += [f"train.lr_schedule={schedule}", "--out", str(tmp_path / "run")]
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    assert f"stopped by its {words} at step 1 of the planned 100000: " in out
    assert "finished" not in out
    notes = [line for line in err.splitlines() if "cosine-budget" in line]
    if schedule == "cosine":
        assert len(notes) == 1 and "set train.lr_schedule=cosine-budget" in notes[0], err
        assert notes[0].startswith("iresnet: note: the cosine learning rate was still at 100%")
    else:
        assert notes == []


def _spend_cpu_budget(run_dir, seconds, wall=None):
    """Mark the newest checkpoint of ``run_dir`` as having spent ``seconds`` of CPU time (and
    ``wall`` seconds of wall-clock time, if given; its manifest hash updated), as a final
    evaluation past the budget leaves it."""
    import hashlib

    newest = sorted((run_dir / "checkpoints").glob("step-*"))[-1]
    state = json.loads((newest / "state.json").read_text())
    state["cpu_elapsed"] = seconds
    if wall is not None:
        state["elapsed"] = wall
    (newest / "state.json").write_text(json.dumps(state, indent=1, sort_keys=True))
    manifest = json.loads((newest / "MANIFEST.json").read_text())
    digest = hashlib.sha256((newest / "state.json").read_bytes()).hexdigest()
    manifest["files"]["state.json"] = digest
    (newest / "MANIFEST.json").write_text(json.dumps(manifest, indent=1))


def test_a_finished_run_of_one_step_counts_it_in_words(tmp_path, capsys):
    """``--resume`` of a finished one-step run said "already finished (1 of 1 steps)"."""
    out_dir = tmp_path / "run"
    code, _, err = run(
        capsys, "train", *TINY, "--steps", "1", "--no-progress", "--out", str(out_dir)
    )
    assert code == 0, err
    code, _, err = run(capsys, "train", "--resume", str(out_dir))
    assert code == 2 and "already finished (1 of 1 step)" in err, err


def test_a_finished_run_past_its_budget_is_told_both_at_once(tmp_path, capsys):
    """Try-out 14, F5: a run that finished its steps but whose final evaluation went past
    ``train.max_cpu_seconds`` was told to give it more budget, and then that it had finished."""
    out_dir = tmp_path / "run"
    argv = ["train", *TINY, "--steps", "3", "train.max_cpu_seconds=1000", "--no-progress"]
    code, _, err = run(capsys, *argv, "--out", str(out_dir))
    assert code == 0, err
    _spend_cpu_budget(out_dir, 2000.4)
    code, _, err = run(capsys, "train", "--resume", str(out_dir))
    assert code == 2 and "already finished (3 of 3 steps)" in err, err
    assert "--steps N (N > 3)" in err and "train.max_cpu_seconds=T (T > 2000.4; 0: none)" in err
    # a new budget alone: only the steps are left to name
    code, _, err = run(capsys, "train", "--resume", str(out_dir), "train.max_cpu_seconds=3000")
    assert code == 2 and "already finished (3 of 3 steps): extend it" in err, err
    assert "max_cpu_seconds" not in err
    # more steps alone: the budget message names the --steps it was given, so that following
    # it does not lead back to "already finished"
    code, _, err = run(capsys, "train", "--resume", str(out_dir), "--steps", "5")
    assert code == 2 and "has spent its CPU budget" in err, err
    assert f"--resume {out_dir} --steps 5 train.max_cpu_seconds=N" in err
    code, _, err = run(
        capsys, "train", "--resume", str(out_dir), "--steps", "5", "train.max_cpu_seconds=3000"
    )
    assert code == 0, err
    assert load_run(out_dir).run.last_step() == 5


def test_both_spent_budgets_are_named_in_one_line(tmp_path, capsys):
    out_dir = tmp_path / "run"
    budgets = ["train.max_cpu_seconds=1000", "train.max_seconds=1000"]
    code, _, err = run(capsys, "train", *TINY, "--steps", "3", *budgets, "--out", str(out_dir))
    assert code == 0, err
    _spend_cpu_budget(out_dir, 2000.0, wall=3000.0)
    code, _, err = run(capsys, "train", "--resume", str(out_dir))
    assert code == 2 and err.count("\n") == 1, err
    assert "already finished (3 of 3 steps) and has spent its CPU and wall-clock budgets" in err
    assert "train.max_cpu_seconds=T (T > 2000.0; 0: none) train.max_seconds=W (W > 3000.0" in err
    code, _, err = run(capsys, "train", "--resume", str(out_dir), "--steps", "5")
    assert (
        "has spent its CPU and wall-clock budgets (2000.0 s of train.max_cpu_seconds=1000, " in err
    )
    assert "--steps 5 train.max_cpu_seconds=N (N > 2000.0; 0: none) train.max_seconds=M" in err


def test_a_torn_checkpoint_is_named_once_when_a_run_resumes(tmp_path, capsys):
    """Found by a try-out: the budget check and the trainer each warned about the same file."""
    import os

    out_dir = tmp_path / "run"
    code, _, err = run(capsys, "train", *TINY, "--steps", "10", "--out", str(out_dir))
    assert code == 0, err
    newest = sorted((out_dir / "checkpoints").glob("step-*"))[-1]
    os.remove(newest / "MANIFEST.json")
    with pytest.warns(RuntimeWarning, match="skipping checkpoint") as caught:
        code, _, err = run(capsys, "train", "--resume", str(out_dir), "--steps", "15")
    assert code == 0, err
    assert sum("skipping checkpoint" in str(w.message) for w in caught) == 1


def test_a_resume_of_a_run_still_training_before_its_first_checkpoint_names_its_writer(
    tmp_path, capsys
):
    """A user try-out: a second ``--resume`` of a run still training, with no checkpoint yet,
    was told the run "stopped before its first one" and to start it again."""
    import signal
    import subprocess
    import sys
    from pathlib import Path

    import iresnet

    out_dir = tmp_path / "run"
    code, _, err = run(capsys, "train", *TINY, "--steps", "5", "--out", str(out_dir))
    assert code == 0, err
    shutil.rmtree(out_dir / "checkpoints")  # as it is before its first checkpoint
    (out_dir / "model.safetensors").unlink()
    src = str(Path(iresnet.__file__).parents[1])
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from iresnet.app.runs import Run; r = Run(sys.argv[1]); "
            "r.acquire(); print('held', flush=True); time.sleep(120)",
            str(out_dir),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": src},
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        code, out, err = run(capsys, "train", "--resume", str(out_dir))
        assert code == 2 and f"is being written by process {holder.pid}" in err, err
        assert "no checkpoint" not in err and len(err.splitlines()) == 1
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    code, _, err = run(capsys, "train", "--resume", str(out_dir))  # the writer is gone
    assert code == 2 and "stopped before its first one" in err, err


def _run_warnings_on_stderr(capsys, *argv):
    """``run``, each warning a ``warned: MESSAGE`` line on stderr, in order with the messages
    (pytest records warnings aside)."""
    import sys

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda m, *_a, **_k: print(f"warned: {m}", file=sys.stderr)
        return run(capsys, *argv)


def test_checkpoint_warnings_and_errors_come_before_resumed_from(tmp_path, capsys):
    """A user try-out: "resumed from step 0 of 700" came before the error that no checkpoint
    was valid, and "resumed from step 500" before the warning that step 600's was skipped."""
    out_dir = tmp_path / "run"
    code, _, err = run(capsys, "train", *TINY, "--steps", "10", "--out", str(out_dir))
    assert code == 0, err
    os.remove(out_dir / "checkpoints" / "step-00000010" / "MANIFEST.json")
    argv = ["train", "--resume", str(out_dir), "--steps", "12", "--no-progress"]
    code, _, err = _run_warnings_on_stderr(capsys, *argv)
    assert code == 0, err
    lines = err.splitlines()
    skipped = [i for i, line in enumerate(lines) if line.startswith("warned: skipping checkpoint")]
    assert len(skipped) == 1 and skipped[0] < lines.index("resumed from step 5 of 12"), err
    for checkpoint in (out_dir / "checkpoints").glob("step-*"):  # none valid now
        (checkpoint / "MANIFEST.json").unlink(missing_ok=True)
    code, _, err = _run_warnings_on_stderr(capsys, *argv[:-2], "14")
    lines = err.splitlines()
    assert code == 2 and "no valid checkpoint to resume from" in lines[-1], err
    assert "resumed" not in err and "preset" not in err, err  # nor the summary
    skipped = [line for line in lines if line.startswith("warned: skipping checkpoint")]
    assert len(skipped) == len(list((out_dir / "checkpoints").glob("step-*"))), err


def test_a_skipped_model_safetensors_is_named_with_why_and_what_was_loaded(tmp_path, capsys):
    """A user try-out: another run's ``model.safetensors`` (another shape) copied into a run
    was skipped without a word for its newest checkpoint's weights (``evaluate`` and
    ``sample``); only the ``weights:`` line showed it. An older one (an extension not
    finished) is named too."""
    from iresnet.app.runs import Run
    from iresnet.app.training import train

    mine, other = tmp_path / "mine", tmp_path / "other"
    for out_dir, extra in ((mine, []), (other, ["model.hidden=4"])):
        argv = ["train", *TINY, *extra, "--steps", "10" if out_dir == mine else "5"]
        code, _, err = run(capsys, *argv, "--out", str(out_dir), "--no-progress")
        assert code == 0, err
    shutil.copy(other / "model.safetensors", mine / "model.safetensors")
    newest = mine / "checkpoints" / "step-00000010" / "ema.safetensors"
    for argv in (
        ["evaluate", str(mine), "--n-inverse", "2"],
        ["sample", str(mine), "-n", "2", "--out", str(tmp_path / "s.npy")],
    ):
        with pytest.warns(RuntimeWarning) as caught:
            code, _, err = run(capsys, *argv)
        assert code == 0, err
        notes = [str(w.message) for w in caught if "model.safetensors" in str(w.message)]
        assert len(notes) == 1 and notes[0].startswith(f"skipping {mine / 'model.safetensors'}: ")
        assert "copied from another run? Move it out of the run folder" in notes[0]
        assert notes[0].endswith(f"; loaded {newest} (step 10) instead")
    # An extension stopped before its end: the final weights are the shorter plan's.
    shutil.rmtree(other)
    code, _, err = run(capsys, "train", *TINY, "--steps", "5", "--out", str(other))
    assert code == 0, err
    longer = Run(other).load_config().override(["train.steps=10"])
    assert train(longer, other, resume=True, progress=False, stop_after=7).stopped == "signal"
    with pytest.warns(RuntimeWarning, match="is older than the newest checkpoint") as caught:
        code, _, err = run(capsys, "evaluate", str(other), "--n-inverse", "2")
    assert code == 0, err
    (note,) = [str(w.message) for w in caught if "model.safetensors" in str(w.message)]
    assert (
        "its step 5 is older than the newest checkpoint's 7" in note
        and f"--resume {other} finishes it" in note
    )


def test_unavailable_devices_are_named_in_one_line(capsys, tmp_path):
    out_dir = tmp_path / "run"
    code, out, err = run(capsys, "train", "--device", "foo", "--steps", "2", "--out", str(out_dir))
    assert code == 2 and "unknown device 'foo'" in err and "Traceback" not in err
    assert not out_dir.exists()  # nothing was written
    if not torch.cuda.is_available():
        code, _, err = run(
            capsys, "train", "--device", "cuda", "--steps", "2", "--out", str(out_dir)
        )
        assert code == 2 and "no CUDA device" in err
        assert run(capsys, "train", *TINY, "--steps", "2", "--out", str(out_dir))[0] == 0
        for command in ("evaluate", "sample"):
            code, _, err = run(capsys, command, str(out_dir), "--device", "cuda")
            assert code == 2 and "no CUDA device is visible here; use --device cpu" in err
        assert run(capsys, "sample", str(out_dir), "-n", "3", "--device", "cpu")[0] == 0


def test_json_output_is_strict_json_and_temperature_is_checked(capsys, tmp_path):
    """One test point has no standard error: ``--n-test 1`` is refused as a test split of one
    is at the start (it printed null); ``--n-test`` at or above the test size is the whole test
    set, saved as ``eval.json`` (it was saved as ``eval-n100000.json``; try-out 8, F6)."""
    data = tmp_path / "three.npy"
    np.save(data, np.random.default_rng(0).normal(size=(3, 2)))
    out_dir = tmp_path / "run"
    code, _, err = run(capsys, "train", *TINY, "--data", str(data), "--out", str(out_dir))
    assert code == 2 and "at least 2 of each are needed" in err and not out_dir.exists()
    np.save(data, np.random.default_rng(0).normal(size=(300, 2)))
    assert (
        run(capsys, "train", *TINY, "--data", str(data), "--steps", "2", "--out", str(out_dir))[0]
        == 0
    )
    code, _, err = run(capsys, "evaluate", str(out_dir), "--json", "--n-test", "1")
    assert code == 2 and "--n-test must be >= 2 (a standard error needs two), got 1" in err
    code, out, _ = run(capsys, "evaluate", str(out_dir), "--json", "--n-test", "100000")
    assert code == 0 and "NaN" not in out and json.loads(out)["test_nll_se"] > 0
    assert json.loads(out)["n_test"] == 60  # 300 rows, test_fraction 0.2
    assert (out_dir / "eval.json").is_file() and not list(out_dir.glob("eval-n*.json"))
    code, _, err = run(capsys, "sample", str(out_dir), "--temperature", "-1")
    assert code == 2 and "--temperature must be a finite positive number" in err


def test_a_failed_start_leaves_nothing_that_blocks_the_rerun(capsys, tmp_path):
    """The issue's dead end: a failed start left a folder that refused both a rerun ("use
    --resume") and --resume ("no valid checkpoint")."""
    data = tmp_path / "pts.npy"
    np.save(data, np.array([[0.0, 1.0], [np.nan, 2.0], [1.0, 0.0]]))
    out_dir = tmp_path / "run"
    code, _, err = run(
        capsys, "train", *TINY, "--data", str(data), "--steps", "2", "--out", str(out_dir)
    )
    assert code == 2 and "NaN" in err and not out_dir.exists()
    np.save(data, np.random.default_rng(0).normal(size=(300, 2)))  # fixed
    assert (
        run(capsys, "train", *TINY, "--data", str(data), "--steps", "2", "--out", str(out_dir))[0]
        == 0
    )
    afile = tmp_path / "afile"
    afile.write_text("x")
    code, _, err = run(capsys, "train", *TINY, "--steps", "2", "--out", str(afile))
    assert code == 2 and "is a file" in err and afile.read_text() == "x"


def test_resume_refuses_what_it_would_ignore_and_never_shrinks_a_run(capsys, tmp_path):
    out_dir = tmp_path / "run"
    assert run(capsys, "train", *TINY, "--steps", "5", "--out", str(out_dir))[0] == 0
    config = (out_dir / "config.json").read_text()
    for extra in (["--seed", "3"], ["--device", "cpu"], ["--out", "x"], ["lr=0.1"]):
        code, _, err = run(capsys, "train", "--resume", str(out_dir), *extra)
        assert code == 2 and "--resume continues a run with its saved config" in err, extra
    code, _, err = run(capsys, "train", "--resume", str(out_dir), "--steps", "3")
    assert code == 2 and "is at step 5" in err
    code, _, _ = run(capsys, "train", "--resume", str(out_dir), "--steps", "8", "--dry-run")
    assert code == 0 and (out_dir / "config.json").read_text() == config  # nothing trained
    assert json.loads(config)["train"]["steps"] == 5


def test_evaluate_and_sample_check_their_flags_before_loading(capsys, tmp_path):
    """Bad counts are named even when the run folder is wrong too: the flag is checked first."""
    missing = str(tmp_path / "no-run")
    for args, message in (
        (("evaluate", missing, "--n-inverse", "0"), "--n-inverse must be >= 1, got 0"),
        (
            ("evaluate", missing, "--n-test", "-3"),
            "--n-test must be >= 2 (a standard error needs two), got -3",
        ),
        (("sample", missing, "-n", "0"), "--num must be >= 1, got 0"),
        (("sample", missing, "--out", str(tmp_path / "s.txt")), "--out must end in .npy"),
    ):
        code, _, err = run(capsys, *args)
        assert code == 2 and message in err and "Traceback" not in err, (args, err)


def test_evaluate_prints_the_certificate_table_with_methods(capsys, tmp_path):
    out_dir = tmp_path / "run"
    assert run(capsys, "train", *TINY, "--steps", "2", "--out", str(out_dir))[0] == 0
    code, out, _ = run(capsys, "evaluate", str(out_dir), "--n-inverse", "8")
    assert code == 0
    assert "layers bounded by" in out and "svd" in out and "guaranteed invertible" in out
    saved = json.loads((out_dir / "eval.json").read_text())["certificate"]
    assert Certificate.from_dict(saved).to_dict() == saved  # the JSON round-trips


def test_help_gives_every_config_key_its_meaning_and_default(capsys):
    from dataclasses import fields

    from iresnet.app.cli import _config_keys_help
    from iresnet.app.config import SECTIONS

    text = _config_keys_help()
    for section, cls in SECTIONS.items():
        for f in fields(cls):
            pattern = rf"^    {section}\.{f.name}=\S*  (\S.{{3,}})$"
            assert re.search(pattern, text, re.M), f"{section}.{f.name} has no meaning in --help"


def test_os_errors_are_one_line_and_say_nothing_written_was_lost(capsys, tmp_path, monkeypatch):
    import errno

    from iresnet.app import runs

    def full_disk(path, content):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(runs, "atomic_write", full_disk)
    code, _, err = run(capsys, "train", *TINY, "--steps", "2", "--out", str(tmp_path / "r"))
    assert code == 2 and "No space left on device" in err and "intact" in err
    assert len(err.strip().splitlines()[-1:]) == 1 and "Traceback" not in err


def test_load_run_is_part_of_the_library_api_without_importing_the_app_early(capsys, tmp_path):
    import iresnet

    out_dir = tmp_path / "run"
    assert run(capsys, "train", *TINY, "--steps", "2", "--out", str(out_dir))[0] == 0
    trained = iresnet.load_run(out_dir)
    assert trained.cfg.train.steps == 2
    assert trained.model().log_prob(torch.zeros(3, 2)).shape == (3,)


def test_exact_logdet_on_images_is_refused_with_the_cheaper_options(capsys):
    from iresnet.app.builder import build_model
    from iresnet.app.config import Config
    from iresnet.datasets import DataBundle
    from iresnet.errors import ConfigError

    cfg = Config().override(["model.kind=resflow-image", "model.logdet=exact"])
    images = DataBundle("x", "image", torch.zeros(0, 1, 28, 28, dtype=torch.uint8), torch.zeros(0))
    with pytest.raises(ConfigError, match="784 dimensions.*model.logdet=roulette"):
        build_model(cfg, images)


def test_the_new_users_table_of_mistakes(capsys, tmp_path):
    """Found by a fresh user's session (50 attempts): each is one line, exit 2, and leaves no
    folder that would block the corrected rerun."""
    data = tmp_path / "good.npy"
    np.save(data, np.random.default_rng(0).normal(size=(300, 2)))
    out = tmp_path / "r"
    for argv, needle in (
        (["train.batch_size=100000000"], "exceeds the 240 training samples"),
        (["train.precision=fp16"], "fp16 needs a CUDA device"),
        (["--nproc", "0"], "--nproc must be >= 1"),
        (["--nproc", "2", "train.batch_size=63"], "does not split evenly over --nproc 2"),
        (["--nproc", "4096"], "exceeds the"),
    ):
        code, _, err = run(capsys, "train", *TINY, "--data", str(data), "--out", str(out), *argv)
        assert code == 2 and needle in err and "Traceback" not in err, (argv, err)
        assert not out.exists(), argv
    huge = tmp_path / "huge.npy"
    np.save(huge, np.random.default_rng(0).normal(size=(300, 2)) * 3e38)
    code, _, err = run(capsys, "train", *TINY, "--data", str(huge), "--out", str(out))
    assert code == 2 and "too large for the model's float32 arithmetic" in err
    assert (
        run(capsys, "train", *TINY, "--data", str(data), "--steps", "2", "--out", str(out))[0] == 0
    )

    code, _, err = run(capsys, "train", "--resume", str(out))
    assert code == 2 and "already finished (2 of 2 steps)" in err
    code, _, err = run(capsys, "train", "--resume", str(out), "--steps", "4", "model.coeff=0.5")
    assert code == 2 and "not KEY=VALUE overrides" in err and "preset" not in err
    code, _, err = run(capsys, "sample", str(out), "-n", "3", "--out", str(data))
    assert code == 2 and "is an input" in err
    taken = tmp_path / "taken.npy"
    np.save(taken, np.zeros(1))
    code, _, err = run(capsys, "sample", str(out), "-n", "3", "--out", str(taken))
    assert code == 2 and "exists" in err and "--overwrite" in err
    assert run(capsys, "sample", str(out), "-n", "3", "--out", str(taken), "--overwrite")[0] == 0
    assert np.load(taken).shape == (3, 2)

    (out / "data.json").unlink()
    code, _, err = run(capsys, "evaluate", str(out))
    assert code == 2 and "data.json is missing" in err and "--allow-changed-data" in err

    sweep_out = tmp_path / "sweep"
    code, _, err = run(
        capsys, "sweep", "digits-classifier", "--coeffs", "1.5", "--out", str(sweep_out)
    )
    assert code == 2 and not sweep_out.exists()


def test_the_library_names_the_new_users_mistakes():
    import iresnet

    flow = iresnet.ResidualFlow(2, transforms=1, hidden_features=(8,))
    assert flow().log_prob(torch.randn(2)).shape == ()  # one point, as zuko's flows take it
    from iresnet.checks import check_input

    with pytest.raises(iresnet.DataError, match=r"without a batch dimension; pass x.unsqueeze"):
        check_input(torch.randn(2), "f", event_shape=(2,))  # where one event is not accepted
    assert flow().sample(5).shape == (5, 2)  # an int is a sample shape of (n,)
    with pytest.raises(TypeError, match="features and transforms must be integers"):
        iresnet.ResidualFlow("2")
    with pytest.raises(TypeError, match="certify expects a torch.nn.Module"):
        iresnet.certify(None)


def test_the_second_new_users_findings(capsys, tmp_path):
    """A fresh session on the conditional and post-2019 features: contexts are part of the
    fingerprint, inputs are never outputs, the data file is not needed to sample or score, an
    interrupted extension is evaluated at its newest checkpoint."""
    import iresnet

    rng = np.random.default_rng(0)
    x, c = tmp_path / "x.csv", tmp_path / "c.csv"
    np.savetxt(x, rng.normal(size=(300, 2)), delimiter=",")
    np.savetxt(c, rng.uniform(size=(300, 1)), delimiter=",")
    out = tmp_path / "run"
    argv = [
        "train",
        *TINY,
        "--data",
        str(x),
        "--context",
        str(c),
        "--steps",
        "4",
        "--out",
        str(out),
    ]
    assert run(capsys, *argv)[0] == 0

    for flags in (["--out", str(x)], ["--out", str(c), "--overwrite"]):
        code, _, err = run(capsys, "score", str(out), "--data", str(x), "--context", str(c), *flags)
        assert code == 2 and "is an input" in err, flags
    code, _, err = run(capsys, "sample", str(out), "-n", "2", "--out", str(c), "--overwrite")
    assert code == 2 and "is an input" in err

    original = c.read_bytes()
    np.savetxt(c, rng.uniform(size=(300, 1)), delimiter=",")  # other contexts, same data
    code, _, err = run(capsys, "evaluate", str(out))
    assert code == 2 and "the data changed" in err
    c.write_bytes(original)

    moved = tmp_path / "x-away.csv"
    x.rename(moved)
    code, _, err = run(capsys, "sample", str(out), "-n", "2", "--out", str(tmp_path / "s.npy"))
    assert code == 0, err  # no data file needed, the contexts' mean is the default context
    code, _, err = run(capsys, "evaluate", str(out))
    assert code == 2 and "is gone from" in err
    moved.rename(x)

    # An interrupted extension: the newest checkpoint, not the shorter plan's final weights.
    from iresnet.app.runs import Run
    from iresnet.app.training import train

    longer = Run(out).load_config().override(["train.steps=10"])
    assert train(longer, out, resume=True, progress=False, stop_after=7).stopped == "signal"
    with pytest.warns(RuntimeWarning, match="step 4 is older than the newest checkpoint's 7"):
        code, out_json, _ = run(capsys, "evaluate", str(out), "--json", "--n-inverse", "2")
    result = json.loads(out_json.strip().splitlines()[-1])
    assert code == 0 and result["weights_step"] == 7 and "step-00000007" in result["weights"]
    # --steps of an interrupted plan must extend the plan, not shrink it to a few more steps
    code, _, err = run(capsys, "train", "--resume", str(out), "--steps", "9", "--dry-run")
    assert code == 2 and "stopped at step 7 of its planned 10" in err
    code, dry, err = run(capsys, "train", "--resume", str(out), "--steps", "11", "--dry-run")
    assert code == 0 and json.loads(dry)["train"]["steps"] == 11

    assert iresnet.ResidualFlow(2, logdet="stratified", transforms=1) is not None
    code, _, err = run(capsys, "train", "model.dequantization=variational", "--steps", "2")
    assert code == 2 and "needs an image density model" in err
    code, _, err = run(capsys, "train", "logdet=roulette-auto", "coeff=1.0", "--steps", "2")
    assert code == 2 and "use model.coeff < 1" in err


def test_the_third_new_users_findings(capsys, tmp_path, monkeypatch):
    """A fresh session on monotone blocks, training subsets and conditional files: the config
    line names the block and activation, a missing folder is named as missing, a context that
    starts with a minus sign is a value, and the run's thread count is used after training."""
    import iresnet
    from iresnet.app.cli import _config_summary
    from iresnet.app.config import Config

    line = _config_summary(Config().override(["model.block=monotone", "model.activation=cpila"]))
    assert "monotone blocks, cpila" in line and "monotone" not in _config_summary(Config())
    # a run shorter than its warm-up never reaches its learning rate, and is told so
    short = _config_summary(Config().override(["train.steps=20", "train.warmup_steps=50"]))
    assert "note: train.warmup_steps=50 is not below the run's 20 steps" in short
    assert "note" not in _config_summary(Config().override(["train.steps=51", "warmup_steps=50"]))
    # under the constant schedule the last of 50 warm-up steps runs at train.lr
    assert "note" not in _config_summary(Config().override(["train.steps=50", "warmup_steps=50"]))
    cosine = Config().override(["steps=50", "warmup_steps=50", "train.lr_schedule=cosine"])
    assert "note: train.warmup_steps=50 is not below the run's 50 steps" in _config_summary(cosine)
    with pytest.raises(TypeError, match=r"one per hidden layer \(e.g. \(64,\)\), got 64"):
        iresnet.ResidualFlow(2, hidden_features=64)
    out = tmp_path / "run"
    argv = ["train", "toy-rotated-8gaussians", *TINY, "--steps", "2", "--out", str(out)]
    code, _, err = run(capsys, *argv, "train.threads=1", "--no-progress")
    assert code == 0, err
    threads: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", threads.append)
    for context in ("-0.5;0.2", "-1e9", "-.5"):
        code, _, err = run(
            capsys, "sample", str(out), "-n", "2", "--context", context, "--out",
            str(tmp_path / "s.npy"), "--overwrite",
        )  # fmt: skip
        assert code == 0, (context, err)
        # -1e9 lies far outside the training angles, -0.5 does not
        assert ("extrapolates" in err) == (context == "-1e9"), (context, err)
    assert np.load(tmp_path / "s.contexts.npy")[:, 0].tolist() == [-0.5, -0.5]
    assert threads == [1, 1, 1]  # the run's train.threads, once per command


def test_a_run_on_your_data_is_named_for_the_data_not_the_preset(tmp_path):
    """The summary says the preset only lends the model and training to ``--data`` runs, and
    the progress bar names the data file."""
    from iresnet.app.cli import _config_summary
    from iresnet.app.config import Config
    from iresnet.app.trainer import _run_title

    cfg = Config()
    assert _config_summary(cfg).startswith(f"preset {cfg.preset}: toy model")
    assert _run_title(cfg) == cfg.preset
    cfg.data.name, cfg.data.path = "array", str(tmp_path / "points.csv")
    assert _config_summary(cfg).startswith(
        f"preset {cfg.preset} (its model and training, on your data): toy model"
    )
    assert _run_title(cfg) == "points.csv"
    cfg.data.context_path = str(tmp_path / "c.csv")
    assert f"data array ({cfg.data.path}), contexts {cfg.data.context_path};" in _config_summary(
        cfg
    )


def test_the_final_line_describes_only_the_numbers_it_shows():
    """A run stopped before its first test evaluation has no test number to explain."""
    from iresnet.app.cli import _describe_metrics, _latest_test

    train_only = _describe_metrics({"nll": 1.5}, 2560)
    assert train_only == "train nll 1.5000 nats (train: last logged batch)"
    both = _describe_metrics({"nll": 1.5, "test_nll": 1.6, "test_nll_se": 0.1}, 2560)
    assert "test nll 1.6000 +- 0.1000 nats" in both and "test: 2560 test samples," in both
    assert "`iresnet evaluate` scores the whole test set" in both
    # stopped between evaluations: the newest test estimate, with its step
    rows = [{"step": 10, "nll": 2.0}, {"step": 20, "test_nll": 1.7}, {"step": 30, "nll": 1.5}]
    assert _latest_test(rows) == (20, {"test_nll": 1.7})
    assert _latest_test(rows[:1]) == (None, {})
    older = _describe_metrics({"nll": 1.5, "test_nll": 1.7}, 2560, test_step=20)
    assert "test: 2560 test samples at step 20, EMA weights" in older
    no_ema = _describe_metrics({"test_nll": 1.7}, 2560, ema=False)
    assert "the trained weights (no EMA)" in no_ema and "EMA weights" not in no_ema
    assert _describe_metrics({}, None) == "no metrics logged"
    # the periodic estimate took the whole test set: no pointer to evaluate for it (try-out 8)
    whole = _describe_metrics({"test_nll": 1.7}, 359, n_test=359)
    assert "test: all 359 test samples, EMA weights)" in whole and "evaluate" not in whole
    part = _describe_metrics({"test_nll": 1.7}, 64, n_test=359)
    assert "test: 64 test samples, EMA weights; `iresnet evaluate` scores the whole" in part


def test_every_config_field_has_its_own_help_line():
    """``iresnet train --help`` describes each field by itself (fields that shared a docstring
    entry used to share one line, so ``model.anderson`` read as a stop tolerance)."""
    from iresnet.app.cli import _attribute_docs
    from iresnet.app.config import DataConfig, ModelConfig, TrainConfig

    for cls in (ModelConfig, TrainConfig, DataConfig):
        docs = _attribute_docs(cls)
        shared = {t: [k for k in docs if docs[k] == t] for t in set(docs.values())}
        assert all(len(names) == 1 for names in shared.values()), {
            t: n for t, n in shared.items() if len(n) > 1
        }
    assert "Anderson" in _attribute_docs(ModelConfig)["anderson"]


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--out", ""],
        ["sample", "/nonexistent/run", "--out", " "],
        ["score", "/nonexistent/run", "--data", "x.csv", "--out", ""],
        ["sweep", "digits-classifier", "--out", ""],
    ],
)
def test_an_empty_out_is_refused_not_taken_as_the_current_folder(capsys, argv):
    with pytest.raises(SystemExit) as exit_:  # argparse's own usage error
        main(argv)
    assert exit_.value.code == 2
    assert "argument --out: an empty path" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "prog"),
    [
        (["presets", "extra"], "iresnet presets"),
        (["train", "--bogus"], "iresnet train"),
        (["train", "--steps", "ten"], "iresnet train"),
        (["frobnicate"], "iresnet"),
        (["evaluate"], "iresnet evaluate"),
        (["sweep"], "iresnet sweep"),
    ],
)
def test_usage_errors_are_one_line_naming_the_command(capsys, argv, prog):
    """argparse printed its usage block above the error, two lines or more for one fault
    (try-out 8, F10); the command's own errors are one line."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "usage:" not in err, err
    assert err.startswith(f"{prog}: error: ") and "KEY=VALUE" not in err, err
    assert f"`{prog} --help`" in err, err


def test_a_dequantised_run_reports_a_discrete_bound_and_score_says_what_it_gives(tmp_path, capsys):
    """Integer data trained with data.dequantize=uniform: evaluate bounds the discrete NLL
    (test NLL minus sum log w over the cells), and score, which evaluates the continuous
    density at the given points, says that it is not the discrete probability."""
    counts = np.random.default_rng(0).poisson(4.0, size=(300, 2)).astype(float)
    np.savetxt(tmp_path / "counts.csv", counts, delimiter=",")
    out_dir = tmp_path / "run"
    argv = ["train", *TINY, "--data", str(tmp_path / "counts.csv"), "data.dequantize=uniform"]
    code, _, err = run(capsys, *argv, "--steps", "5", "--out", str(out_dir))
    assert code == 0, err
    code, out, err = run(capsys, "evaluate", str(out_dir), "--json", "--n-inverse", "8")
    result = json.loads(out)
    assert result["dequantized_columns"] == 2
    width = json.loads((out_dir / "data.json").read_text())["dequantize_width"]
    expected = result["test_nll"] - sum(math.log(w) for w in width)
    assert result["discrete_nll_bound"] == pytest.approx(expected, rel=1e-12)
    code, out, err = run(
        capsys,
        "score",
        str(out_dir),
        "--data",
        str(tmp_path / "counts.csv"),
        "--out",
        str(tmp_path / "s.csv"),
    )
    assert code == 0, err
    assert "not the log-probability of the discrete values" in err and "discrete_nll_bound" in err
    assert "this run dequantised 2 discrete columns (data.dequantize=uniform)" in err  # not "(s)"


def test_wider_user_data_needs_data_max_dim_and_then_trains(capsys, tmp_path):
    """``--data`` of more than 64 columns: refused with the key that raises the limit, which
    then trains it (a roulette run: scored with the roulette above 64 dimensions; a run
    trained with exact log-dets is scored exactly, see below)."""
    data = tmp_path / "wide.npy"
    np.save(data, np.random.default_rng(0).normal(size=(200, 70)))
    out_dir = tmp_path / "run"
    args = ("train", *TINY, "--data", str(data), "--steps", "2", "--out", str(out_dir))
    code, _, err = run(capsys, *args)
    assert code == 2 and "70 columns" in err and "data.max_dim=70" in err
    assert not out_dir.exists()
    assert (
        run(capsys, *args, "data.max_dim=70", "model.n_blocks=1", "model.logdet=roulette")[0] == 0
    )
    assert load_run(out_dir).cfg.data.max_dim == 70
    code, out, _ = run(capsys, "evaluate", str(out_dir), "--json", "--n-test", "8")
    assert code == 0 and "russian-roulette" in json.loads(out)["estimator"]
    # Seeded (try-out 8, F5: each call gave, and saved, another number)
    again = run(capsys, "evaluate", str(out_dir), "--json", "--n-test", "8")[1]
    other = run(capsys, "evaluate", str(out_dir), "--json", "--n-test", "8", "--seed", "1")[1]
    assert json.loads(again)["test_nll"] == json.loads(out)["test_nll"]
    assert json.loads(out)["seed"] == 0 and json.loads(other)["seed"] == 1
    assert json.loads(other)["test_nll"] != json.loads(out)["test_nll"]
    points = tmp_path / "p.npy"
    np.save(points, np.random.default_rng(1).normal(size=(3, 70)))
    for name in ("a.csv", "b.csv"):
        assert (
            run(
                capsys, "score", str(out_dir), "--data", str(points), "--out", str(tmp_path / name)
            )[0]
            == 0
        )
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()


def test_samples_that_are_not_finite_are_refused_not_written(capsys, tmp_path):
    """A temperature that overflows the latent made the inverse return NaN: the samples were
    written (exit 0) under "certified error <= 0" (Python's max dropped the NaN)."""
    run_dir = tmp_path / "run"
    assert run(capsys, "train", *TINY, "--steps", "2", "--out", str(run_dir))[0] == 0
    out = tmp_path / "s.npy"
    code, out_text, err = run(
        capsys, "sample", str(run_dir), "-n", "4", "--temperature", "1e38", "--out", str(out)
    )
    assert code == 2 and "samples are not finite" in err and "lower --temperature" in err
    assert "certified error <= 0" not in out_text + err and not out.exists()
    assert run(capsys, "sample", str(run_dir), "-n", "4", "--out", str(out))[0] == 0
    assert np.isfinite(np.load(out)).all()


def test_contexts_wider_than_64_columns_follow_data_max_dim(capsys, tmp_path):
    """The context file was read with a fixed limit of 64 columns while its refusal advised
    ``data.max_dim`` (try-out 8, F1); sample and score read the run's width."""
    rng = np.random.default_rng(0)
    data, ctx = tmp_path / "x.npy", tmp_path / "c.npy"
    np.save(data, rng.normal(size=(300, 2)))
    np.save(ctx, rng.normal(size=(300, 70)))
    out_dir = tmp_path / "run"
    args = ("train", *TINY, "--data", str(data), "--context", str(ctx), "--steps", "2")
    code, _, err = run(capsys, *args, "--out", str(out_dir))
    assert code == 2 and "70 columns" in err and "data.max_dim=70" in err
    assert run(capsys, *args, "data.max_dim=70", "--out", str(out_dir))[0] == 0
    rows = tmp_path / "c3.csv"
    np.savetxt(rows, rng.normal(size=(3, 70)), delimiter=",")
    code, out, _ = run(capsys, "sample", str(out_dir), "--context", str(rows), "-n", "2")
    assert code == 0
    # the line names each context by its first values, not all 70 (try-out 9, N3)
    first = np.loadtxt(rows, delimiter=",")[0]
    assert out.count("... (70 values)") == 3, out
    assert f"{first[3]:.4g}, ..." in out and f"{first[4]:.4g}" not in out, out
    np.savetxt(rows, rng.normal(size=(3, 71)), delimiter=",")
    code, _, err = run(capsys, "sample", str(out_dir), "--context", str(rows), "-n", "2")
    assert code == 2 and "expected contexts with 70 values per row, got 71" in err


def _write_mnist_files(folder, splits=("train", "test"), n=64):
    """MNIST's IDX files of ``splits`` in ``folder``: ``n`` blank images (the preset's batch)
    and their labels each."""
    for split in splits:
        prefix = "train" if split == "train" else "t10k"
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(
            bytes([0, 0, 8, 3]) + np.array([n, 28, 28], ">u4").tobytes() + bytes(n * 28 * 28)
        )
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(
            bytes([0, 0, 8, 1]) + np.array([n], ">u4").tobytes() + bytes(n)
        )


def test_a_flag_and_an_override_naming_one_folder_two_ways_agree(capsys, tmp_path):
    """``--data-dir /x/`` beside ``data.data_dir=/x`` (or a relative spelling) is one folder, not
    a disagreement (try-out 9's note on the flag check)."""
    _write_mnist_files(tmp_path)  # a dry run looks for the files too
    rel = os.path.relpath(tmp_path)
    for given, override in ((f"{tmp_path}/", str(tmp_path)), (rel, str(tmp_path))):
        code, _, err = run(
            capsys, "train", "mnist", "--data-dir", given, f"data.data_dir={override}", "--dry-run"
        )
        assert code == 0, err


def test_resume_without_a_checkpoint_says_what_to_do(capsys, tmp_path):
    """``--resume RUN --steps N`` on a run with no valid checkpoint pointed to ``--resume RUN``,
    which then said "no valid checkpoint" (try-out 10, F2); a run killed before its first
    checkpoint was told "another --out", where the same --out works (F3)."""
    out_dir = tmp_path / "run"
    assert run(capsys, "train", *TINY, "--steps", "4", "--out", str(out_dir))[0] == 0
    (out_dir / "model.safetensors").unlink()
    for ckpt in (out_dir / "checkpoints").iterdir():  # all torn
        (ckpt / "MANIFEST.json").unlink()
    for steps in ([], ["--steps", "100"]):
        code, _, err = run(capsys, "train", "--resume", str(out_dir), *steps)
        assert code == 2 and "no valid checkpoint to resume from" in err, err
        assert "continues the plan" not in err
    shutil.rmtree(out_dir / "checkpoints")  # as a run killed during its first checkpoint
    (out_dir / "checkpoints" / ".tmp-step-00000002-123").mkdir(parents=True)
    code, _, err = run(capsys, "train", "--resume", str(out_dir))
    assert code == 2 and "stopped before its first one" in err and f"--out {out_dir}" in err
    again = ("train", *TINY, "--steps", "4", "--out", str(out_dir))
    assert run(capsys, *again)[0] == 0  # as the message says


def test_sample_takes_no_progress_as_train_does(capsys, tmp_path):
    """``sample`` drew its bar with no way to turn it off (try-out 10, F8)."""
    out_dir = tmp_path / "run"
    assert run(capsys, "train", *TINY, "--steps", "2", "--out", str(out_dir))[0] == 0
    n = "1100"  # more than one batch of samples: the bar is drawn
    code, _, err = run(capsys, "sample", str(out_dir), "-n", n, "--out", str(tmp_path / "a.npy"))
    assert code == 0 and "sample:" in err
    code, _, err = run(
        capsys, "sample", str(out_dir), "-n", n, "--no-progress", "--out", str(tmp_path / "b.npy")
    )
    assert code == 0 and "sample:" not in err, err


def test_train_names_a_key_given_twice(capsys):
    code, out, err = run(capsys, "train", "hidden=16", "model.hidden=32", "--dry-run")
    assert code == 0 and json.loads(out)["model"]["hidden"] == 32
    assert "note: model.hidden is given 2 times (16, 32): the last, 32, is used" in err


def test_evaluate_aligns_its_text_on_the_longest_key(capsys, tmp_path):
    """Keys longer than 24 characters pushed their colons out of line (try-out 10, F14)."""
    out_dir = tmp_path / "run"
    assert run(capsys, "train", *TINY, "--steps", "2", "--out", str(out_dir))[0] == 0
    code, out, _ = run(capsys, "evaluate", str(out_dir), "--json")
    keys = [k for k, v in json.loads(out).items() if v is not None and not isinstance(v, dict)]
    assert max(map(len, keys)) > 24  # e.g. inverse_solve_error_bound
    code, out, _ = run(capsys, "evaluate", str(out_dir))
    lines = [ln for ln in out.splitlines() if ln.strip().split(":")[0] in keys]
    assert len(lines) == len(keys) and len({ln.index(":") for ln in lines}) == 1, out


def test_a_range_of_one_value_is_written_once():
    """``got 11..11`` for the one label 11 (try-out 10, F16)."""
    from iresnet.app.scoring import _span

    assert _span(np.array([11])) == "11" and _span(np.array([3, 11, 5])) == "3..11"


def test_a_resume_sets_earlier_evaluations_aside_by_their_step(capsys, tmp_path):
    """``eval.json`` of an interrupted run stayed beside the resumed run's new weights under
    the plain name (try-out 10, F6): it now carries the step it scored; nothing is deleted."""
    out_dir = tmp_path / "run"
    assert run(capsys, "train", *TINY, "--steps", "4", "--out", str(out_dir))[0] == 0
    assert run(capsys, "evaluate", str(out_dir))[0] == 0
    assert run(capsys, "evaluate", str(out_dir), "--n-test", "10")[0] == 0
    assert run(capsys, "train", "--resume", str(out_dir), "--steps", "6")[0] == 0
    names = sorted(p.name for p in out_dir.glob("eval*.json"))
    assert names == ["eval-n10-step4.json", "eval-step4.json"], names
    assert json.loads((out_dir / "eval-step4.json").read_text())["weights_step"] == 4
    # a name already taken is not a reason to leave eval.json in place (try-out 11, F2)
    (out_dir / "eval.json").write_text(json.dumps({"weights_step": 4}))
    assert run(capsys, "train", "--resume", str(out_dir), "--steps", "8")[0] == 0
    assert not (out_dir / "eval.json").exists() and (out_dir / "eval-step4-2.json").is_file()


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--device", "tpu"], "unknown device 'tpu'"),
        (["data.name=foo"], "unknown data set 'foo'"),
        (["data.name=moons", "--data-dir", "/data"], "'moons' reads none"),
        (["data.train_subset=100"], "a training subset is drawn from an image set"),
        (["train.precision=fp16"], "fp16 needs a CUDA device"),
        (["train.batch_size=60000"], "exceeds the 50000 training samples (data.n_train)"),
        (
            ["digits", "data.train_subset=100", "train.batch_size=128"],
            "exceeds the 100 training images (data.train_subset); use train.batch_size=100",
        ),
        # tryout 13: a built-in set's own size was checked only after the summary and build
        (
            ["digits", "train.batch_size=5000"],
            "train.batch_size=5000 exceeds the 1438 training images of digits; use "
            "train.batch_size=1438 or less",
        ),
        (
            ["digits", "data.train_subset=5000"],
            "data.train_subset=5000 exceeds the 1438 training images of digits: use 1438",
        ),
        (
            ["digits", "data.train_subset=5000", "train.batch_size=4000"],
            "data.train_subset=5000 exceeds the 1438 training images of digits",
        ),
    ],
)
def test_config_mistakes_are_refused_before_the_summary(capsys, tmp_path, argv, message):
    """``--device tpu`` and ``data.name=foo`` were refused below the config summary, as if the
    run had started; ``model.coeff=1.5`` never was."""
    out_dir = tmp_path / "run"
    code, out, err = run(capsys, "train", *argv, "--out", str(out_dir), "--no-progress")
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not out_dir.exists()


def test_an_out_that_holds_a_run_is_refused_before_the_summary(capsys, tmp_path):
    """A second ``train --out R`` printed the config summary, as if it had started, and only
    then "R already holds a run"; so did an ``--out`` that is a file."""
    out_dir = tmp_path / "run"
    assert run(capsys, "train", *TINY, "--steps", "2", "--out", str(out_dir))[0] == 0
    config = (out_dir / "config.json").read_text()
    code, _, err = run(capsys, "train", *TINY, "model.coeff=0.5", "--out", str(out_dir))
    assert code == 2 and "already holds a run" in err and err.count("\n") == 1, err
    assert (out_dir / "config.json").read_text() == config
    afile = tmp_path / "notes.txt"
    afile.write_text("mine")
    code, _, err = run(capsys, "train", *TINY, "--out", str(afile))
    assert code == 2 and "is a file" in err and err.count("\n") == 1, err
    assert afile.read_text() == "mine"


def test_resuming_a_run_killed_while_drawing_its_figures_draws_the_missing_ones(capsys, tmp_path):
    """A ``kill -9`` during the final figures left a finished run without ``figure.png`` and
    with a half-written ``.figure.png.*.tmp``; ``--resume`` said "already finished"."""
    out_dir = tmp_path / "run"
    assert run(capsys, "train", *TINY, "--steps", "2", "--out", str(out_dir))[0] == 0
    (out_dir / "figure.png").unlink()
    stale = out_dir / ".figure.png.k3x9.tmp"
    stale.write_bytes(b"\x89PNG half")
    code, out, err = run(capsys, "train", "--resume", str(out_dir), "--dry-run")
    assert code == 0 and json.loads(out)["train"]["steps"] == 2 and stale.exists()
    code, out, err = run(capsys, "train", "--resume", str(out_dir))
    assert code == 0, err
    assert "already finished (2 of 2 steps); redrew its missing pictures: figure.png" in out
    assert (out_dir / "figure.png").stat().st_size > 1000 and not stale.exists()
    assert_figures_named(out_dir)
    code, _, err = run(capsys, "train", "--resume", str(out_dir))  # all there: as before
    assert code == 2 and "already finished (2 of 2 steps): extend it" in err
    (out_dir / "figure.png").unlink()
    (out_dir / "data.json").unlink()  # what the pictures are cannot be told: as before
    code, _, err = run(capsys, "train", "--resume", str(out_dir))
    assert code == 2 and "already finished (2 of 2 steps): extend it" in err


def test_sample_refuses_more_values_than_one_call_draws(capsys, tmp_path):
    """``sample -n 1000000000`` started at once (hours, GBs of output); the cap and the way
    past it are in ``--help``."""
    from iresnet.app.cli import SAMPLE_MAX_VALUES, _check_sample_size

    out_dir = tmp_path / "run"
    assert run(capsys, "train", *TINY, "--steps", "2", "--out", str(out_dir))[0] == 0
    most = SAMPLE_MAX_VALUES // 2  # 2-D points
    out = tmp_path / "s.npy"
    code, _, err = run(capsys, "sample", str(out_dir), "-n", str(most + 1), "--out", str(out))
    assert code == 2 and len(err.splitlines()) == 1 and not out.exists(), err
    assert f"(--num {most} here): draw more in several calls with different --seed" in err
    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    assert f"at most {SAMPLE_MAX_VALUES:,} values" in " ".join(capsys.readouterr().out.split())
    _check_sample_size(most, 2, 1)  # the cap itself is drawn
    with pytest.raises(ConfigError, match="at each of 10 contexts"):
        _check_sample_size(most // 10 + 1, 2, 10)


def test_the_summary_counts_steps_and_names_the_training_subset():
    """Tryout 13: "train 1 steps", and a training subset the summary left out."""
    from iresnet.app.cli import _config_summary
    from iresnet.app.config import Config
    from iresnet.app.presets import get_preset

    one = _config_summary(Config().override(["train.steps=1", "train.warmup_steps=5"]))
    assert "; train 1 step, batch" in one and "the run's 1 step, so" in one
    assert "; train 2 steps, batch" in _config_summary(Config().override(["train.steps=2"]))
    subset = _config_summary(get_preset("digits").override(["data.train_subset=100"]))
    assert "data digits (100 training images, data.train_subset); train" in subset
    assert "train_subset" not in _config_summary(get_preset("digits"))


def test_a_resumed_run_says_where_it_resumed_from(tmp_path, capsys):
    """Tryout 13: ``--resume`` printed the summary of a fresh run and nothing else."""
    out_dir = tmp_path / "run"
    code, _, err = run(capsys, "train", *TINY, "--steps", "5", "--out", str(out_dir))
    assert code == 0, err
    assert "resumed" not in err
    argv = ["train", "--resume", str(out_dir), "--steps", "7", "--no-progress"]
    code, _, err = run(capsys, *argv)
    assert code == 0, err
    assert "resumed from step 5 of 7" in err.splitlines()


def test_an_idx_sets_size_from_its_header_refuses_a_batch_before_the_summary(capsys, tmp_path):
    """Tryout 13: fashion-mnist with ``train.batch_size=70000`` was refused after the summary
    and the model build; the training file's header gives its size (the user's files, so not
    assumed to be the published 60000)."""
    from tests.datasets.test_images import _write_mnist

    _write_mnist(tmp_path / "fm", "train", 30, gz=True)
    _write_mnist(tmp_path / "fm", "test", 10, gz=True)
    argv = ["train", "fashion-mnist", "--data-dir", str(tmp_path / "fm"), "--no-progress"]
    code, _, err = run(capsys, *argv, "train.batch_size=31", "--out", str(tmp_path / "r"))
    assert code == 2 and err.count("\n") == 1, err
    assert "train.batch_size=31 exceeds the 30 training images of fashion-mnist" in err
    code, _, err = run(capsys, *argv, "data.train_subset=40", "--out", str(tmp_path / "r"))
    assert code == 2 and err.count("\n") == 1, err
    assert "data.train_subset=40 exceeds the 30 training images of fashion-mnist" in err
    assert not (tmp_path / "r").exists()


def test_an_image_set_without_its_files_is_refused_before_the_summary_as_by_a_dry_run(
    capsys, tmp_path
):
    """``iresnet train mnist`` without the files was refused only after the config summary
    (when training read them), and ``--dry-run`` passed. Both now refuse first, in one line
    that says how to get the files; nothing is written."""
    out_dir, folder = tmp_path / "run", tmp_path / "files"
    folder.mkdir()
    _write_mnist_files(folder, splits=("train",))
    train = ("train", "mnist", "--steps", "1", "--no-progress", "--out", str(out_dir))
    for dry in ([], ["--dry-run"]):
        code, out, err = run(capsys, *train, *dry)
        assert (code, out) == (2, ""), err
        assert err == (
            "iresnet train: error: data set 'mnist' needs the folder holding its files: "
            "--data-dir DIR (data.data_dir=DIR) with the four MNIST IDX files (from "
            "yann.lecun.com/exdb/mnist or a mirror)\n"
        )
        code, out, err = run(capsys, *train, "--data-dir", str(folder), *dry)
        assert (code, out) == (2, ""), err
        assert err == (
            "iresnet train: error: mnist test split not found: expected "
            "t10k-images-idx3-ubyte[.gz] and t10k-labels-idx1-ubyte[.gz] in one of: "
            f"{folder}, {folder / 'MNIST' / 'raw'}. Get the four IDX files from the MNIST site "
            "(yann.lecun.com/exdb/mnist or a mirror) or use the folder that holds a torchvision "
            "MNIST/raw folder.\n"
        )
    assert not out_dir.exists()


def test_your_data_file_not_there_is_refused_before_the_summary_as_by_a_dry_run(capsys, tmp_path):
    """``--data`` or ``--context`` naming no file passed ``--dry-run`` and was refused only
    after the summary, as an image set's files were. Both refuse first now; the file's rows
    are read as training starts, where one of only empty fields is refused in one line."""
    points, gone, out_dir = tmp_path / "x.npy", tmp_path / "gone.csv", tmp_path / "run"
    np.save(points, np.random.default_rng(0).normal(size=(40, 2)))
    for dry in ([], ["--dry-run"]):
        for flags in (["--data", str(gone)], ["--data", str(points), "--context", str(gone)]):
            code, out, err = run(
                capsys, "train", *flags, "--steps", "1", "--out", str(out_dir), *dry
            )
            assert (code, out) == (2, ""), err
            assert err == (
                f"iresnet train: error: {gone}: data file does not exist; pass the path of a "
                ".npy or .csv file\n"
            )
    empty = tmp_path / "empty.csv"
    empty.write_text(",\n,\n")
    code, _, err = run(capsys, "train", "--data", str(empty), "--steps", "1", "--out", str(out_dir))
    assert code == 2 and err.splitlines()[-1] == (
        f"iresnet train: error: {empty}: no values: its 2 rows hold only empty fields (like "
        "',,'); put the data in the file (save or export it again)"
    )
    assert not out_dir.exists()


def test_a_dry_run_checks_the_config_but_not_the_machine(capsys, tmp_path):
    """Tryout 13: ``--dry-run`` ("check the config") printed configs that train refuses before
    its summary (a batch above data.n_train, an --out that holds a run); it runs those checks
    now, but not whether this machine has the device, so a GPU config prints on a laptop."""
    from iresnet.app.runs import Run

    for argv, message in (
        (["data.n_train=10", "train.batch_size=11"], "exceeds the 10 training samples"),
        (["digits", "data.train_subset=63", "train.batch_size=64"], "(data.train_subset)"),
        (["digits", "train.batch_size=5000"], "exceeds the 1438 training images of digits"),
        (["digits", "--data-dir", str(tmp_path)], "'digits' reads none"),
        (["train.precision=fp16", "--device", "cpu"], "fp16 needs a CUDA device"),
    ):
        code, out, err = run(capsys, "train", *argv, "--dry-run")
        assert code == 2 and message in err and err.count("\n") == 1 and not out, (argv, err)
    out_dir = tmp_path / "run"
    assert run(capsys, "train", *TINY, "--steps", "2", "--out", str(out_dir))[0] == 0
    code, out, err = run(capsys, "train", *TINY, "--out", str(out_dir), "--dry-run")
    assert code == 2 and "already holds a run" in err and not out, err
    # a device this machine lacks is the machine's business, not the config's
    code, out, err = run(capsys, "train", "--device", "cuda:7", "--dry-run")
    assert code == 0 and json.loads(out)["train"]["device"] == "cuda:7", err
    code, out, err = run(capsys, "train", "--device", "cuda:7", "train.precision=fp16", "--dry-run")
    assert code == 0, err
    # a resumed run's dry run checks its config too, and still prints it
    code, out, err = run(capsys, "train", "--resume", str(out_dir), "--steps", "4", "--dry-run")
    assert code == 0 and json.loads(out)["train"]["steps"] == 4, err
    assert Run(out_dir).last_step() == 2  # nothing trained


def test_an_image_preset_trains_without_warning_about_its_own_roulette(capsys, tmp_path):
    """``iresnet train digits`` as shipped: the preset's Geometric(1/2), kept on measurement,
    is one note, not a RouletteVarianceWarning (a user try-out)."""
    pytest.importorskip("sklearn")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, _, err = run(
            capsys,
            "train",
            "digits",
            *TINY,
            "--steps",
            "1",
            "--out",
            str(tmp_path / "r"),
            "--no-progress",
            "train.warmup_steps=0",
        )
    assert code == 0, err
    assert not [w for w in caught if "RouletteVariance" in w.category.__name__]
    assert "iresnet: note: the preset's roulette (geometric, p=0.5)" in err


def test_an_out_path_through_a_file_is_refused_up_front(tmp_path, capsys):
    """Try-out 17: ``sample --out afile/s.npy`` with ``afile`` a file said only ``afile: File
    exists``, after sampling."""
    out_dir = tmp_path / "r"
    code, _, err = run(
        capsys, "train", *TINY, "--steps", "1", "--no-progress", "--out", str(out_dir)
    )
    assert code == 0, err
    afile = tmp_path / "afile"
    afile.write_text("x")
    for command in (
        ["sample", str(out_dir), "-n", "4"],
        ["score", str(out_dir), "--data", str(afile)],
    ):
        code, _, err = run(capsys, *command, "--out", str(afile / "sub" / "s.npy"))
        assert code == 2 and f"{afile} is a file, not a folder" in err, err
    assert afile.read_text() == "x"


def test_a_run_trained_with_exact_logdets_is_scored_exactly_above_64_dims(tmp_path, capsys):
    """Try-out 17: a 65-D run trained with the exact log-det (its Jacobian fits up to 256
    dimensions) was evaluated and scored with the roulette, noisy, by the 64-D default."""
    data = tmp_path / "d65.npy"
    np.save(data, np.random.default_rng(0).normal(size=(120, 65)))
    out_dir = tmp_path / "r"
    argv = ["train", *TINY, "data.max_dim=65", "--data", str(data), "--steps", "2"]
    code, _, err = run(capsys, *argv, "--no-progress", "--out", str(out_dir))
    assert code == 0, err
    code, out, err = run(capsys, "evaluate", str(out_dir), "--json", "--n-inverse", "4")
    assert code == 0, err
    result = json.loads(out)
    assert result["estimator"] == "exact" and result["test_nll_se"] > 0
    scores = tmp_path / "s.csv"
    code, out, err = run(capsys, "score", str(out_dir), "--data", str(data), "--out", str(scores))
    assert code == 0, err
    assert "exact log-det" in out and "log_prob_se" not in out


def test_evaluate_shows_a_progress_bar_over_its_test_batches(tmp_path, capsys, monkeypatch):
    """Try-out 17: a full Fashion-MNIST evaluation ran 1.5-2.6 minutes without a sign of
    life; the bar is on stderr (stdout stays the result) and ``--no-progress`` turns it off."""
    from iresnet.app.tasks.density import DensityTask

    out_dir = tmp_path / "r"
    code, _, err = run(
        capsys, "train", *TINY, "--steps", "1", "--no-progress", "--out", str(out_dir)
    )
    assert code == 0, err
    monkeypatch.setattr(DensityTask, "eval_batch", 8)  # the tiny run's 128 test points: 16
    code, out, err = run(capsys, "evaluate", str(out_dir), "--json", "--n-inverse", "4")
    assert code == 0 and json.loads(out)["n_test"] >= 8 * 8
    assert "evaluate: 100%" in err and "batch" in err
    code, out, err = run(capsys, "evaluate", str(out_dir), "--json", "--no-progress")
    assert code == 0 and "evaluate:" not in err
