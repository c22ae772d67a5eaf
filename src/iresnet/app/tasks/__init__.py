"""Tasks: what a run learns and how it is evaluated (density, classification, hybrid)."""

from __future__ import annotations

import torch

from ...datasets import DataBundle
from ..config import Config
from .base import Task, mean_se
from .classification import ClassificationTask, HybridTask
from .density import DensityTask

__all__ = [
    "Task",
    "DensityTask",
    "ClassificationTask",
    "HybridTask",
    "make_task",
    "mean_se",
]


def make_task(cfg: Config, data: DataBundle, device: torch.device) -> Task:
    """The task of ``cfg.model.kind``: classifier, hybrid, or density for every flow."""
    if cfg.model.kind == "classifier":
        return ClassificationTask(cfg, data, device)
    if cfg.model.kind == "hybrid":
        return HybridTask(cfg, data, device)
    return DensityTask(cfg, data, device)
