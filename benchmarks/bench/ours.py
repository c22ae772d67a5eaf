"""Our model trained by the real loop (:func:`iresnet.app.training.train`) under a budget of
CPU seconds, then loaded as ``iresnet evaluate`` would load it."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from iresnet.app.config import Config
from iresnet.app.files import atomic_write
from iresnet.app.runs import Run, TrainedRun, load_run
from iresnet.app.trainer import TrainResult
from iresnet.app.training import train

from . import metrics


def fit_steps(
    cfg: Config, budget: float, work_dir: Path, timing_steps: int = 15
) -> tuple[int, float]:
    """Steps of ``cfg``'s training that fit in 95% of ``budget`` CPU seconds, and the measured
    CPU seconds per step, from a short timing run of the same config in ``work_dir/timing``
    (replaced on every call; not counted in the budget).

    Used so that a cosine schedule ends when the budget does instead of being cut mid-decay.
    """
    probe = cfg.override(
        [
            f"train.steps={timing_steps}",
            "train.eval_every=1000000",
            "train.checkpoint_every=1000000",
            "train.max_seconds=0",
            "train.max_cpu_seconds=0",
        ]
    )
    timing_dir = Path(work_dir) / "timing"
    shutil.rmtree(timing_dir, ignore_errors=True)
    train(probe, timing_dir, progress=False, figures=False)
    per_step = metrics.logged_max(metrics.records(timing_dir), "cpu_seconds") / timing_steps
    return max(int(0.95 * budget / per_step), cfg.train.warmup_steps + 1), per_step


#: ``train.steps`` of a run whose cosine follows the clock: only the budget stops it.
CLOCK_STEPS = 10_000_000


@dataclass
class BudgetRun:
    """A run trained under a CPU budget: its config (with the fitted steps), what the loop
    returned, the trained model as evaluation sees it, and the cost."""

    cfg: Config
    result: TrainResult
    trained: TrainedRun
    planned_steps: int | None  # None where the schedule follows the clock
    timing_cpu_seconds_per_step: float | None
    wall_seconds: float  # of the train() call, its final pictures included
    cpu_share: float  # CPU seconds / wall seconds over the train() call

    @property
    def records(self) -> metrics.Rows:
        return self.trained.run.records()


def budget_overrides(
    cfg: Config, budget: float, steps: int | None, follow_clock: bool
) -> list[str]:
    """Overrides that train ``cfg`` for ``budget`` CPU seconds: ``steps`` fitted to it, or, with
    ``follow_clock`` and a cosine schedule, ``train.lr_schedule=cosine-budget`` (the cosine
    decays over the CPU budget, so the run uses all of it whatever the machine's speed) and
    ``steps`` (or :data:`CLOCK_STEPS`) only as a cap."""
    base = [f"train.max_cpu_seconds={budget}", "train.max_seconds=0"]
    if follow_clock and cfg.train.lr_schedule in ("cosine", "cosine-budget"):
        return [*base, "train.lr_schedule=cosine-budget", f"train.steps={steps or CLOCK_STEPS}"]
    if steps is None:
        raise ValueError("steps must be given unless the schedule follows the clock")
    return [*base, f"train.steps={steps}"]


def train_under_budget(
    cfg: Config,
    budget: float,
    run_dir: Path,
    timing_dir: Path,
    *,
    timing_steps: int = 15,
    max_steps: int | None = None,
    figures: bool = True,
    follow_clock: bool = False,
    resume: bool = False,
) -> BudgetRun:
    """Train ``cfg`` into ``run_dir`` for ``budget`` CPU seconds (``train.max_cpu_seconds``;
    the wall-clock cap ``train.max_seconds`` off), and load the result.

    ``train.steps`` is fitted to the budget by :func:`fit_steps` in ``timing_dir`` (at most
    ``max_steps``), or, with ``follow_clock`` and a cosine schedule, the cosine follows the CPU
    clock (:func:`budget_overrides`; no timing run): a fitted step count under-uses the budget
    when the timing run is slower than the steps that follow (first steps, a busier machine),
    and is cut mid-decay when it is faster.

    ``resume``: continue the run in ``run_dir`` from its newest checkpoint with the plan made
    when it started (kept in ``timing_dir/plan.json``), its CPU seconds counted from where it
    stopped; without a checkpoint to continue, start afresh. Raises ``RuntimeError`` when the
    run was stopped by a signal (its result would be a half-trained model)."""
    steps: int | None
    per_step: float | None
    plan_file = Path(timing_dir) / "plan.json"
    checkpoint = Run(run_dir).latest_checkpoint() if run_dir.exists() else None
    if resume and checkpoint is not None and plan_file.exists():
        plan = json.loads(plan_file.read_text())
        steps, per_step = plan["steps"], plan["cpu_seconds_per_step"]
        cfg = Run(run_dir).load_config()
    else:
        if resume and run_dir.exists():
            shutil.rmtree(run_dir)  # killed before its first checkpoint: nothing to keep
        resume = False
        if follow_clock and cfg.train.lr_schedule in ("cosine", "cosine-budget"):
            steps, per_step = max_steps, None
        else:
            steps, per_step = fit_steps(cfg, budget, timing_dir, timing_steps)
            if max_steps is not None:
                steps = min(steps, max_steps)
        cfg = cfg.override(budget_overrides(cfg, budget, steps, follow_clock))
        Path(timing_dir).mkdir(parents=True, exist_ok=True)
        atomic_write(plan_file, json.dumps({"steps": steps, "cpu_seconds_per_step": per_step}))
    t0, c0 = time.perf_counter(), time.process_time()
    result = train(cfg, run_dir, resume=resume, progress=False, figures=figures)
    if result.stopped == "signal":
        raise RuntimeError(f"{run_dir}: stopped by a signal at step {result.step}; resume it")
    wall = time.perf_counter() - t0
    cpu_share = (time.process_time() - c0) / wall
    planned = None if cfg.train.lr_schedule == "cosine-budget" else steps
    return BudgetRun(cfg, result, load_run(run_dir), planned, per_step, wall, cpu_share)
