"""The command line as a user's shell sees it: each mistake exits 2 with one line on stderr and
no traceback, and a run folder that must not change does not change."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import TINY_RUN

TINY = [*TINY_RUN, "--no-progress"]


def iresnet(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "iresnet", *argv],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )


def one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    """The mistake's one line (exit 2, no traceback), checked to hold every needle."""
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if "error:" in ln]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file of a folder by its SHA-256 (what "unchanged" means)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny run on a user CSV (in its own folder) and the CSV."""
    root = tmp_path_factory.mktemp("trained")
    data = root / "points.csv"
    np.savetxt(data, np.random.default_rng(0).normal(size=(300, 2)), delimiter=",")
    out = root / "run"
    result = iresnet(
        "train", *TINY, "--data", "points.csv", "--steps", "5", "--out", "run", cwd=root
    )
    assert result.returncode == 0, result.stderr
    return out, data


@pytest.mark.parametrize(
    "rows,needles",
    [
        (np.tile([[1.0, 2.0]], (500, 1)), ["column 1 is constant", "drop the column"]),
        (np.c_[np.random.default_rng(1).normal(size=500), np.full(500, 3.0)], ["column 2"]),
        (
            np.random.default_rng(2).integers(0, 5, size=(500, 2)).astype(float),
            ["takes only 5 values", "data.dequantize=uniform", "data.dequantize=off"],
        ),
    ],
    ids=["identical-rows", "constant-column", "integer-valued"],
)
def test_data_a_density_cannot_honestly_fit_is_refused(tmp_path, rows, needles):
    data = tmp_path / "x.npy"
    np.save(data, rows)
    result = iresnet(
        "train", *TINY, "--data", str(data), "--steps", "2", "--out", str(tmp_path / "r")
    )
    one_line_error(result, str(data), *needles)
    assert not (tmp_path / "r").exists()


def test_a_pandas_index_column_is_refused_and_can_be_dropped(tmp_path):
    data = tmp_path / "frame.csv"
    xy = np.random.default_rng(0).normal(size=(200, 2))
    data.write_text(",x,y\n" + "".join(f"{i},{a},{b}\n" for i, (a, b) in enumerate(xy)))
    result = iresnet(
        "train", *TINY, "--data", str(data), "--steps", "2", "--out", str(tmp_path / "r")
    )
    one_line_error(result, "to_csv(index=False)", "data.index_column=drop")
    result = iresnet(
        "train",
        *TINY,
        "data.index_column=drop",
        "--data",
        str(data),
        "--steps",
        "2",
        "--out",
        str(tmp_path / "r"),
    )
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "r" / "data.json").read_text())["event_shape"] == [2]
    # score reads the file as the run did (it refused it, advising a flag score does not take)
    plain = tmp_path / "plain.csv"
    np.savetxt(plain, xy, delimiter=",")
    scores = []
    for source in (data, plain):
        out = tmp_path / f"{source.stem}-scores.csv"
        result = iresnet("score", str(tmp_path / "r"), "--data", str(source), "--out", str(out))
        assert result.returncode == 0, result.stderr
        scores.append(np.genfromtxt(out, delimiter=",", names=True))
    assert len(scores[0]) == 200
    np.testing.assert_array_equal(scores[0]["log_prob"], scores[1]["log_prob"])
    # a run that refused the index: score's refusal offers what score can do, not a flag of
    # train's (it advised data.index_column=drop, which score does not take)
    result = iresnet(
        "train", *TINY, "--data", str(plain), "--steps", "2", "--out", str(tmp_path / "p")
    )
    assert result.returncode == 0, result.stderr
    result = iresnet(
        "score", str(tmp_path / "p"), "--data", str(data), "--out", str(tmp_path / "p-scores.csv")
    )
    one_line_error(result, "to_csv(index=False)", "data.index_column=refuse: the run's choice")
    assert "pass data.index_column=drop" not in result.stderr


def test_a_run_does_not_need_its_data_file_to_sample_or_certify(trained, tmp_path):
    run, data = trained
    moved = data.with_suffix(".away")
    data.rename(moved)
    try:
        for argv in (
            ("certify", str(run)),
            ("sample", str(run), "-n", "5", "--out", str(tmp_path / "s.npy")),
        ):
            result = iresnet(*argv, cwd=tmp_path)  # another folder, and the file is gone
            assert result.returncode == 0, (argv, result.stderr)
        one_line_error(
            iresnet("evaluate", str(run), cwd=tmp_path), "is gone from", "put the file back"
        )
    finally:
        moved.rename(data)
    result = iresnet("evaluate", str(run), "--json", "--n-inverse", "4", cwd=tmp_path)
    assert result.returncode == 0, result.stderr  # relative --data path, another folder
    info = json.loads((run / "data.json").read_text())
    assert info["file"]["path"] == "points.csv" and Path(info["file"]["absolute"]).is_absolute()


def test_evaluate_refuses_data_that_changed_since_training(trained, tmp_path):
    run, data = trained
    original = data.read_bytes()
    try:
        np.savetxt(data, np.random.default_rng(5).normal(size=(300, 2)) * 50, delimiter=",")
        one_line_error(
            iresnet("evaluate", str(run)),
            "data changed since this run was trained",
            f"({data.resolve()} changed)",
            "--allow-changed-data",
        )
        result = iresnet("evaluate", str(run), "--json", "--allow-changed-data", "--n-inverse", "4")
        assert result.returncode == 0 and json.loads(result.stdout)["test_nll"] > 100
        before = snapshot(run)
        one_line_error(iresnet("train", "--resume", str(run), "--steps", "10"), "data changed")
        assert snapshot(run) == before
    finally:
        data.write_bytes(original)


def test_one_writer_per_run_folder_and_a_dead_writer_does_not_block(trained):
    run, _ = trained
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from iresnet.app.runs import Run; r = Run(sys.argv[1]); "
            "r.acquire(); print('held', flush=True); time.sleep(120)",
            str(run),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        before = snapshot(run)
        one_line_error(
            iresnet("train", "--resume", str(run), "--steps", "10"),
            f"being written by process {holder.pid}",
        )
        assert snapshot(run) == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    result = iresnet("train", "--resume", str(run), "--steps", "10", "--no-progress")
    assert result.returncode == 0, result.stderr  # the OS dropped the dead holder's lock


@pytest.mark.parametrize(
    "argv,needles",
    [
        (
            ["train", "--seed", str(2**70), "--steps", "2"],
            ["train.seed must be an integer in [0, 2**63)"],
        ),
        (["train", "--seed", "-1", "--steps", "2"], ["train.seed must be an integer"]),
        (["train", "--device", "foo", "--steps", "2"], ["foo"]),
        (["train", "data.dequantize=maybe"], ["data.dequantize must be one of"]),
        (["evaluate", "/no/such/run"], ["no such run folder"]),
        (["sample", "/no/such/run", "--temperature", "nan"], ["--temperature"]),
        (["evaluate", "/no/such/run", "--n-inverse", "-5"], ["--n-inverse must be >= 1"]),
    ],
)
def test_mistakes_give_one_line(tmp_path, argv, needles):
    one_line_error(
        iresnet(*argv, "--out", str(tmp_path / "r")) if argv[0] == "train" else iresnet(*argv),
        *needles,
    )
    assert not (tmp_path / "r").exists()


def test_debug_shows_the_traceback():
    result = iresnet("--debug", "evaluate", "/no/such/run")
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_a_read_only_run_folder_still_answers(trained):
    run, _ = trained
    if os.geteuid() == 0:
        pytest.skip("root ignores permissions")
    os.chmod(run, 0o555)
    try:
        result = iresnet("evaluate", str(run), "--json", "--n-inverse", "4")
    finally:
        os.chmod(run, 0o755)
    assert result.returncode == 0 and "test_nll" in json.loads(result.stdout)
    assert "eval.json not saved" in result.stderr


def test_a_data_run_is_named_after_its_file_and_says_what_its_numbers_are(tmp_path):
    data = tmp_path / "my-measurements.npy"
    np.save(data, np.random.default_rng(0).normal(size=(300, 2)))
    result = iresnet("train", *TINY, "--data", str(data), "--steps", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "runs" / "my-measurements" / "config.json").is_file()
    last = result.stdout.strip().splitlines()[-1]
    assert "nats" in last and "60 test samples" in last and "EMA" in last, last
    lines = result.stderr.strip().splitlines()
    # the config in brief, and the note that 2 steps never finish the 50-step warm-up
    assert len(lines) == 3 and lines[2].startswith("note: train.warmup_steps=50"), lines


def test_ctrl_c_exits_130_after_its_checkpoint(tmp_path):
    out = tmp_path / "r"
    proc = subprocess.Popen(
        [sys.executable, "-m", "iresnet", "train", *TINY, "--steps", "100000", "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (out / "metrics.jsonl").is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert any((out / "checkpoints").glob("step-*")), err


# --------------------------------------------------------------- conditional runs, as used
@pytest.fixture(scope="module")
def conditional(tmp_path_factory) -> Path:
    """A tiny conditional run: 2-D points, one context uniform on [0, 1] (training mean about
    0.5, std about 0.29, so mean +- 4 std is about -0.65..1.65)."""
    root = tmp_path_factory.mktemp("conditional")
    rng = np.random.default_rng(0)
    c = rng.uniform(size=(300, 1))
    np.savetxt(root / "x.csv", rng.normal(size=(300, 2)) + c, delimiter=",")
    np.savetxt(root / "c.csv", c, delimiter=",")
    argv = ["train", *TINY, "--data", "x.csv", "--context", "c.csv", "--steps", "5"]
    result = iresnet(*argv, "--out", "run", cwd=root)
    assert result.returncode == 0, result.stderr
    return root / "run"


def test_a_changed_context_file_is_named_not_the_data_file(conditional):
    contexts = conditional.parent / "c.csv"
    original = contexts.read_bytes()
    try:
        contexts.write_bytes(original.replace(b"e-01", b"e-02", 1))
        result = iresnet("evaluate", str(conditional))
        one_line_error(result, f"({contexts.resolve()} changed)")
        assert "x.csv" not in result.stderr
    finally:
        contexts.write_bytes(original)


def warnings_of(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [ln for ln in result.stderr.splitlines() if "warning" in ln]


def test_a_conditional_sample_file_says_which_context_each_row_came_from(conditional, tmp_path):
    result = iresnet(
        "sample",
        str(conditional),
        "--context",
        "0.25;0.75",
        "-n",
        "3",
        "--out",
        "s.csv",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    lines = (tmp_path / "s.csv").read_text().splitlines()
    assert lines[0] == "x1,x2,c1" and len(lines) == 7
    table = np.loadtxt(tmp_path / "s.csv", delimiter=",", skiprows=1)
    assert table[:, 2].tolist() == [0.25] * 3 + [0.75] * 3
    result = iresnet(
        "sample",
        str(conditional),
        "--context",
        "0.25;0.75",
        "-n",
        "3",
        "--out",
        "s.npy",
        cwd=tmp_path,
    )
    assert result.returncode == 0 and "their contexts to s.contexts.npy" in result.stdout
    x, c = np.load(tmp_path / "s.npy"), np.load(tmp_path / "s.contexts.npy")
    assert x.shape == (6, 2) and c.tolist() == [[0.25]] * 3 + [[0.75]] * 3
    np.testing.assert_allclose(x, table[:, :2], rtol=1e-6)  # the same seed, the same samples

    def score_pair(contexts: str, out: str) -> None:
        """Score the samples ``s.npy`` at the contexts of file ``contexts``."""
        args = ["--data", "s.npy", "--context", contexts, "--out", out]
        result = iresnet("score", str(conditional), *args, cwd=tmp_path)
        assert result.returncode == 0, result.stderr

    # the pair reads back as data and contexts, row by row
    score_pair("s.contexts.npy", "logp.csv")
    # the headered .csv reads back too: its c columns are the contexts, no --context needed
    result = iresnet(
        "score", str(conditional), "--data", "s.csv", "--out", "logp2.csv", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    logp = np.loadtxt(tmp_path / "logp.csv", delimiter=",", skiprows=1, ndmin=2)
    logp2 = np.loadtxt(tmp_path / "logp2.csv", delimiter=",", skiprows=1, ndmin=2)
    np.testing.assert_allclose(logp2[:, 0], logp[:, 0], rtol=1e-5)  # .csv holds 9 digits
    # a 1-D file of contexts for a one-context run is one context per point, as (N, 1) is
    np.save(tmp_path / "flat.npy", c[:, 0])
    score_pair("flat.npy", "f.csv")
    flat = np.loadtxt(tmp_path / "f.csv", delimiter=",", skiprows=1, ndmin=2)
    np.testing.assert_allclose(flat[:, 0], logp[:, 0])
    # its contexts given twice (the columns and --context): say which to drop
    one_line_error(
        iresnet(
            "score",
            str(conditional),
            "--data",
            "s.csv",
            "--context",
            "0.5",
            "--out",
            "o.csv",
            cwd=tmp_path,
        ),
        "leave out --context",
    )
    # a plain headerless file of points still needs its contexts
    np.savetxt(tmp_path / "plain.csv", x, delimiter=",")
    one_line_error(
        iresnet("score", str(conditional), "--data", "plain.csv", "--out", "o.csv", cwd=tmp_path),
        "this run is conditional: pass --context",
    )
    # an existing contexts file is not replaced without --overwrite
    result = iresnet("sample", str(conditional), "--out", "s2.npy", cwd=tmp_path)
    assert result.returncode == 0 and (tmp_path / "s2.contexts.npy").is_file()
    # the .npy that sample wrote, scored without its pair: the error names the pair
    one_line_error(
        iresnet("score", str(conditional), "--data", "s2.npy", "--out", "o2.csv", cwd=tmp_path),
        "(here: --context s2.contexts.npy, the contexts `iresnet sample` wrote beside it)",
    )
    (tmp_path / "s2.npy").unlink()
    one_line_error(
        iresnet("sample", str(conditional), "--out", "s2.npy", cwd=tmp_path),
        "s2.contexts.npy exists",
    )


def test_an_unconditional_sample_csv_has_a_header_and_scores_as_it_is(trained, tmp_path):
    """A conditional ``.csv`` had its ``x1,...`` header and an unconditional one none: both
    carry it now, and ``score --data`` reads the file back (its header skipped)."""
    run, _ = trained
    for name in ("u.csv", "u.npy"):
        result = iresnet("sample", str(run), "-n", "4", "--out", name, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    assert (tmp_path / "u.csv").read_text().splitlines()[0] == "x1,x2"
    points = np.loadtxt(tmp_path / "u.csv", delimiter=",", skiprows=1)
    assert points.shape == (4, 2)
    assert np.load(tmp_path / "u.npy").shape == (4, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["u.csv", "u.npy"]
    result = iresnet("score", str(run), "--data", "u.csv", "--out", "s.csv", cwd=tmp_path)
    assert result.returncode == 0 and "scored 4 points" in result.stdout, result.stderr
    # the header changes nothing: the same points without it score the same
    np.savetxt(tmp_path / "bare.csv", points, delimiter=",", fmt="%.18e")
    result = iresnet("score", str(run), "--data", "bare.csv", "--out", "b.csv", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "s.csv").read_text() == (tmp_path / "b.csv").read_text()
    # one row scores; an empty file names score's own minimum, one row (it said 2)
    (tmp_path / "empty.csv").write_text("")
    result = iresnet("score", str(run), "--data", "empty.csv", "--out", "e.csv", cwd=tmp_path)
    one_line_error(result, "empty.csv", "at least 1 sample (row)")


def test_contexts_far_outside_the_training_range_warn_in_one_line_and_still_answer(
    conditional, tmp_path
):
    np.save(tmp_path / "x.npy", np.zeros((3, 2)))
    saved = json.loads((conditional / "data.json").read_text())["context_standardizer"]
    (mean,), (std,) = saved["mean"], saved["std"]
    span = f"{mean - 4 * std:.4g}..{mean + 4 * std:.4g}"  # about -0.65..1.65
    assert -0.3 > mean - 4 * std and 1.2 < mean + 4 * std < 7
    inside = [
        ("sample", str(conditional), "--context", "1.2", "-n", "2", "--out", "a.npy"),
        ("score", str(conditional), "--data", "x.npy", "--context", "-0.3", "--out", "a.csv"),
    ]
    for argv in inside:
        result = iresnet(*argv, cwd=tmp_path)
        assert result.returncode == 0 and warnings_of(result) == [], result.stderr
    outside = [
        ("sample", str(conditional), "--context", "0.5;7", "-n", "2", "--out", "b.npy"),
        ("score", str(conditional), "--data", "x.npy", "--context", "7", "--out", "b.csv"),
    ]
    for argv in outside:
        result = iresnet(*argv, cwd=tmp_path)
        assert result.returncode == 0, result.stderr  # never refused
        (line,) = warnings_of(result)
        assert line.startswith(f"iresnet {argv[0]}: warning: "), line
        for needle in ("column 1 = 7 ", f"training range mean +- 4 std: {span}", "extrapolates"):
            assert needle in line, (needle, line)


def test_score_takes_a_context_as_sample_does(conditional, tmp_path):
    np.save(tmp_path / "x.npy", np.random.default_rng(1).normal(size=(5, 2)))
    np.save(tmp_path / "c.npy", np.full((5, 1), 0.5))
    for context, out in (("c.npy", "file.csv"), ("0.5", "number.csv")):
        result = iresnet(
            "score",
            str(conditional),
            "--data",
            "x.npy",
            "--context",
            context,
            "--out",
            out,
            cwd=tmp_path,
        )
        assert result.returncode == 0, result.stderr
    assert (tmp_path / "number.csv").read_text() == (tmp_path / "file.csv").read_text()
    wrong = [
        iresnet(cmd, str(conditional), *argv, "--context", "1,2", "--out", out, cwd=tmp_path)
        for cmd, argv, out in (("score", ["--data", "x.npy"], "w.csv"), ("sample", [], "w.npy"))
    ]
    lines = [one_line_error(r, "expected contexts with 1 value per row, got 2") for r in wrong]
    assert lines[0].split("error: ")[1] == lines[1].split("error: ")[1]
    one_line_error(
        iresnet(
            "score",
            str(conditional),
            "--data",
            "x.npy",
            "--context",
            "0.1;0.2",
            "--out",
            "w.csv",
            cwd=tmp_path,
        ),
        "2 context rows for 5 points",
    )


def test_a_scalar_context_file_is_named_by_its_shape(conditional, tmp_path):
    np.save(tmp_path / "z.npy", np.float64(0.5))
    np.save(tmp_path / "x.npy", np.zeros((3, 2)))
    for argv in (
        ("sample", str(conditional), "--context", "z.npy", "--out", "s.npy"),
        ("score", str(conditional), "--data", "x.npy", "--context", "z.npy", "--out", "o.csv"),
    ):
        one_line_error(iresnet(*argv, cwd=tmp_path), "z.npy", "shape (m, k) or (k,)", "of shape ()")


def test_a_reader_that_stops_early_is_no_error():
    """`iresnet presets | head -1`: the closed pipe ends the command quietly (it printed
    "error: Broken pipe")."""
    reader = subprocess.Popen(["true"], stdin=subprocess.PIPE)
    reader.wait()  # gone before anything is written: every write meets a closed pipe
    result = subprocess.run(
        [sys.executable, "-m", "iresnet", "presets"],
        stdout=reader.stdin,
        stderr=subprocess.PIPE,
        text=True,
        timeout=300,
    )
    reader.stdin.close()
    assert result.returncode == 141 and result.stderr == ""


def test_a_network_too_large_for_memory_is_one_line(tmp_path):
    # a 10^7 x 10^7 hidden layer: 400 TB, refused by the allocator at once
    out = tmp_path / "run"
    result = iresnet(
        "train", "toy-8gaussians", "model.hidden=10000000", "train.steps=1", "--out", str(out)
    )
    line = one_line_error(result, "out of memory", "GiB asked", "model.hidden")
    assert line.startswith("iresnet train: error:"), line


def test_an_out_inside_a_run_under_a_file_or_a_dangling_link_is_refused_before_the_summary(
    trained, tmp_path
):
    run, _ = trained
    afile = tmp_path / "afile"
    afile.write_text("keep me\n")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    project = tmp_path / "project"  # a folder with some other tool's config.json is no run
    project.mkdir()
    (project / "config.json").write_text("{}\n")
    for out, needles in (
        (run / "checkpoints", ("lies inside the run folder", "outside it")),
        (afile / "sub", ("is a file", "choose another --out")),
        (tmp_path / "dangling", ("is a link to", "does not exist")),
    ):
        result = iresnet("train", *TINY, "--out", str(out))
        one_line_error(result, *needles)
        assert "preset " not in result.stdout, result.stdout  # before the config summary
    assert afile.read_text() == "keep me\n"
    assert not (tmp_path / "nowhere").exists()
    ok = iresnet("train", *TINY, "--steps", "2", "--out", str(project / "run"))
    assert ok.returncode == 0, ok.stderr[-2000:]
