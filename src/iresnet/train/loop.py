"""The one training loop: single process or ``torchrun`` (DDP), resumable to the same weights.

Adam/SGD with linear warm-up (and optional cosine decay), gradient clipping, EMA weights for
evaluation, a progress bar, ``metrics.jsonl``, periodic test evaluation, atomic checkpoints,
SIGTERM/SIGINT handling (finish the step, checkpoint, exit) and NaN/Inf step skipping.
"""

from __future__ import annotations

import copy
import math
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from ..config import Config
from ..data import load_data
from ..errors import CheckpointError, ConfigError
from .batches import EpochBatches
from .checkpoint import latest_checkpoint, load_checkpoint, load_weights, save_checkpoint, unflatten_optimizer
from .distributed import DistContext, setup_distributed, teardown_distributed
from ..layers import set_branch_precision
from ..models import build_model, spectral_penalty
from .runs import Run
from .tasks import make_task

__all__ = ["train", "TrainResult", "learning_rate"]


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    stopped: str  # "finished" or "signal"
    last_metrics: dict[str, float]


def learning_rate(cfg: Config, step: int) -> float:
    """Learning rate at ``step`` (0-based): linear warm-up, then constant or cosine."""
    t = cfg.train
    warm = min(1.0, (step + 1) / t.warmup_steps) if t.warmup_steps > 0 else 1.0
    if t.lr_schedule == "cosine":
        return t.lr * warm * 0.5 * (1 + math.cos(math.pi * min(step, t.steps) / t.steps))
    return t.lr * warm


def _optimizer(cfg: Config, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    t = cfg.train
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=0.9, weight_decay=t.weight_decay, foreach=True)
    if t.optimizer == "adamw":  # decoupled decay: w <- w - lr * wd * w, outside Adam's scaling
        return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay, foreach=True)
    return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay, foreach=True)


@torch.no_grad()
def _update_ema(ema: nn.Module, model: nn.Module, decay: float, step: int) -> None:
    # Warm-up of the decay, min(decay, (1 + t) / (10 + t)): without it the initial weights keep
    # a share decay^t of the average, which makes short runs evaluate lagging weights.
    decay = min(decay, (1 + step) / (10 + step))
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        if e.shape != b.shape:  # conv power-iteration vectors learn their shape lazily
            e.data = b.detach().clone()
        else:
            e.copy_(b)


class _LossModule(nn.Module):
    """``forward(batch) -> (loss, metrics)``: the task's loss as a module DDP can wrap."""

    def __init__(self, model: nn.Module, task: Any) -> None:
        super().__init__()
        self.model = model
        self.task = task

    def forward(self, batch: Any) -> Any:
        return self.task.loss(self.model, batch)


class _StopSignal:
    """Turns SIGTERM/SIGINT into a flag checked between steps (the step in flight finishes)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopSignal:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _seed_step(cfg: Config, step: int, rank: int) -> None:
    """Seed the step's randomness (probes, roulette draws, dequantisation noise) from
    ``(seed, step, rank)``: a resumed run draws exactly what the uninterrupted one drew, with no
    RNG state to save, and every rank draws differently."""
    torch.manual_seed((cfg.train.seed * 1_000_003 + step) * 1009 + rank)


def train(
    cfg: Config,
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
) -> TrainResult:
    """Train ``cfg`` into ``run_dir`` (or continue it with ``resume=True``).

    Args:
        cfg: the validated config (for a resumed run, the run's saved config, possibly with more
            ``train.steps``).
        run_dir: the run folder; a new run refuses a folder that already holds a run.
        resume: continue from the newest valid checkpoint (same seed: same final weights).
        progress: show a progress bar (rank 0 only).
        stop_after: stop (with a checkpoint) after this step; for tests of interruption.
    """
    ctx = setup_distributed(cfg.train.device)
    if ctx.device.type == "cpu":
        # Subnormal floats (tiny gradients, Adam's squared moments) run orders of magnitude
        # slower on CPUs; flushing them to zero changes nothing measurable in the results.
        torch.set_flush_denormal(True)
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    try:
        return _train(cfg, Path(run_dir), ctx, resume=resume, progress=progress, stop_after=stop_after)
    finally:
        teardown_distributed()


def _train(cfg: Config, run_dir: Path, ctx: DistContext, *, resume: bool, progress: bool,
           stop_after: int | None) -> TrainResult:
    run = Run(run_dir)
    checkpoint = None
    if resume:
        checkpoint = latest_checkpoint(run.checkpoints)
        if checkpoint is None:
            raise CheckpointError(
                f"{run_dir}: no valid checkpoint to resume from (torn or modified ones are skipped); "
                "start a new run with another --out"
            )
    elif ctx.is_main:
        run.create(cfg)  # refuses a folder that already holds a run
    if ctx.is_main:
        run.remove_stale_temporaries()  # left by a process killed mid-write
    data = load_data(cfg.data, standardizer=run.load_standardizer())
    if ctx.is_main and not resume:
        run.save_data_info(data)

    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    model = build_model(cfg.model, data).to(ctx.device)
    task = make_task(cfg, data, ctx.device)
    batches = EpochBatches(task.n_train(), cfg.train.batch_size, cfg.train.seed, ctx.rank, ctx.world)
    step, elapsed, cpu_elapsed, bad_in_row = 0, 0.0, 0.0, 0

    if checkpoint is None:
        # Data-dependent initialisation (ActNorm) on the first global batch, before any rank
        # diverges; every rank sees the same batch, so the initial weights stay identical.
        first = EpochBatches(task.n_train(), cfg.train.batch_size, cfg.train.seed)
        with torch.no_grad():
            model.train()
            task.loss(model, task.batch("train", first.next()))
    ema = copy.deepcopy(model) if cfg.train.ema_decay > 0 else None
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = _optimizer(cfg, params)

    if checkpoint is not None:
        meta, tensors = load_checkpoint(checkpoint)
        if meta.get("model_kind") != cfg.model.kind:
            raise CheckpointError(f"{checkpoint}: saved by a '{meta.get('model_kind')}' model, not '{cfg.model.kind}'")
        load_weights(model, checkpoint / "model.safetensors")
        if ema is not None:
            load_weights(ema, checkpoint / "ema.safetensors")
        try:
            optimizer.load_state_dict(unflatten_optimizer(tensors, meta["optimizer"]))
        except (KeyError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{checkpoint}: optimiser state does not fit ({exc})") from None
        step, elapsed, bad_in_row = int(meta["step"]), float(meta["elapsed"]), int(meta.get("bad_in_row", 0))
        cpu_elapsed = float(meta.get("cpu_elapsed", 0.0))
        batches.load_state(meta["batches"][str(ctx.rank)] if ctx.distributed else meta["batches"]["0"])
        if ctx.is_main:
            run.truncate_metrics(step)

    loss_module: nn.Module = _LossModule(model, task)
    if ctx.distributed:
        from torch.nn.parallel import DistributedDataParallel

        # DDP hooks only run through forward(): the loss module's forward computes the loss.
        loss_module = DistributedDataParallel(
            loss_module, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None
        )

    if cfg.train.precision != "fp32":
        if ctx.device.type == "cpu" and cfg.train.precision == "fp16":
            raise ConfigError("train.precision=fp16 needs a CUDA device; use bf16 on CPU")
        set_branch_precision(model, cfg.train.precision)
        if ema is not None:
            set_branch_precision(ema, cfg.train.precision)
    t = cfg.train
    bar = tqdm(total=t.steps, initial=step, disable=not (progress and ctx.is_main), dynamic_ncols=True,
               desc=f"train {cfg.preset}", file=sys.stderr)
    start = time.perf_counter() - elapsed
    cpu_start = time.process_time() - cpu_elapsed
    last: dict[str, float] = {}
    stopped = "finished"

    def save() -> None:
        if not ctx.is_main:
            return
        state = {
            "elapsed": time.perf_counter() - start, "bad_in_row": bad_in_row,
            "cpu_elapsed": time.process_time() - cpu_start,
            "model_kind": cfg.model.kind, "config": cfg.to_dict(),
            "batches": {str(r): batches.state() for r in range(ctx.world)},
        }
        save_checkpoint(run.checkpoints, step, model, ema, optimizer, state, keep_last=t.keep_last)

    with _StopSignal() as stop:
        while step < t.steps:
            model.train()
            lr = learning_rate(cfg, step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            _seed_step(cfg, step, ctx.rank)
            batch = task.batch("train", batches.next())
            optimizer.zero_grad(set_to_none=True)
            loss, metrics = loss_module(batch)
            if t.spectral_penalty > 0:  # seed eq. (11); the NLL in `metrics` stays separate
                loss = loss + t.spectral_penalty * spectral_penalty(model)
            finite = bool(torch.isfinite(loss))
            if finite:
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(params, t.grad_clip if t.grad_clip > 0 else float("inf"))
                finite = bool(torch.isfinite(grad_norm))
            step += 1
            if finite:
                bad_in_row = 0
                optimizer.step()
                if ema is not None:
                    _update_ema(ema, model, t.ema_decay, step)
            else:  # skip the step: no update from a NaN/Inf loss or gradient
                bad_in_row += 1
                optimizer.zero_grad(set_to_none=True)
                if ctx.is_main:
                    run.log({"step": step, "skipped": "non-finite loss or gradient", "bad_in_row": bad_in_row})
                if bad_in_row >= t.max_bad_steps:
                    bar.close()
                    raise FloatingPointError(
                        f"stopped at step {step}: {bad_in_row} consecutive steps with NaN/Inf loss or "
                        f"gradient; the last good checkpoint in {run.checkpoints} is kept (lower the "
                        "learning rate or check the data, then --resume)"
                    )
            if finite and ctx.is_main and (step % t.log_every == 0 or step == t.steps):
                last = {k: float(v) for k, v in metrics.items()}
                row = {"step": step, "loss": float(loss.detach()), **last, "lr": lr,
                       "grad_norm": float(grad_norm), "seconds": round(time.perf_counter() - start, 3),
                       "cpu_seconds": round(time.process_time() - cpu_start, 3)}
                run.log(row)
                bar.set_postfix({k: f"{v:.4f}" for k, v in last.items()}, refresh=False)
            bar.update(1)
            if ctx.is_main and (step % t.eval_every == 0 or step == t.steps):
                test = task.evaluate(ema or model, max_batches=t.eval_batches)
                run.log({"step": step, **test, "seconds": round(time.perf_counter() - start, 3)})
                last.update(test)
            interrupted = stop.received is not None or (stop_after is not None and step >= stop_after)
            if ctx.distributed:  # every rank stops after the same step, or the others would hang
                interrupted = ctx.any(interrupted)
            out_of_time = (t.max_seconds > 0 and time.perf_counter() - start >= t.max_seconds) or (
                t.max_cpu_seconds > 0 and time.process_time() - cpu_start >= t.max_cpu_seconds)
            if ctx.distributed:  # clocks differ between ranks; all must stop after the same step
                out_of_time = ctx.any(out_of_time)
            if out_of_time and not interrupted:
                if ctx.is_main and step % t.eval_every != 0:
                    test = task.evaluate(ema or model, max_batches=t.eval_batches)
                    run.log({"step": step, **test, "seconds": round(time.perf_counter() - start, 3)})
                    last.update(test)
                save()
                break
            if step % t.checkpoint_every == 0 or step == t.steps or interrupted:
                save()
            if interrupted:
                stopped = "signal"
                break
    bar.close()
    if ctx.is_main and stopped == "finished":
        final = ema or model
        run.save_final_weights(final)
        task.plots(final, run.path, run.records())
    return TrainResult(run.path, step, stopped, last)

