"""The pictures of a finished run, per task kind (PNG files in the run folder).

Only this module and ``plots`` import matplotlib; the trainer does not, so a
training process that makes no pictures never loads it.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..transforms import swap_logdets
from . import plots
from .tasks import ClassificationTask, DensityTask, Task
from .tasks.base import evaluating, scoring_estimator

__all__ = ["figure_names", "run_figures"]


def figure_names(task: Task) -> list[str]:
    """The file names ``run_figures`` writes for ``task``, in the order it writes them (a
    task loaded without its data, ``load_run(..., data=False)``, knows them too)."""
    if isinstance(task, ClassificationTask):
        return ["learning_curve.png", "error_curve.png", "reconstructions.png"]
    assert isinstance(task, DensityTask)
    names = ["learning_curve.png"]
    if task.images:
        names += ["samples.png", "samples_t0.7.png", "reconstructions.png"]
    elif task.dim == 2 and task.context_dim:
        shown = 3 if task.data.report_contexts is not None else 1
        names += [f"figure_context{i}.png" for i in range(shown)]
    elif task.dim == 2:
        names.append("figure.png")
    return names


def run_figures(
    task: Task,
    model: nn.Module,
    run_dir: Path,
    records: list[dict[str, Any]],
    only: Collection[str] | None = None,
) -> list[Path]:
    """Write the pictures of ``task`` for ``model`` into ``run_dir`` (those named in ``only``,
    when given: see ``figure_names``); return their paths."""
    wanted = set(figure_names(task) if only is None else only)
    if isinstance(task, ClassificationTask):
        return _classifier_figures(task, model, run_dir, records, wanted)
    assert isinstance(task, DensityTask)
    return _density_figures(task, model, run_dir, records, wanted)


def _density_figures(
    task: DensityTask,
    model: nn.Module,
    run_dir: Path,
    records: list[dict[str, Any]],
    wanted: set[str],
) -> list[Path]:
    out = []
    if "learning_curve.png" in wanted:
        out.append(
            plots.plot_learning_curve(
                records,
                run_dir / "learning_curve.png",
                keys=(task.metric, f"test_{task.metric}"),
                ylabel="bits/dim" if task.images else "NLL (nats)",
            )
        )
    if task.images:
        # Samples at T = 1 (the model) and a lower temperature (the typical set's core, as
        # the Glow and Residual Flows papers show), then test images beside x -> z -> x;
        # class-conditional: one row of samples per class.
        for t, name in ((1.0, "samples.png"), (0.7, "samples_t0.7.png")):
            if name not in wanted:
                continue
            if task.context_dim:
                samples = task.sample(model, 8, temperature=t)[0].clamp(0, 1)
                title, nrow = f"samples per class (rows), T={t}", 8
            else:
                samples = task.sample(model, 64, temperature=t)[0].clamp(0, 1)
                title, nrow = f"samples (T={t})", None
            out.append(plots.plot_image_grid(samples, run_dir / name, nrow=nrow, title=title))
        if "reconstructions.png" in wanted:
            x, rec, _ = task.reconstruct(model, 32)
            path = run_dir / "reconstructions.png"
            out.append(plots.plot_reconstructions(x.cpu(), rec.cpu(), path))
    elif task.dim == 2 and task.context_dim:
        out += _conditional_toy_figures(task, model, run_dir, wanted)
    elif task.dim == 2 and "figure.png" in wanted:
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


def _conditional_toy_figures(
    task: DensityTask, model: nn.Module, run_dir: Path, wanted: set[str]
) -> list[Path]:
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
        if f"figure_context{i}.png" not in wanted:
            continue
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
    task: ClassificationTask,
    model: nn.Module,
    run_dir: Path,
    records: list[dict[str, Any]],
    wanted: set[str],
) -> list[Path]:
    rows = [{**r, "train_error": 1.0 - r["acc"]} if "acc" in r else r for r in records]
    out = []
    for name, keys, ylabel in (
        ("learning_curve.png", task.curve_keys(), "loss"),
        ("error_curve.png", ("train_error", "test_error"), "error"),
    ):
        if name in wanted:
            out.append(plots.plot_learning_curve(rows, run_dir / name, keys=keys, ylabel=ylabel))
    if "reconstructions.png" in wanted:
        x, rec, _, _ = task.reconstruct(model, 16)
        shown = torch.nan_to_num(rec, nan=0.0, posinf=1.0, neginf=0.0).clamp(0, 1)
        path = run_dir / "reconstructions.png"
        out.append(plots.plot_reconstructions(x.cpu(), shown.cpu(), path))
    return out
