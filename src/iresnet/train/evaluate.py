"""Loading a finished (or interrupted) run for evaluation, sampling and certification."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..config import Config
from ..data import DataBundle, load_data
from ..errors import CheckpointError
from ..models import build_model
from .checkpoint import latest_checkpoint, load_weights
from .runs import Run
from .tasks import Task, make_task

__all__ = ["TrainedRun", "load_run"]


@dataclass
class TrainedRun:
    """A run's config, data, task and evaluation model (EMA weights, eval mode)."""

    run: Run
    cfg: Config
    data: DataBundle
    task: Task
    model: nn.Module
    weights: Path


def load_run(run_dir: str | Path, device: str | None = None) -> TrainedRun:
    """Rebuild a run's model from its config and load its final (or newest checkpoint) weights.

    Weights come from ``model.safetensors`` (written at the end of training) or, for a run that
    has not finished, the EMA weights of its newest valid checkpoint. Nothing is unpickled.
    """
    run = Run(run_dir)
    cfg = run.load_config()
    if device is not None:
        cfg.train.device = device
    dev = torch.device(cfg.train.device)
    if dev.type == "cpu":
        torch.set_flush_denormal(True)
    data = load_data(cfg.data, standardizer=run.load_standardizer())
    model = build_model(cfg.model, data).to(dev)
    weights = run.weights_path
    if not weights.is_file():
        ckpt = latest_checkpoint(run.checkpoints)
        if ckpt is None:
            raise CheckpointError(f"{run.path}: no model.safetensors and no valid checkpoint to evaluate")
        weights = ckpt / "ema.safetensors"
    load_weights(model, weights)
    model.eval()
    return TrainedRun(run, cfg, data, make_task(cfg, data, dev), model, weights)
