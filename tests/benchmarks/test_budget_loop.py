"""The benchmarks' peer training loop (``benchmarks/bench/peers.py``): a run interrupted and
resumed from its checkpoint ends where the uninterrupted run ends, and its clocks carry over.
(Speeds are measured by the benchmark scripts, never here.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from bench.peers import Resumable, train_for_budget  # noqa: E402

from iresnet.app.batches import EpochBatches  # noqa: E402

DATA = torch.randn(40, 3, generator=torch.Generator().manual_seed(0))


def _run(
    max_steps: int, checkpoint_path: Path | None, after_step=None
) -> tuple[nn.Module, object, EpochBatches]:
    torch.manual_seed(0)
    model = nn.Linear(3, 3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    batches = EpochBatches(DATA.shape[0], 8, seed=1)

    def loss_fn(x: torch.Tensor) -> torch.Tensor:
        noise = torch.rand_like(x)  # the global RNG, as dequantisation noise draws it
        return (model(x + noise) - x).pow(2).mean()

    checkpoint = None
    if checkpoint_path is not None:
        checkpoint = Resumable(checkpoint_path, 1e9, batches.state, batches.load_state)
    run = train_for_budget(
        model,
        optimizer,
        loss_fn,
        lambda: DATA[batches.next()],
        budget=1e9,
        max_steps=max_steps,
        lr_at=lambda step, spent: 1e-2 / (1 + step),
        clip=1.0,
        checkpoint=checkpoint,
        after_step=after_step,
    )
    return model, run, batches


def test_a_resumed_run_ends_where_the_uninterrupted_one_does(tmp_path):
    whole, whole_run, whole_batches = _run(13, None)
    path = tmp_path / "peer_checkpoint.pt"
    _run(6, path)  # stopped after 6 steps (an epoch is 5 batches: the position crosses one)
    torch.manual_seed(123)  # whatever the new process's RNG holds is replaced by the saved one
    resumed, resumed_run, resumed_batches = _run(13, path)
    for a, b in zip(whole.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
    assert resumed_run.steps == whole_run.steps == 13
    assert len(resumed_run.step_seconds) == 13
    assert resumed_batches.state() == whole_batches.state()


def test_the_budget_counts_the_cpu_seconds_of_earlier_processes(tmp_path):
    path = tmp_path / "peer_checkpoint.pt"
    _, first, _ = _run(4, path)
    saved = torch.load(path, weights_only=True)
    assert saved["cpu_seconds"] == first.cpu_seconds
    _, second, _ = _run(6, path)
    assert second.cpu_seconds >= first.cpu_seconds
    assert second.wall_seconds >= first.wall_seconds
    # A finished run resumed again does no more steps.
    _, third, _ = _run(6, path)
    assert third.steps == 6 and third.cpu_seconds == second.cpu_seconds


def test_sigterm_saves_after_the_step_it_interrupted_and_the_run_resumes(tmp_path):
    whole, _, _ = _run(9, None)
    path = tmp_path / "peer_checkpoint.pt"
    steps = []

    def terminate_at_step_4() -> None:
        steps.append(1)
        if len(steps) == 4:
            os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as stopped:
        _run(9, path, after_step=terminate_at_step_4)
    assert stopped.value.code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is put back
    assert len(torch.load(path, weights_only=True)["step_times"]) == 4
    resumed, run, _ = _run(9, path)
    assert run.steps == 9
    for a, b in zip(whole.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


def test_resume_refuses_other_settings_but_not_a_moved_folder(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from images import spec_problem, write_spec

    spec = {"who": "glow", "budget": 60.0, "n_test": 50, "out": str(tmp_path / "a"), "resume": 0}
    write_spec(spec, tmp_path / "a")
    moved = tmp_path / "b"
    (tmp_path / "a").rename(moved)
    assert spec_problem(spec | {"out": str(moved), "resume": 1}, moved, resume=True) is None
    problem = spec_problem(spec | {"out": str(moved), "n_test": 40}, moved, resume=True)
    assert problem is not None and "started with other settings (n_test)" in problem


@pytest.mark.parametrize("budget", ["0", "-5", "nan"])
def test_toy_refuses_a_budget_that_is_not_positive(budget, tmp_path):
    """``toy.py --budget 0`` ran into the config's check and printed its traceback."""
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "toy.py"
    result = subprocess.run(
        [sys.executable, str(script), "--budget", budget, "--out-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr[-1000:]
    assert "Traceback" not in result.stderr
    assert "--budget must be a positive number of CPU seconds" in result.stderr
    assert not any(tmp_path.iterdir())
