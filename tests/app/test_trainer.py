"""The training loop: runs, metrics, resume to identical weights, refusals that keep the run."""

import json
import math
import os
import time
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import iresnet
from iresnet.app.checkpoint import latest_checkpoint, list_checkpoints
from iresnet.app.config import Config
from iresnet.app.presets import get_preset
from iresnet.app.runs import load_run
from iresnet.app.trainer import learning_rate, warmup_outlasts_run
from iresnet.app.training import train
from iresnet.errors import CheckpointError, ConfigError
from tests.helpers import graphs_and_breaks

TINY = [
    "model.n_blocks=2",
    "model.hidden=16",
    "data.n_train=512",
    "data.n_test=256",
    "train.batch_size=64",
    "train.steps=12",
    "train.eval_every=6",
    "train.checkpoint_every=4",
    "train.log_every=2",
    "train.warmup_steps=3",
    "train.keep_last=10",
    "train.eval_batches=1",
]


#: The files of a checkpoint that hold tensors (``state.json`` holds the clocks too).
SAFETENSORS = ("model.safetensors", "ema.safetensors", "state.safetensors")


def tiny(*extra: str) -> Config:
    return Config().override([*TINY, *extra])


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_run_folder_contents(tmp_path):
    result = train(tiny(), tmp_path / "run", progress=False)
    run = tmp_path / "run"
    assert result.step == 12 and result.stopped == "finished"
    for name in (
        "config.json",
        "data.json",
        "metrics.jsonl",
        "model.safetensors",
        "figure.png",
        "learning_curve.png",
    ):
        assert (run / name).is_file(), name
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    assert {"step", "loss", "nll", "lr", "grad_norm", "seconds"} <= set(train_rows[0])
    assert [r["step"] for r in rows if "test_nll" in r] == [6, 12]
    assert Config.from_dict(json.loads((run / "config.json").read_text())) == tiny()
    assert len(list_checkpoints(run / "checkpoints")) == 3  # steps 4, 8, 12


def test_resume_gives_the_same_final_weights(tmp_path):
    train(tiny(), tmp_path / "full", progress=False)
    partial = train(tiny(), tmp_path / "part", progress=False, stop_after=6)
    assert partial.stopped == "signal" and partial.step == 6
    assert not (tmp_path / "part" / "model.safetensors").exists()
    train(tiny(), tmp_path / "part", resume=True, progress=False)
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(tmp_path / "part" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    # the same contents in the same bytes: the metadata (step, sha256) was written in the hash
    # map's order of the moment, which the resumed run's file could draw otherwise
    for name in ("model.safetensors", *(f"checkpoints/step-00000012/{f}" for f in SAFETENSORS)):
        full, part = (tmp_path / run / name for run in ("full", "part"))
        assert full.read_bytes() == part.read_bytes(), name
    steps = [
        json.loads(line)["step"]
        for line in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == sorted(steps) and len(steps) == len(set((s, i) for i, s in enumerate(steps)))


def test_new_run_refuses_existing_folder_and_leaves_it_intact(tmp_path):
    train(tiny(), tmp_path / "run", progress=False)
    before = snapshot(tmp_path / "run")
    with pytest.raises(ConfigError, match="already holds a run"):
        train(tiny(), tmp_path / "run", progress=False)
    assert snapshot(tmp_path / "run") == before


def test_corrupted_checkpoint_is_refused_clearly_and_run_kept(tmp_path):
    train(tiny("train.keep_last=1"), tmp_path / "run", progress=False, stop_after=4)
    ckpt = latest_checkpoint(tmp_path / "run" / "checkpoints")
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncate
    before = snapshot(tmp_path / "run")
    with pytest.warns(RuntimeWarning, match="do not match the manifest"):
        with pytest.raises(CheckpointError, match="no valid checkpoint"):
            train(tiny(), tmp_path / "run", resume=True, progress=False)
    assert snapshot(tmp_path / "run") == before


def test_resume_skips_a_torn_checkpoint(tmp_path):
    train(tiny(), tmp_path / "run", progress=False, stop_after=8)
    ckpts = list_checkpoints(tmp_path / "run" / "checkpoints")
    os.remove(ckpts[-1] / "MANIFEST.json")  # the newest is torn
    with pytest.warns(RuntimeWarning, match="skipping checkpoint"):
        result = train(tiny(), tmp_path / "run", resume=True, progress=False)
    assert result.step == 12


def test_learning_rate_schedule():
    cfg = Config().override(["train.lr=1.0", "train.warmup_steps=4", "train.steps=100"])
    assert [learning_rate(cfg, s) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    cos = cfg.override(["train.lr_schedule=cosine"])
    assert learning_rate(cos, 100) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("schedule", ["constant", "cosine", "cosine-budget"])
def test_the_warm_up_note_fires_where_the_schedule_never_reaches_train_lr(schedule):
    """``warmup_outlasts_run`` (the config summary's note) against the schedule itself: under
    ``constant`` the last warm-up step runs at ``train.lr``, so ``warmup_steps == steps`` reaches
    it (the note said it did not); under the cosines a run no longer than its warm-up peaks
    below ``train.lr``."""
    for steps in (1, 2, 4, 9):
        for warmup in range(0, steps + 3):
            cfg = Config().override(
                [
                    "train.lr=1.0",
                    f"train.steps={steps}",
                    f"train.warmup_steps={warmup}",
                    f"train.lr_schedule={schedule}",
                    "train.max_cpu_seconds=60",
                ]
            )
            peak = max(learning_rate(cfg, s) for s in range(steps))
            expected = peak < 1.0 and (schedule == "constant" or warmup >= steps)
            assert warmup_outlasts_run(cfg) == expected, (steps, warmup, peak)
    constant = Config().override(["train.steps=4", "train.warmup_steps=4"])
    assert not warmup_outlasts_run(constant)  # steps 1-4 at lr/4, lr/2, 3lr/4, lr
    assert warmup_outlasts_run(constant.override(["train.lr_schedule=cosine"]))


def test_cosine_budget_decays_over_the_larger_share_of_steps_or_budget():
    cfg = Config().override(
        [
            "train.lr=1.0",
            "train.warmup_steps=0",
            "train.steps=1000",
            "train.max_cpu_seconds=60",
            "train.lr_schedule=cosine-budget",
        ]
    )
    assert learning_rate(cfg, 0, 0.0) == 1.0
    assert learning_rate(cfg, 10, 0.5) == pytest.approx(0.5)  # half the budget spent
    assert learning_rate(cfg, 500, 0.1) == pytest.approx(0.5)  # half the steps done
    assert learning_rate(cfg, 10, 0.75) == pytest.approx(0.5 * (1 + math.cos(0.75 * math.pi)))
    assert learning_rate(cfg, 10, 1.3) == pytest.approx(0.0, abs=1e-12)  # past the budget
    # Without the budget share it is the step cosine; the step cosine ignores the share.
    cos = cfg.override(["train.lr_schedule=cosine"])
    assert learning_rate(cfg, 250) == learning_rate(cos, 250) == learning_rate(cos, 250, 0.9)
    with pytest.raises(ConfigError, match="cosine-budget decays over the time budget"):
        cfg.override(["train.max_cpu_seconds=0"])
    assert cfg.override(["train.max_cpu_seconds=0", "train.max_seconds=5"]).train.max_seconds == 5


def test_cosine_budget_run_decays_to_zero_with_the_budget(tmp_path):
    """A run far shorter than its steps still decays: the clock drives the cosine."""
    cfg = tiny(
        "train.steps=100000",
        "train.max_cpu_seconds=1.5",
        "train.lr_schedule=cosine-budget",
        "train.warmup_steps=0",
        "train.log_every=1",
        "train.threads=1",
    )
    result = train(cfg, tmp_path / "run", progress=False)
    assert result.stopped == "finished" and result.step < 100000
    rows = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    lrs = [r["lr"] for r in rows if "loss" in r]
    assert lrs == sorted(lrs, reverse=True)  # the clock only moves on
    # The last step starts with at most one step's time of the budget left: its rate is
    # near 0, where a step cosine over 100000 steps would still be at its peak.
    assert lrs[-1] < 0.05 * cfg.train.lr


def test_a_cosine_extension_is_a_warm_restart_from_where_the_run_is():
    cos = Config().override(
        ["train.lr=1.0", "train.warmup_steps=0", "train.steps=300", "train.lr_schedule=cosine"]
    )
    ext = cos.override(["train.steps=500", "train.cycle_start=300"])
    assert learning_rate(ext, 300) == 1.0  # the restart
    assert learning_rate(ext, 400) == pytest.approx(0.5)  # half-way through the new cycle
    assert learning_rate(ext, 500) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ConfigError, match="train.cycle_start must lie in"):
        cos.override(["train.cycle_start=300"])


def test_extending_a_constant_schedule_run_equals_the_longer_run(tmp_path):
    """The README's promise, "same seed: same weights", where the schedule does not depend on
    the run's length; cosine extensions are warm restarts (above)."""
    from iresnet.app.cli import main

    short, direct = tmp_path / "short", tmp_path / "direct"
    flags = [*TINY, "train.lr_schedule=constant", "--no-progress"]
    assert main(["train", *flags, "train.steps=8", "--out", str(short)]) == 0
    assert main(["train", "--resume", str(short), "--steps", "12", "--no-progress"]) == 0
    assert main(["train", *flags, "train.steps=12", "--out", str(direct)]) == 0
    a = load_file(str(short / "model.safetensors"))
    b = load_file(str(direct / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    saved = json.loads((short / "config.json").read_text())["train"]
    assert saved["steps"] == 12 and saved["cycle_start"] == 0


def test_adamw_decays_weights_decoupled_from_the_gradient_scale():
    from iresnet.app.trainer import _optimizer

    cfg = Config().override(["train.optimizer=adamw", "train.lr=0.1", "train.weight_decay=0.5"])
    w = torch.nn.Parameter(torch.full((3,), 2.0))
    opt = _optimizer(cfg, [w])
    assert isinstance(opt, torch.optim.AdamW)
    w.grad = torch.zeros(3)  # no gradient: only the decoupled decay w <- w (1 - lr wd) acts
    opt.step()
    assert torch.allclose(w.detach(), torch.full((3,), 2.0 * (1 - 0.1 * 0.5)))
    coupled = _optimizer(Config().override(["train.lr=0.1", "train.weight_decay=0.5"]), [w])
    assert type(coupled) is torch.optim.Adam
    with pytest.raises(ConfigError):
        Config().override(["train.optimizer=lamb"])


def test_user_array_nll_is_in_data_units(tmp_path):
    torch.manual_seed(0)
    data = torch.randn(600, 2).double() * torch.tensor([3.0, 0.5]).double() + 10
    path = tmp_path / "data.npy"
    np.save(path, data.numpy())
    train(tiny("data.name=array", f"data.path={path}"), tmp_path / "run", progress=False)
    trained = load_run(tmp_path / "run")
    result = trained.task.full_evaluation(trained.model, n_inverse=64)
    # NLL in x-units = NLL in z-units - log|det dz/dx| = NLL_z + sum log std (std ~ 3 and 0.5).
    std = trained.data.standardizer
    assert std.log_abs_det == pytest.approx(-np.log(1.5), abs=0.1)
    model = trained.model
    assert isinstance(model.transform[0], iresnet.Standardize)  # the model standardises itself
    z = torch.as_tensor(std.transform(trained.data.test_x.numpy()), dtype=torch.float32)
    without = iresnet.Flow(model.transform[1:], event_shape=(2,)).eval()
    with torch.no_grad(), iresnet.swap_logdets(model, iresnet.ExactLogDet()):
        z_units = -without.log_prob(z).double().mean().item()
    assert result["test_nll"] == pytest.approx(z_units - std.log_abs_det, rel=1e-5)
    assert result["entropy_gap"] is None and result["invertible"]


def test_penalty_mode_trains_and_its_certificate_is_truthful(tmp_path):
    """Seed eq. (11): the penalty shrinks the norms but guarantees nothing; the certificate
    reports a block as invertible only when its bound is below 1."""
    cfg = tiny("model.lipschitz_norm=penalty", "train.spectral_penalty=0.1", "train.steps=20")
    train(cfg, tmp_path / "run", progress=False)
    trained = load_run(tmp_path / "run")
    import iresnet

    cert = iresnet.certify(trained.model)
    for block in cert.blocks:
        assert block.invertible == (block.bound < 1)
    exact = []
    for m in trained.model.modules():
        if isinstance(m, iresnet.InvertibleResidualBlock):
            prod = 1.0
            for layer in m.g:
                if isinstance(layer, iresnet.SpectralLinear):
                    prod *= torch.linalg.matrix_norm(layer.weight.detach().double(), ord=2).item()
            exact.append(prod)
    assert [b.bound for b in cert.blocks] == pytest.approx(exact, rel=1e-5)


def test_penalty_mode_shrinks_norms_and_says_not_guaranteed_above_one(tmp_path):
    """Seed eq. (11) end to end: the penalty is really in the loss (the same run with a large
    lambda ends with smaller ``sum ||W||_2^2`` than with lambda = 0), and once a block's bound
    exceeds 1 the certificate, its text and the evaluation all say the model is not guaranteed
    invertible."""
    import iresnet
    from iresnet.nn import spectral_penalty

    sums = {}
    for lam in (0.0, 1.0):
        cfg = tiny(
            "model.lipschitz_norm=penalty", f"train.spectral_penalty={lam}", "train.steps=20"
        )
        train(cfg, tmp_path / f"run{lam}", progress=False)
        model = load_run(tmp_path / f"run{lam}").model
        with torch.no_grad():
            model.train()
            for _ in range(300):  # converge the persistent power-iteration vectors
                for m in model.modules():
                    if isinstance(m, iresnet.SpectralLinear):
                        m.normalized_weight()
            sums[lam] = spectral_penalty(model).item()
    assert sums[1.0] < sums[0.0]

    trained = load_run(tmp_path / "run1.0")
    blocks = [m for m in trained.model.modules() if isinstance(m, iresnet.InvertibleResidualBlock)]
    with torch.no_grad():
        for m in blocks[0].g.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.mul_(5.0)  # penalty mode has no hard bound: nothing rescales this back
    cert = iresnet.certify(trained.model)
    assert cert.blocks[0].bound > 1 and not cert.blocks[0].invertible and not cert.invertible
    assert "NOT guaranteed invertible" in str(cert)
    with warnings.catch_warnings():  # the inverse of a non-contraction may well diverge: expected
        warnings.simplefilter("ignore", iresnet.InverseNotConvergedWarning)
        result = trained.task.full_evaluation(trained.model, n_inverse=16)
    assert result["invertible"] is False


@pytest.mark.parametrize("budget", ["train.max_seconds=1e-9", "train.max_cpu_seconds=1e-9"])
def test_time_budgets_stop_after_the_first_step_past_them(tmp_path, budget):
    result = train(tiny(budget), tmp_path / "run", progress=False)
    assert result.step == 1 and result.stopped == "finished"
    assert result.budget == budget.split("=")[0].removeprefix("train.")  # for the final line
    assert (tmp_path / "run" / "model.safetensors").is_file()
    rows = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in rows if "test_nll" in r] == [1]  # evaluated where it stopped
    assert len(list_checkpoints(tmp_path / "run" / "checkpoints")) == 1  # saved where it stopped


def test_cpu_seconds_are_logged_and_increase(tmp_path):
    train(tiny("train.threads=1"), tmp_path / "run", progress=False)
    rows = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert any("test_nll" in r for r in rows) and any("loss" in r for r in rows)
    assert all(0 < r["cpu_seconds"] for r in rows)  # training and evaluation rows alike
    assert [r["cpu_seconds"] for r in rows] == sorted(r["cpu_seconds"] for r in rows)


def test_a_run_stopped_before_its_first_log_row_still_says_its_cpu_seconds(tmp_path):
    """A CPU budget spent before ``log_every`` leaves only the evaluation row: it must carry
    the CPU seconds too (it had only the wall seconds)."""
    train(
        tiny("train.max_cpu_seconds=1e-9", "train.log_every=1000"), tmp_path / "r", progress=False
    )
    rows = [
        json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in rows] == [1] and "test_nll" in rows[0]
    assert rows[0]["cpu_seconds"] > 0


@pytest.mark.parametrize("bad_from", [0, 5])
def test_nan_stop_names_a_checkpoint_only_if_one_exists(tmp_path, monkeypatch, bad_from):
    """The issue's case: a run stopped by repeated NaN losses before its first checkpoint said
    the last good checkpoint was kept and suggested --resume."""
    from iresnet.app.tasks import DensityTask

    real_loss = DensityTask.loss
    calls = {"n": 0}

    def loss(self, model, batch):
        value, metrics = real_loss(self, model, batch)
        calls["n"] += 1
        if calls["n"] > bad_from + 1:  # the first call is the data-dependent initialisation
            value = value * float("nan")
        return value, metrics

    monkeypatch.setattr(DensityTask, "loss", loss)
    cfg = tiny("train.max_bad_steps=3", "train.checkpoint_every=4")
    with pytest.raises(FloatingPointError) as info:
        train(cfg, tmp_path / "run", progress=False)
    message = str(info.value)
    if bad_from == 0:
        assert "no checkpoint had been written yet" in message and "--resume" not in message
        assert not (tmp_path / "run").exists()  # nothing left that would block the rerun
    else:
        assert "step-00000004" in message and "--resume" in message


def test_a_compiled_training_step_computes_the_eager_loss(tmp_path):
    """train.compile=true: the same first loss as eager (before any update, the same function),
    a finished run, and its compiled steps are one graph with no break (the first step of the
    fresh model runs eagerly; compiled, its host reads had split every later step into
    pieces). Its speed is measured in docs/benchmarks.md, never here."""
    flags = ["model.n_blocks=1", "train.steps=3", "train.log_every=1", "train.ema_decay=0"]
    eager = train(tiny(*flags), tmp_path / "eager", progress=False, figures=False)
    torch._dynamo.reset()
    before = graphs_and_breaks()
    compiled = train(
        tiny(*flags, "train.compile=true"), tmp_path / "compiled", progress=False, figures=False
    )
    assert compiled.stopped == "finished" and compiled.step == 3
    graphs, breaks = (a - b for a, b in zip(graphs_and_breaks(), before, strict=True))
    assert (graphs, breaks) == (1, 0)
    first = [
        json.loads((tmp_path / d / "metrics.jsonl").read_text().splitlines()[0])["loss"]
        for d in ("eager", "compiled")
    ]
    assert first[1] == pytest.approx(first[0], rel=1e-5)
    assert eager.stopped == "finished"
    # The input checks were off while compiled steps ran; the model handed back checks again.
    flags_of = [m.validate for m in compiled.model.modules() if hasattr(m, "validate")]
    assert flags_of and all(flags_of)


def test_a_run_compiled_by_blocks_shares_one_graph_and_keeps_its_checks(tmp_path):
    """train.compile_scope=blocks: the three blocks share one compiled graph (no break), the
    flow's input check stays on, and every step's loss is the eager run's (float rounding)."""
    flags = ["model.n_blocks=3", "train.steps=4", "train.log_every=1", "train.ema_decay=0"]
    eager = train(tiny(*flags), tmp_path / "eager", progress=False, figures=False)
    torch._dynamo.reset()
    before = graphs_and_breaks()
    scope = ["train.compile=true", "train.compile_scope=blocks"]
    compiled = train(tiny(*flags, *scope), tmp_path / "compiled", progress=False, figures=False)
    assert eager.stopped == compiled.stopped == "finished" and compiled.step == 4
    graphs, breaks = (a - b for a, b in zip(graphs_and_breaks(), before, strict=True))
    assert (graphs, breaks) == (1, 0)
    lines = [
        (tmp_path / d / "metrics.jsonl").read_text().splitlines() for d in ("eager", "compiled")
    ]
    losses = [[json.loads(line)["loss"] for line in run if '"loss"' in line] for run in lines]
    assert len(losses[1]) == 4
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    assert all(m.validate for m in compiled.model.modules() if hasattr(m, "validate"))


@pytest.mark.filterwarnings("ignore::iresnet.RouletteVarianceWarning")
def test_a_compiled_image_run_steps_as_one_graph(tmp_path):
    """train.compile=true on an image preset (convolutions, ActNorm, dequantisation, the
    roulette): every compiled step is one graph with no break. The fresh model's first step
    (power-iteration vectors for the input size, ActNorm's initialisation) runs eagerly, and
    the dequantisation's level check is off with the flow's ``validate``; before, their host
    reads split every step into a dozen graphs."""
    from iresnet.app.presets import get_preset

    flags = [
        *("model.n_blocks=1", "model.hidden=8", "model.n_scales=1", "train.batch_size=16"),
        *("train.steps=3", "train.log_every=1", "train.ema_decay=0", "train.warmup_steps=1"),
        *("train.eval_every=3", "train.checkpoint_every=3", "train.eval_batches=1"),
        "train.compile=true",
    ]
    torch._dynamo.reset()
    before = graphs_and_breaks()
    result = train(get_preset("digits").override(flags), tmp_path / "run", progress=False)
    assert result.stopped == "finished" and result.step == 3
    graphs, breaks = (a - b for a, b in zip(graphs_and_breaks(), before, strict=True))
    assert (graphs, breaks) == (1, 0)


def test_the_cpu_clock_counts_child_processes_it_waited_for():
    """``train.max_cpu_seconds`` must see the C++ compiler runs of ``train.compile`` (children
    of the training process), which ``time.process_time()`` alone did not."""
    import subprocess
    import sys

    from iresnet.app.trainer import cpu_clock

    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.4: pass"
    before, own = cpu_clock(), time.process_time()
    subprocess.run([sys.executable, "-c", burn], check=True)
    assert cpu_clock() - before >= 0.4  # the child's 0.4 CPU s (plus its start-up)
    assert time.process_time() - own < 0.3  # which the process's own clock does not see


def test_the_cpu_clock_advances_with_less_work_than_a_clock_tick():
    """A 1e-9 CPU-second budget must stop after the first step however short it is: CI saw
    the clock stand still over a step (``os.times()`` counts whole 10 ms ticks)."""
    from iresnet.app.trainer import cpu_clock

    for _ in range(20):
        before = cpu_clock()
        t = time.process_time()
        while time.process_time() - t < 5e-4:  # half a millisecond of work
            pass
        assert cpu_clock() > before


def test_the_ema_update_averages_parameters_and_copies_buffers():
    """EMA <- EMA + (1 - d) (model - EMA) with the warm-up d = min(decay, (1 + t) / (10 + t)),
    every parameter; buffers (power-iteration vectors) copied, a lazily shaped one included."""
    import copy

    from iresnet.app.trainer import _update_ema

    torch.manual_seed(0)
    model = iresnet.MultiscaleResidualFlow((1, 4, 4), scales=1, blocks=2, hidden_channels=(4,))
    ema = copy.deepcopy(model)
    model.log_prob(torch.rand(3, 1, 4, 4))  # the convolutions learn their input size
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    before = [e.detach().clone() for e in ema.parameters()]
    _update_ema(ema, model, 0.99, 5)
    d = min(0.99, 6 / 15)
    for e, b, p in zip(ema.parameters(), before, model.parameters(), strict=True):
        torch.testing.assert_close(e, b + (1 - d) * (p - b))
    for e, b in zip(ema.buffers(), model.buffers(), strict=True):
        assert torch.equal(e, b)


def test_compiling_without_a_cpp_compiler_is_one_clear_line(tmp_path, monkeypatch):
    """No C++ compiler: train.compile=true is refused before the run folder exists (it was a
    long traceback from inductor at the first compiled step)."""
    import torch._inductor.cpp_builder as cpp_builder

    def missing():
        raise cpp_builder.exc.InvalidCxxCompiler()

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", missing)
    for scope in ("step", "blocks"):
        cfg = tiny("train.compile=true", f"train.compile_scope={scope}")
        with pytest.raises(ConfigError, match="needs a C[+][+] compiler"):
            train(cfg, tmp_path / scope, progress=False)
        assert not (tmp_path / scope).exists()


@pytest.mark.parametrize("scope", ["step", "blocks"])
def test_a_compiled_run_resumes_bit_for_bit(tmp_path, scope):
    """Interrupted at step 4 and resumed, a compiled run matches the uninterrupted one
    exactly: the restored model's first step runs compiled, as the uninterrupted run's did
    (an eager first step after every restart differed in the last bits)."""
    flags = [
        *("model.n_blocks=2", "train.steps=8", "train.log_every=1", "train.checkpoint_every=4"),
        *("train.compile=true", f"train.compile_scope={scope}"),
    ]
    train(tiny(*flags), tmp_path / "whole", progress=False, figures=False)
    train(tiny(*flags), tmp_path / "split", progress=False, figures=False, stop_after=4)
    train(tiny(*flags), tmp_path / "split", progress=False, figures=False, resume=True)
    losses = [
        [json.loads(x)["loss"] for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()
         if '"loss"' in x]
        for d in ("whole", "split")
    ]  # fmt: skip
    assert len(losses[0]) == 8 and losses[0] == losses[1]
    whole, split = (load_file(tmp_path / d / "model.safetensors") for d in ("whole", "split"))
    assert all(torch.equal(whole[k], split[k]) for k in whole)


def test_a_batch_above_an_image_folder_counts_images(tmp_path):
    """Try-out 14, F13: the batch message said "training samples" of an image set, and the
    subset message "training images". A png folder's size is known only once it is read."""
    image = pytest.importorskip("PIL.Image")
    for split, n in (("train", 3), ("test", 2)):
        folder = tmp_path / "png" / split
        folder.mkdir(parents=True)
        for i in range(n):
            gray = np.full((8, 8), 40 * i, np.uint8)
            image.fromarray(gray, mode="L").save(folder / f"{i}.png")
    png = ["data.name=png", f"data.data_dir={tmp_path / 'png'}", "train.batch_size=4"]
    cfg = get_preset("digits").override([*png, "model.n_blocks=1", "model.hidden=8"])
    with pytest.raises(ConfigError, match="batch_size=4 exceeds the 3 training images;"):
        train(cfg, tmp_path / "run", progress=False)


def test_a_torn_metrics_line_is_dropped_on_resume_and_named_in_one_line(tmp_path, capsys):
    """A run killed while it wrote ``metrics.jsonl`` leaves a line cut short; resuming dropped
    it without a word. It is still dropped (the resumed run logs those steps again), and one
    line says which line of which file."""
    run = tmp_path / "run"
    train(tiny(), run, progress=False, stop_after=8)
    metrics = run / "metrics.jsonl"
    n_lines = len(metrics.read_text().splitlines())
    with open(metrics, "a", encoding="utf-8") as fh:
        fh.write('{"step": 9, "loss": 1.25, "nll": 1.25, "lr": 0.0')  # the write was cut
    capsys.readouterr()
    result = train(tiny(), run, resume=True, progress=False)
    assert result.step == 12
    notes = [line for line in capsys.readouterr().err.splitlines() if "metrics.jsonl" in line]
    assert notes == [
        f"iresnet: note: dropped its torn last line (line {n_lines + 1}: "
        f'\'{{"step": 9, "loss": 1.25, "nll": 1.25...\') from {metrics}: a row cut short when '
        "the run was stopped; the steps after 8 are logged again as it resumes"
    ]
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]  # every line a row
    assert [r["step"] for r in rows if "loss" in r] == [2, 4, 6, 8, 10, 12]


def test_the_presets_own_roulette_is_a_note_not_a_warning(capsys):
    """The image presets keep Geometric(1/2) on measurement (a user try-out): a user who changed
    nothing gets one note that says why and what to set, not a RouletteVarianceWarning about
    the preset's own law. A law of the user's own, a bound of 1 and every other warning stay
    warnings; the library warns as before."""
    from iresnet.app.trainer import preset_law_noted
    from iresnet.errors import RouletteVarianceWarning

    def build(p=0.5, lipschitz=0.98**3, other=False):
        iresnet.RussianRouletteLogDet(p=p, n_exact=2, lipschitz=lipschitz)
        if other:
            warnings.warn("another warning", UserWarning, stacklevel=2)

    cfg = get_preset("digits").override(["model.hidden=8"])  # not the law: still the preset's
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with preset_law_noted(cfg):
            build(other=True)
    assert [str(w.message) for w in caught] == ["another warning"]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(
        "iresnet: note: the preset's roulette (geometric, p=0.5) has no finite-variance "
        "guarantee at Lip(g) <= 0.94; it measured better than model.logdet=roulette-auto"
    )
    assert "set model.logdet=roulette-auto for the guaranteed law" in err
    with warnings.catch_warnings(record=True), preset_law_noted(cfg, show=False):
        build()  # another rank than the main: silent
    assert capsys.readouterr().err == ""
    # the user's own law, a preset without one, a bound of 1: the warning, no note
    for config, kw in (
        (get_preset("digits").override(["model.roulette_p=0.6"]), {"p": 0.6}),
        (get_preset("toy-8gaussians"), {}),
        (cfg, {"lipschitz": 1.0}),
    ):
        with pytest.warns(RouletteVarianceWarning) as caught, preset_law_noted(config):
            build(**kw)
        assert caught[0].message.lipschitz == kw.get("lipschitz", 0.98**3)
        assert capsys.readouterr().err == ""
