"""The pictures of a finished run, per task kind (PNG files in the run folder).

Only this module and ``plots`` import matplotlib; the trainer does not, so a
training process that makes no pictures never loads it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..transforms import swap_logdets
from . import plots
from .tasks import ClassificationTask, DensityTask, Task
from .tasks.base import evaluating, scoring_estimator

__all__ = ["run_figures"]


def run_figures(
    task: Task, model: nn.Module, run_dir: Path, records: list[dict[str, Any]]
) -> list[Path]:
    """Write the pictures of ``task`` for ``model`` into ``run_dir``; return their paths."""
    if isinstance(task, ClassificationTask):
        return _classifier_figures(task, model, run_dir, records)
    assert isinstance(task, DensityTask)
    return _density_figures(task, model, run_dir, records)


def _density_figures(
    task: DensityTask, model: nn.Module, run_dir: Path, records: list[dict[str, Any]]
) -> list[Path]:
    out = [
        plots.plot_learning_curve(
            records,
            run_dir / "learning_curve.png",
            keys=(task.metric, f"test_{task.metric}"),
            ylabel="bits/dim" if task.images else "NLL (nats)",
        )
    ]
    if task.images and task.context_dim:
        # Class-conditional: one row of samples per class, at T = 1 and 0.7.
        for t, name in ((1.0, "samples.png"), (0.7, "samples_t0.7.png")):
            samples = task.sample(model, 8, temperature=t)[0].clamp(0, 1)
            out.append(
                plots.plot_image_grid(
                    samples, run_dir / name, nrow=8, title=f"samples per class (rows), T={t}"
                )
            )
        x, rec, _ = task.reconstruct(model, 32)
        out.append(plots.plot_reconstructions(x.cpu(), rec.cpu(), run_dir / "reconstructions.png"))
    elif task.images:
        # Samples at T = 1 (the model) and a lower temperature (the typical set's core, as
        # the Glow and Residual Flows papers show), then test images beside x -> z -> x.
        for t, name in ((1.0, "samples.png"), (0.7, "samples_t0.7.png")):
            samples = task.sample(model, 64, temperature=t)[0].clamp(0, 1)
            out.append(plots.plot_image_grid(samples, run_dir / name, title=f"samples (T={t})"))
        x, rec, _ = task.reconstruct(model, 32)
        out.append(plots.plot_reconstructions(x.cpu(), rec.cpu(), run_dir / "reconstructions.png"))
    elif task.dim == 2 and task.context_dim:
        out += _conditional_toy_figures(task, model, run_dir)
    elif task.dim == 2:
        test = task.data.test_x[:5000]
        samples = task.sample(model, 5000)[0]
        _, exact = scoring_estimator(2)

        def learned(points: Tensor) -> Tensor:  # points in data units
            with evaluating(model), swap_logdets(model, exact):
                return model.log_prob(points.to(task.device, task.data.test_x.dtype))

        out.append(
            plots.plot_toy_figure(
                test,
                learned,
                samples.cpu(),
                run_dir / "figure.png",
                truth_log_density=task.data.true_log_density,
            )
        )
    return out


def _conditional_toy_figures(task: DensityTask, model: nn.Module, run_dir: Path) -> list[Path]:
    """``figure_context{i}.png``: data | [true density |] learned density | samples at a few
    contexts (three of a conditional toy's reporting contexts; else the first test context,
    with the test points of every context as the data panel)."""
    _, exact = scoring_estimator(2)
    dtype = task.model_dtype(model)
    data = task.data
    if data.report_contexts is not None:
        rc = data.report_contexts
        contexts = rc[[0, len(rc) // 2, len(rc) - 1]]
    else:
        assert data.test_c is not None
        contexts = data.test_c[:1]
    out = []
    g = torch.Generator().manual_seed(0)
    for i, c in enumerate(contexts):
        c = c.double()
        if data.sample_given is not None:
            shown = data.sample_given(c.expand(5000, -1), g)
        else:
            shown = data.test_x[:5000]
        samples = task.sample(model, 5000, contexts=c[None])[0]

        def learned(points: Tensor, c: Tensor = c) -> Tensor:
            cs = c.expand(points.shape[0], -1).to(task.device, dtype)
            with evaluating(model), swap_logdets(model, exact):
                return model.log_prob(points.to(task.device, dtype), cs)

        truth = None
        if data.true_conditional_log_density is not None:
            density = data.true_conditional_log_density

            def truth(points: Tensor, c: Tensor = c, density=density) -> Tensor:  # type: ignore[misc]
                return density(points.double(), c.expand(points.shape[0], -1))

        label = ", ".join(f"{v:.3g}" for v in c.tolist())
        out.append(
            plots.plot_toy_figure(
                shown,
                learned,
                samples.cpu(),
                run_dir / f"figure_context{i}.png",
                titles=(f"data (c = {label})", "learned density", "samples (inverse)"),
                truth_log_density=truth,
            )
        )
    return out


def _classifier_figures(
    task: ClassificationTask, model: nn.Module, run_dir: Path, records: list[dict[str, Any]]
) -> list[Path]:
    rows = [{**r, "train_error": 1.0 - r["acc"]} if "acc" in r else r for r in records]
    out = [
        plots.plot_learning_curve(
            rows, run_dir / "learning_curve.png", keys=task.curve_keys(), ylabel="loss"
        ),
        plots.plot_learning_curve(
            rows, run_dir / "error_curve.png", keys=("train_error", "test_error"), ylabel="error"
        ),
    ]
    x, rec, _, _ = task.reconstruct(model, 16)
    shown = torch.nan_to_num(rec, nan=0.0, posinf=1.0, neginf=0.0).clamp(0, 1)
    out.append(plots.plot_reconstructions(x.cpu(), shown.cpu(), run_dir / "reconstructions.png"))
    return out
