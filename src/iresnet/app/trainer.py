"""The one training loop, in named steps: single process or ``torchrun`` (DDP), resumable to
the same weights.

Adam / AdamW / SGD with linear warm-up (and optional cosine decay), gradient clipping, EMA
weights for evaluation, a progress bar, ``metrics.jsonl``, periodic test evaluation, atomic
checkpoints, SIGTERM/SIGINT handling (finish the step, checkpoint, exit) and NaN/Inf step
skipping. The trainer makes no pictures (and never imports matplotlib); see
``iresnet.app.training.train``.
"""

from __future__ import annotations

import copy
import math
import os
import signal
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from ..datasets import IMAGE_DATASETS
from ..errors import CheckpointError, ConfigError, RouletteVarianceWarning
from ..nn import spectral_penalty
from ..ops import compile_after_first_call
from ..transforms import ActNorm, compile_blocks, set_branch_precision
from .batches import EpochBatches
from .builder import build_model, load_data
from .checkpoint import (
    load_checkpoint,
    load_weights,
    save_checkpoint,
    unflatten_optimizer,
)
from .config import SEED_LIMIT, Config
from .distributed import DistContext, check_precision, setup_distributed, teardown_distributed
from .presets import preset_law_reason
from .runs import Run
from .tasks import Task, make_task

__all__ = ["Trainer", "TrainResult", "learning_rate", "warmup_outlasts_run"]


@dataclass
class TrainResult:
    """What a training run ended with: its folder, last step, why it stopped (``finished``,
    also at the time budget, or ``signal``), the last metrics, and (for pictures) the
    evaluation model and the task."""

    run_dir: Path
    step: int
    stopped: str
    last_metrics: dict[str, float]
    model: nn.Module | None = field(default=None, repr=False)
    task: Task | None = field(default=None, repr=False)
    is_main: bool = True
    signal: int | None = None  # the signal that stopped the run (None for stop_after)
    # The time budget that ended it before ``train.steps``: ``"max_cpu_seconds"`` or
    # ``"max_seconds"`` (None: it ran its steps, or a signal stopped it).
    budget: str | None = None


def cpu_clock() -> float:
    """CPU seconds of this process (all its threads) and of the child processes it has
    waited for: ``train.max_cpu_seconds`` counts the C++ compiler runs of ``torch.compile``,
    which ``time.process_time()`` alone missed (the trainer compiles in-process, so each
    compiler run is a waited-for child). The process's own share comes from
    ``time.process_time()`` (nanosecond resolution); ``os.times()`` ticks in 10 ms, too
    coarse for a budget smaller than a step."""
    t = os.times()
    return time.process_time() + t.children_user + t.children_system


@contextmanager
def preset_law_noted(cfg: Config, *, show: bool = True) -> Iterator[None]:
    """Build a model with ``cfg``'s estimator: where its roulette is its preset's own law,
    kept without a finite-variance guarantee on purpose (``preset_law_reason``), the
    ``RouletteVarianceWarning`` it raises becomes one ``iresnet: note:`` line on stderr
    (``show``: on the main process) that says why and what to set for the guaranteed law. A
    law the user chose, blocks bounded by ``L >= 1`` and every other warning stay warnings."""
    reason = preset_law_reason(cfg)
    if not reason:
        yield
        return
    with warnings.catch_warnings(record=True) as caught:
        yield
    bounds = [
        w.message.lipschitz
        for w in caught
        if isinstance(w.message, RouletteVarianceWarning)
        and w.message.lipschitz is not None
        and w.message.lipschitz < 1
    ]
    for w in caught:  # the others, as they would have been shown
        if not (isinstance(w.message, RouletteVarianceWarning) and w.message.lipschitz in bounds):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
    if bounds and show:
        m = cfg.model
        print(
            f"iresnet: note: the preset's roulette (geometric, p={m.roulette_p:g}) has no "
            f"finite-variance guarantee at Lip(g) <= {max(bounds):.2f}; {reason}; set "
            "model.logdet=roulette-auto for the guaranteed law",
            file=sys.stderr,
        )


def learning_rate(cfg: Config, step: int, budget_spent: float = 0.0) -> float:
    """Learning rate at ``step`` (0-based): linear warm-up, then constant or cosine.

    The cosine decays from ``train.lr`` at ``train.cycle_start`` (0, or where an extension
    restarted it) to 0 at ``train.steps``; before ``cycle_start`` the value is that of the
    current cycle's start (the earlier plan is not kept). ``cosine-budget`` runs the same
    cosine over the fraction ``max(steps done / steps, budget_spent)``, where ``budget_spent``
    is the share of the time budget used (clipped to [0, 1]; the other schedules ignore it).
    """
    t = cfg.train
    warm = min(1.0, (step + 1) / t.warmup_steps) if t.warmup_steps > 0 else 1.0
    if t.lr_schedule in ("cosine", "cosine-budget"):
        done = min(max(step - t.cycle_start, 0), t.steps - t.cycle_start)
        frac = done / (t.steps - t.cycle_start)
        if t.lr_schedule == "cosine-budget":
            frac = max(frac, min(max(budget_spent, 0.0), 1.0))
        return t.lr * warm * 0.5 * (1 + math.cos(math.pi * frac))
    return t.lr * warm


def warmup_outlasts_run(cfg: Config) -> bool:
    """Whether ``train.warmup_steps`` leaves the run below ``train.lr`` throughout, as
    [`learning_rate`][iresnet.app.trainer.learning_rate] computes it.

    The warm-up factor ``min(1, (s + 1) / W)`` of step ``s`` (0-based) is 1 from step ``W - 1``
    on. ``constant``: the run's last step ``steps - 1`` reaches ``train.lr`` unless
    ``W > steps``. The cosines: the warm-up ends no earlier than the last step (``W >= steps``),
    where the cosine has decayed the rate, and the run peaks below ``train.lr`` (it reaches it
    only when the warm-up is done at the cycle's first step, ``W <= cycle_start + 1``).
    """
    t = cfg.train
    if t.lr_schedule == "constant":
        return t.warmup_steps > t.steps
    return t.warmup_steps >= t.steps and t.warmup_steps > t.cycle_start + 1


def _optimizer(cfg: Config, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    t = cfg.train
    if t.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=t.lr, momentum=0.9, weight_decay=t.weight_decay, foreach=True
        )
    # Adam's fused kernel (CPU and CUDA) updates every tensor in one pass and reads the step
    # count on the device: about a third of the multi-tensor version's time on the toy model,
    # and none of its host reads of the step (benchmarks/results/profile.md).
    fused = all(p.device.type in ("cpu", "cuda") for p in params)
    kind = {"fused": True} if fused else {"foreach": True}
    if t.optimizer == "adamw":  # decoupled decay: w <- w - lr * wd * w, outside Adam's scaling
        return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay, **kind)
    return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay, **kind)


def _check_cpp_compiler() -> None:
    """``torch.compile`` on a CPU builds C++ kernels: refuse in one line, before anything is
    written, where no compiler is found (else: a long traceback at the second step)."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler
    except ImportError:  # another torch: leave the check to torch.compile
        return
    try:
        get_cpp_compiler()
    except Exception as exc:  # torch's InvalidCxxCompiler (and what its search raises)
        raise ConfigError(
            "train.compile=true on a CPU needs a C++ compiler for torch.compile, and none was "
            f"found ({type(exc).__name__}): install g++ (or set CXX), or use train.compile=false"
        ) from None


@torch.no_grad()
def _update_ema(ema: nn.Module, model: nn.Module, decay: float, step: int) -> None:
    # Warm-up of the decay, min(decay, (1 + t) / (10 + t)): without it the initial weights keep
    # a share decay^t of the average, which makes short runs evaluate lagging weights.
    decay = min(decay, (1 + step) / (10 + step))
    # One multi-tensor update each: a toy flow has hundreds of small tensors, whose
    # one-by-one updates cost milliseconds a step in Python and dispatch alone.
    averaged, current = list(ema.parameters()), list(model.parameters())
    if len(averaged) != len(current):
        raise RuntimeError("the EMA model's parameters no longer match the model's")
    torch._foreach_lerp_(averaged, current, 1.0 - decay)
    same: tuple[list[Tensor], list[Tensor]] = ([], [])
    for e, b in zip(ema.buffers(), model.buffers(), strict=True):
        if e.shape != b.shape:  # conv power-iteration vectors learn their shape lazily
            e.data = b.detach().clone()
        else:
            same[0].append(e)
            same[1].append(b)
    torch._foreach_copy_(*same)


class _LossModule(nn.Module):
    """``forward(batch) -> (loss, metrics)``: the task's loss as a module DDP can wrap."""

    def __init__(self, model: nn.Module, task: Task) -> None:
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


def check_batch_size(
    batch_size: int, n_train: int, source: str = "", what: str = "samples"
) -> None:
    """Refuse a batch larger than the training set (``source``: where the size comes from,
    shown after it, such as ``" (data.n_train)"``; ``what``: ``"images"`` for an image set,
    as the ``data.train_subset`` message counts them).

    Raises:
        ConfigError: ``batch_size > n_train``, with the largest batch that fits.
    """
    if batch_size > n_train:
        raise ConfigError(
            f"train.batch_size={batch_size} exceeds the {n_train} training {what}{source}; "
            f"use train.batch_size={n_train} or less"
        )


class Trainer:
    """Train ``cfg`` into ``run_dir`` (or continue it with ``resume=True``).

    Named steps, in the order ``run`` calls them: ``build`` (data, model, task,
    optimiser; a new run's data-dependent initialisation or a resumed run's checkpoint),
    then per step ``step`` (one optimisation step), ``evaluate`` (every
    ``eval_every`` steps), ``checkpoint``, and the stop conditions of ``stop_reason``
    (a signal, ``stop_after``, or the time budget); finally ``finish`` saves the final
    weights.

    Arguments:
        cfg: the validated config (for a resumed run, the run's saved config, possibly with
            more ``train.steps``).
        run_dir: the run folder; a new run refuses a folder that already holds a run.
        resume: continue from the newest valid checkpoint (same seed: same final weights).
        progress: show a progress bar (rank 0 only).
        stop_after: stop (with a checkpoint) after this step; for tests of interruption.
    """

    def __init__(
        self,
        cfg: Config,
        run_dir: str | Path,
        *,
        resume: bool = False,
        progress: bool = True,
        stop_after: int | None = None,
    ) -> None:
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.resume, self.progress, self.stop_after = resume, progress, stop_after
        self.step_count, self.bad_in_row = 0, 0
        self.last: dict[str, float] = {}
        self.signal: int | None = None
        self.budget: str | None = None  # the time budget that stopped the run, if one did

    # ------------------------------------------------------------------------------ build
    def build(self, ctx: DistContext) -> None:
        """Set up the run folder, data, model, task, batches, EMA and optimiser."""
        cfg = self.cfg
        if ctx.distributed and cfg.train.lr_schedule == "cosine-budget":
            # Each rank's clock differs: their learning rates, hence their replicas, would too.
            raise ConfigError(
                "train.lr_schedule=cosine-budget follows this process's clock and cannot run on "
                "several processes; use lr_schedule=cosine with a fitted train.steps"
            )
        self.ctx = ctx
        self.run = Run(self.run_dir)
        checkpoint = None
        if self.resume:
            if ctx.is_main:
                self.run.acquire()  # one writer: refuses a run that another process trains
            checkpoint = self.run.latest_checkpoint()
            if checkpoint is None:
                raise CheckpointError(self.run.nothing_to_resume())
        else:
            self.run.check_new()  # refuses a folder that already holds a run, writes nothing
        if ctx.is_main:
            self.run.remove_stale_temporaries()  # left by a process killed mid-write
        data = self.run.load_data(cfg.data) if self.resume else load_data(cfg.data)
        if self.resume:
            self.run.check_data(data, resuming=True)  # the same data, or a clear refusal
            if ctx.is_main:  # they scored weights the run is about to move on from
                self.run.set_aside_evaluations()
        torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
        with preset_law_noted(cfg, show=ctx.is_main):
            self.model = build_model(cfg, data).to(ctx.device)
        self.task = make_task(cfg, data, ctx.device)
        t = cfg.train
        n_train = self.task.n_train()
        what = "images" if cfg.data.name in IMAGE_DATASETS else "samples"
        check_batch_size(t.batch_size, n_train, what=what)
        if t.batch_size % ctx.world:
            raise ConfigError(
                f"train.batch_size={t.batch_size} does not split evenly over {ctx.world} "
                f"processes; use a multiple of {ctx.world}"
            )
        self.batches = EpochBatches(self.task.n_train(), t.batch_size, t.seed, ctx.rank, ctx.world)
        if checkpoint is None:
            self.initialise()
        self.ema = copy.deepcopy(self.model) if t.ema_decay > 0 else None
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = _optimizer(cfg, self.params)
        self.elapsed = self.cpu_elapsed = 0.0
        if checkpoint is not None:
            self.restore(checkpoint)
            if ctx.is_main and self.run.load_config() != cfg:
                self.run.save_config(cfg)  # an extension (more steps), now that it can start
        self.loss_module: nn.Module = _LossModule(self.model, self.task)
        if ctx.distributed:
            from torch.nn.parallel import DistributedDataParallel

            # DDP hooks only run through forward(): the loss module's forward computes the loss.
            ids = [ctx.device.index] if ctx.device.type == "cuda" else None
            self.loss_module = DistributedDataParallel(self.loss_module, device_ids=ids)
        self.unvalidated: list[nn.Module] = []
        if t.compile:
            if ctx.device.type == "cpu":
                _check_cpp_compiler()
            # One compile thread: inductor then runs its C++ compiler as children this
            # process waits for, whose CPU cpu_clock() counts (a worker pool's is not seen).
            import torch._inductor.config as inductor_config

            inductor_config.compile_threads = 1
            # The roulette's draws and its random tail trace into the graph (no break); see
            # iresnet.ops.compiling for the options. A fresh model's first step runs eagerly:
            # it sets up what depends on the data (host reads that would split the compiled
            # step into many graphs for good).
            if t.compile_scope == "blocks":
                # The flow's own checks stay eager. A restored model's set-up is done: its
                # first step compiled, as the uninterrupted run's was, it resumes bit for bit.
                compile_blocks(self.model, ctx.device, eager_first=checkpoint is None)
            else:
                # Flows validate their input once (a host sync that breaks the graph); the
                # compiled loss sees batches the task built, so that check can go while
                # training (``run`` turns it back on).
                for m in self.model.modules():
                    if getattr(m, "validate", None) is True:
                        m.validate = False
                        self.unvalidated.append(m)
                    if isinstance(m, ActNorm):
                        m.is_initialized()  # a restored flag, read now rather than in the graph
                # A restored model's set-up is done: compiled from its first step, as the
                # uninterrupted run's steps were, it resumes bit for bit.
                self.loss_module = compile_after_first_call(  # type: ignore[assignment]
                    self.loss_module, ctx.device, eager_first=checkpoint is None
                )
        if t.precision != "fp32":
            check_precision(t.precision, ctx.device)
            for m in (self.model, self.ema):
                if m is not None:
                    set_branch_precision(m, t.precision)
        if ctx.is_main and not self.resume:
            # Only now that everything is built: a failed start leaves no folder behind that
            # would block the corrected rerun.
            self.run.create(cfg)  # takes the folder's writer lock
            self.created = True
            self.run.save_data_info(data, cfg.data)

    def initialise(self) -> None:
        """Data-dependent initialisation (ActNorm) on the first global batch, before any rank
        diverges; every rank sees the same batch, so the initial weights stay identical."""
        first = EpochBatches(self.task.n_train(), self.cfg.train.batch_size, self.cfg.train.seed)
        with torch.no_grad():
            self.model.train()
            self.task.loss(self.model, self.task.batch("train", first.next()))

    def restore(self, checkpoint: Path) -> None:
        """Weights, EMA, optimiser state, step, clocks and data position of a checkpoint."""
        meta, tensors = load_checkpoint(checkpoint)
        kind = self.cfg.model.kind
        if meta.get("model_kind") != kind:
            raise CheckpointError(
                f"{checkpoint}: saved by a '{meta.get('model_kind')}' model, not '{kind}'"
            )
        load_weights(self.model, checkpoint / "model.safetensors")
        if self.ema is not None:
            load_weights(self.ema, checkpoint / "ema.safetensors")
        try:
            self.optimizer.load_state_dict(unflatten_optimizer(tensors, meta["optimizer"]))
        except (KeyError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{checkpoint}: optimiser state does not fit ({exc})") from None
        self.step_count, self.bad_in_row = int(meta["step"]), int(meta.get("bad_in_row", 0))
        self.elapsed = float(meta["elapsed"])
        self.cpu_elapsed = float(meta.get("cpu_elapsed", 0.0))
        rank = str(self.ctx.rank) if self.ctx.distributed else "0"
        self.batches.load_state(meta["batches"][rank])
        if self.ctx.is_main:
            dropped = self.run.truncate_metrics(self.step_count)
            if dropped:  # a torn row was dropped without a word (try-out 15)
                print(f"iresnet: note: {dropped}", file=sys.stderr)

    # ------------------------------------------------------------------------------- steps
    def _seed_step(self) -> None:
        """Seed the step's randomness (probes, roulette draws, dequantisation noise) from
        ``(seed, step, rank)``: a resumed run draws exactly what the uninterrupted one drew,
        with no RNG state to save, and every rank draws differently."""
        seed = (self.cfg.train.seed * 1_000_003 + self.step_count) * 1009 + self.ctx.rank
        torch.manual_seed(seed % SEED_LIMIT)  # any seed in [0, 2**63) stays in torch's range

    def step(self) -> bool:
        """One optimisation step; a non-finite loss or gradient skips the update.

        Returns whether the step was finite. Raises ``FloatingPointError`` after
        ``train.max_bad_steps`` non-finite steps in a row.
        """
        t = self.cfg.train
        self.model.train()
        lr = learning_rate(self.cfg, self.step_count, self.budget_spent())
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self._seed_step()
        batch = self.task.batch("train", self.batches.next())
        self.optimizer.zero_grad(set_to_none=True)
        loss, metrics = self.loss_module(batch)
        if t.spectral_penalty > 0:  # the NLL in `metrics` stays separate
            loss = loss + t.spectral_penalty * spectral_penalty(self.model)
        finite = bool(torch.isfinite(loss))
        grad_norm: Tensor | None = None
        if finite:
            loss.backward()
            clip = t.grad_clip if t.grad_clip > 0 else float("inf")
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, clip)
            finite = bool(torch.isfinite(grad_norm))
        self.step_count += 1
        if finite:
            self.bad_in_row = 0
            self.optimizer.step()
            if self.ema is not None:
                _update_ema(self.ema, self.model, t.ema_decay, self.step_count)
            if self.ctx.is_main and (
                self.step_count % t.log_every == 0 or self.step_count == t.steps
            ):
                self._log_step(loss, metrics, lr, grad_norm)
            return True
        # Skip the step: no update from a NaN/Inf loss or gradient.
        self.bad_in_row += 1
        self.optimizer.zero_grad(set_to_none=True)
        if self.ctx.is_main:
            self.run.log(
                {
                    "step": self.step_count,
                    "skipped": "non-finite loss or gradient",
                    "bad_in_row": self.bad_in_row,
                }
            )
        if self.bad_in_row >= t.max_bad_steps:
            raise FloatingPointError(self._nan_stop_message())
        return False

    def _nan_stop_message(self) -> str:
        saved = self.run.latest_checkpoint()
        where = (
            f"the last good checkpoint ({saved.name}) is kept; lower the learning rate or "
            f"check the data, then --resume {self.run_dir}"
            if saved is not None
            else "no checkpoint had been written yet (the run folder is removed); lower the "
            "learning rate or check the data, then start again"
        )
        return (
            f"stopped at step {self.step_count}: {self.bad_in_row} consecutive steps with "
            f"NaN/Inf loss or gradient; {where}"
        )

    def _log_step(
        self, loss: Tensor, metrics: dict[str, Tensor], lr: float, grad_norm: Tensor | None
    ) -> None:
        self.last = {k: float(v) for k, v in metrics.items()}
        row = {
            "step": self.step_count,
            "loss": float(loss.detach()),
            **self.last,
            "lr": lr,
            "grad_norm": float(grad_norm) if grad_norm is not None else math.nan,
            **self._clocks(),
        }
        self.run.log(row)
        self.bar.set_postfix({k: f"{v:.4f}" for k, v in self.last.items()}, refresh=False)

    @property
    def evaluation_model(self) -> nn.Module:
        """The EMA weights when kept, else the live model."""
        return self.ema if self.ema is not None else self.model

    def evaluate(self) -> None:
        """Test metrics of the evaluation model on ``eval_batches`` batches, logged."""
        test = self.task.evaluate(self.evaluation_model, max_batches=self.cfg.train.eval_batches)
        self.run.log({"step": self.step_count, **test, **self._clocks()})
        self.last.update(test)

    def _clocks(self) -> dict[str, float]:
        """Wall and CPU seconds of this run so far, as every ``metrics.jsonl`` row gives them."""
        return {
            "seconds": round(time.perf_counter() - self.start, 3),
            "cpu_seconds": round(cpu_clock() - self.cpu_start, 3),
        }

    def checkpoint(self) -> None:
        """An atomic checkpoint of everything ``restore`` needs (rank 0 writes)."""
        if not self.ctx.is_main:
            return
        state = {
            "elapsed": time.perf_counter() - self.start,
            "bad_in_row": self.bad_in_row,
            "cpu_elapsed": cpu_clock() - self.cpu_start,
            "model_kind": self.cfg.model.kind,
            "config": self.cfg.to_dict(),
            "batches": {str(r): self.batches.state() for r in range(self.ctx.world)},
        }
        save_checkpoint(
            self.run.checkpoints,
            self.step_count,
            self.model,
            self.ema,
            self.optimizer,
            state,
            keep_last=self.cfg.train.keep_last,
            check=self.run.is_own_checkpoint,
        )

    def budget_spent(self) -> float:
        """The share of the time budget used: of ``train.max_cpu_seconds`` if set, else of
        ``train.max_seconds``, else 0 (read by the ``cosine-budget`` schedule)."""
        t = self.cfg.train
        if t.max_cpu_seconds > 0:
            return (cpu_clock() - self.cpu_start) / t.max_cpu_seconds
        if t.max_seconds > 0:
            return (time.perf_counter() - self.start) / t.max_seconds
        return 0.0

    def spent_budget(self) -> str | None:
        """The budget this process has spent: ``"max_cpu_seconds"`` (checked first),
        ``"max_seconds"``, or None."""
        t = self.cfg.train
        if t.max_cpu_seconds > 0 and cpu_clock() - self.cpu_start >= t.max_cpu_seconds:
            return "max_cpu_seconds"
        if t.max_seconds > 0 and time.perf_counter() - self.start >= t.max_seconds:
            return "max_seconds"
        return None

    def out_of_budget(self) -> bool:
        """Past ``train.max_seconds`` (wall-clock) or ``train.max_cpu_seconds`` (CPU); the
        budget that stopped it is kept in ``self.budget`` (for the final line)."""
        spent = self.spent_budget()
        # Clocks differ between ranks: all must stop after the same step.
        over = self.ctx.any(spent is not None)
        if over:  # another rank's clock may have stopped it: name the budget that is set
            t = self.cfg.train
            self.budget = spent or ("max_cpu_seconds" if t.max_cpu_seconds > 0 else "max_seconds")
        return over

    def stop_reason(self, stop: _StopSignal) -> str | None:
        """``"signal"`` (a signal or ``stop_after``), ``"budget"`` (time), or None."""
        interrupted = stop.received is not None or (
            self.stop_after is not None and self.step_count >= self.stop_after
        )
        if self.ctx.any(interrupted):  # every rank stops after the same step
            return "signal"
        return "budget" if self.out_of_budget() else None

    def finish(self) -> None:
        """The final evaluation weights as ``model.safetensors`` (rank 0)."""
        if self.ctx.is_main:
            self.run.save_final_weights(self.evaluation_model, self.step_count)

    # --------------------------------------------------------------------------------- run
    def run_loop(self) -> str:
        """Steps until ``train.steps`` or a stop condition; returns why it stopped."""
        t = self.cfg.train
        main = self.ctx.is_main
        self.bar = tqdm(
            total=t.steps,
            initial=self.step_count,
            disable=not (self.progress and main),
            dynamic_ncols=True,
            desc=f"train {_run_title(self.cfg)}",
            file=sys.stderr,
        )
        self.start = time.perf_counter() - self.elapsed
        self.cpu_start = cpu_clock() - self.cpu_elapsed
        stopped = "finished"
        try:
            with _StopSignal() as stop:
                while self.step_count < t.steps:
                    self.step()
                    self.bar.update(1)
                    evaluated = main and (
                        self.step_count % t.eval_every == 0 or self.step_count == t.steps
                    )
                    if evaluated:
                        self.evaluate()
                    reason = self.stop_reason(stop)
                    if reason == "budget":  # ends the run: evaluated and saved, like a finish
                        if main and not evaluated:
                            self.evaluate()
                        self.checkpoint()
                        break
                    if (
                        self.step_count % t.checkpoint_every == 0
                        or self.step_count == t.steps
                        or reason == "signal"
                    ):
                        self.checkpoint()
                    if reason == "signal":
                        stopped = "signal"
                        self.signal = stop.received
                        break
        finally:
            self.bar.close()
        return stopped

    def run(self) -> TrainResult:
        """Build, train and save; see the class docstring."""
        ctx = setup_distributed(self.cfg.train.device)
        if ctx.device.type == "cpu":
            # Subnormal floats (tiny gradients, Adam's squared moments) run orders of magnitude
            # slower on CPUs; flushing them to zero changes nothing measurable in the results.
            torch.set_flush_denormal(True)
        if self.cfg.train.threads > 0:
            torch.set_num_threads(self.cfg.train.threads)
        completed = False
        self.created = False
        try:
            self.build(ctx)
            stopped = self.run_loop()
            if stopped == "finished":
                self.finish()
            completed = True
        except BaseException:
            if self.created and not any(self.run.checkpoints.glob("step-*")):
                self.run.discard()  # a new run that failed before its first checkpoint
            raise
        finally:
            for m in getattr(self, "unvalidated", ()):
                m.validate = True  # the model handed back checks its input again
            if hasattr(self, "run"):
                self.run.release()  # the folder's writer lock (held by the main process)
            teardown_distributed(wait=completed)
        return TrainResult(
            self.run.path,
            self.step_count,
            stopped,
            self.last,
            self.evaluation_model,
            self.task,
            ctx.is_main,
            self.signal,
            self.budget if self.step_count < self.cfg.train.steps else None,
        )


def _run_title(cfg: Config) -> str:
    """What the progress bar names: the data file's name for ``--data`` runs (the preset
    only lends them its model and training), else the preset."""
    if cfg.data.name == "array" and cfg.data.path:
        return Path(cfg.data.path).name
    return cfg.preset
