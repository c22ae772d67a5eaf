"""Data-parallel training under torchrun (gloo, 2 processes) and runs that survive signals and
kill -9. These spawn processes, so they take a few seconds each."""

import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from iresnet.app.checkpoint import list_checkpoints, verify_checkpoint
from iresnet.app.runs import Run

TINY = [
    "model.n_blocks=2",
    "model.hidden=16",
    "data.n_train=512",
    "data.n_test=128",
    "train.batch_size=64",
    "train.eval_every=100",
    "train.checkpoint_every=2",
    "train.eval_batches=1",
    "train.ema_decay=0",
    "train.threads=1",
    "train.keep_last=3",
]


def iresnet(*args, nproc=1, timeout=240, **kw):
    cmd = [sys.executable, "-m", "iresnet", "train", *TINY, "--no-progress", *args]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def weights(run):
    return load_file(str(run / "model.safetensors"))


def test_two_processes_match_one(tmp_path):
    one = iresnet("--steps", "6", "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    two = iresnet("--steps", "6", "--out", str(tmp_path / "two"), nproc=2)
    assert two.returncode == 0, two.stderr
    assert two.stderr.count("preset toy-8gaussians:") == 1  # the config is printed once, by rank 0
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
    # Only rank 0 wrote: one metrics row per logged step, the same files as the 1-process run.
    rows = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == len((tmp_path / "one" / "metrics.jsonl").read_text().splitlines())
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(
        p.name for p in (tmp_path / "one").iterdir()
    )
    # Resumed by one process, it would continue with another place in the data: refused.
    alone = iresnet("--resume", str(tmp_path / "two"), "--steps", "8")
    assert alone.returncode == 2 and "resume it with --nproc 2" in alone.stderr, alone.stderr
    # With --nproc 2, a resume given overrides (TINY's) is refused once, before the launch.
    both = iresnet("--resume", str(tmp_path / "two"), "--steps", "8", nproc=2)
    assert both.returncode == 2 and both.stderr.count("error:") == 1, both.stderr
    assert "not KEY=VALUE overrides" in both.stderr and "Traceback" not in both.stderr


def _wait_for_checkpoint(folder, proc, deadline=180):
    start = time.time()
    while time.time() - start < deadline:
        if list_checkpoints(folder) and proc.poll() is None:
            return
        if proc.poll() is not None:
            raise AssertionError(f"process ended early: {proc.stderr.read()}")
        time.sleep(0.2)
    raise AssertionError("no checkpoint appeared")


def _start(out, steps):
    cmd = [
        sys.executable,
        "-m",
        "iresnet",
        "train",
        *TINY,
        "--no-progress",
        "--steps",
        str(steps),
        "--out",
        str(out),
    ]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_kill_9_then_resume_gives_same_weights(tmp_path):
    full = iresnet("--steps", "40", "--out", str(tmp_path / "full"))
    assert full.returncode == 0, full.stderr
    proc = _start(tmp_path / "killed", 40)
    _wait_for_checkpoint(tmp_path / "killed" / "checkpoints", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "model.safetensors").exists()
    resumed = subprocess.run(
        [
            sys.executable,
            "-m",
            "iresnet",
            "train",
            "--resume",
            str(tmp_path / "killed"),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert resumed.returncode == 0, resumed.stderr
    a, b = weights(tmp_path / "full"), weights(tmp_path / "killed")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    for ckpt in list_checkpoints(tmp_path / "killed" / "checkpoints"):
        verify_checkpoint(ckpt)  # none is torn
    assert not [
        p for p in (tmp_path / "killed" / "checkpoints").iterdir() if p.name.startswith(".tmp")
    ]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_leaves_a_valid_checkpoint(tmp_path, sig):
    proc = _start(tmp_path / "run", 100_000)
    _wait_for_checkpoint(tmp_path / "run" / "checkpoints", proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err  # so that `iresnet train ... && next` stops
    assert "stopped by a signal" in out
    ckpts = list_checkpoints(tmp_path / "run" / "checkpoints")
    manifest = verify_checkpoint(ckpts[-1])
    assert f"step {manifest['step']}" in out  # the checkpoint is the step the run stopped at


def test_a_run_resumes_only_with_the_process_count_that_trained_it(tmp_path):
    """A 1-process run resumed with ``--nproc 2`` failed in rank 1 (``KeyError: '1'``: the
    checkpoint keeps one place in the data per process) under torchrun's traceback; a run that
    holds a run given to ``--nproc 2 --out`` was refused once per rank, then the traceback.
    Both are one line before the launch now."""
    run = tmp_path / "one"
    assert iresnet("--steps", "4", "--out", str(run)).returncode == 0
    assert Run(run).process_count() == 1
    more = iresnet("--resume", str(run), "--steps", "6", nproc=2)
    assert more.returncode == 2 and "Traceback" not in more.stderr, more.stderr
    assert f"{run} was trained with --nproc 1; resume it with --nproc 1" in more.stderr
    again = iresnet("--out", str(run), nproc=2)
    assert again.returncode == 2 and "Traceback" not in again.stderr, again.stderr
    assert again.stderr.count("error:") == 1 and "holds a run" in again.stderr


@pytest.mark.parametrize(
    ("visible", "words"),
    [(1, "1 CUDA device; use cuda:0"), (2, "2 CUDA devices; use one of cuda:0 to cuda:1")],
)
def test_a_cuda_index_past_the_devices_counts_them_in_words(monkeypatch, visible, words):
    """The message said "this machine has 1 CUDA device(s)"."""
    from iresnet.app.distributed import resolve_device
    from iresnet.errors import ConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    with pytest.raises(ConfigError) as refused:
        resolve_device("cuda:5")
    assert str(refused.value) == f"device 'cuda:5': this machine has {words}"
