"""A run is a folder: ``config.json``, ``data.json``, ``metrics.jsonl``, ``checkpoints/``,
``model.safetensors`` (the final EMA weights) and the plots. Every write is atomic (but the
appends to ``metrics.jsonl``, whose torn last line is skipped on reading). ``load_run``
rebuilds a finished or interrupted run for evaluation, sampling and certification."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save
from torch import nn

from ..datasets import DataBundle, Standardizer
from ..errors import CheckpointError, ConfigError
from .builder import build_model, load_data
from .checkpoint import latest_checkpoint, load_weights
from .config import Config
from .distributed import resolve_device
from .files import atomic_write
from .tasks import Task, make_task

__all__ = ["Run", "TrainedRun", "load_run"]


class Run:
    """File layout and bookkeeping of one run folder."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.config_path = self.path / "config.json"
        self.data_path = self.path / "data.json"
        self.metrics_path = self.path / "metrics.jsonl"
        self.checkpoints = self.path / "checkpoints"
        self.weights_path = self.path / "model.safetensors"

    def check_new(self) -> None:
        """Refuse, before anything is written, a path that is a file or already holds a run.

        Raises:
            ConfigError: the path exists as a file, or holds a run's config or checkpoints.
        """
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"{self.path} is a file, not a run folder: choose another --out")
        if self.config_path.exists() or self.checkpoints.exists():
            raise ConfigError(
                f"{self.path} already holds a run; continue it with --resume {self.path}, "
                "or choose another --out"
            )

    def create(self, cfg: Config) -> None:
        """Start a new run; a folder that already holds one is refused (nothing is overwritten).

        Raises:
            ConfigError: see ``check_new``, or the folder cannot be created.
        """
        self.check_new()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the run folder {self.path}: {exc.strerror}") from None
        atomic_write(self.config_path, cfg.to_json() + "\n")

    def last_step(self) -> int:
        """The step of the newest valid checkpoint (0 without one)."""
        ckpt = latest_checkpoint(self.checkpoints)
        return 0 if ckpt is None else int(ckpt.name.removeprefix("step-"))

    def remove_stale_temporaries(self) -> None:
        """Delete half-written checkpoint folders (``.tmp-*``) of a process that was killed."""
        if self.checkpoints.is_dir():
            for p in self.checkpoints.iterdir():
                if p.name.startswith(".tmp-"):
                    shutil.rmtree(p, ignore_errors=True)

    def load_config(self) -> Config:
        """The run's validated ``config.json``.

        Raises:
            CheckpointError: no ``config.json`` (not a run folder).
            ConfigError: the file is not valid JSON or not a valid config.
        """
        if not self.config_path.is_file():
            raise CheckpointError(f"{self.path}: no config.json: not an iresnet run folder")
        try:
            raw = json.loads(self.config_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{self.config_path}: not valid JSON ({exc})") from None
        return Config.from_dict(raw)

    def save_config(self, cfg: Config) -> None:
        """Replace ``config.json`` atomically."""
        atomic_write(self.config_path, cfg.to_json() + "\n")

    def save_data_info(self, data: DataBundle) -> None:
        """``data.json``: name, kind, shapes, sizes, levels and the standardiser's statistics."""
        info: dict[str, Any] = {
            "name": data.name,
            "kind": data.kind,
            "event_shape": list(data.event_shape),
            "n_train": int(data.train_x.shape[0]),
            "n_test": int(data.test_x.shape[0]),
        }
        if data.standardizer is not None:
            info["standardizer"] = data.standardizer.to_dict()
        if data.context_dim:
            info["context_dim"] = data.context_dim
        if data.context_standardizer is not None:
            info["context_standardizer"] = data.context_standardizer.to_dict()
        if data.n_levels is not None:
            info["n_levels"] = data.n_levels
        atomic_write(self.data_path, json.dumps(info, indent=2) + "\n")

    def load_standardizer(self, key: str = "standardizer") -> Standardizer | None:
        """Statistics saved when the run started (so evaluation uses the training units);
        ``key="context_standardizer"`` for those of the contexts."""
        if not self.data_path.is_file():
            return None
        info = json.loads(self.data_path.read_text(encoding="utf-8"))
        return Standardizer.from_dict(info[key]) if key in info else None

    def log(self, row: dict[str, Any]) -> None:
        """Append one JSON row to ``metrics.jsonl``."""
        with open(self.metrics_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")

    def records(self) -> list[dict[str, Any]]:
        """Every row of ``metrics.jsonl`` (a line torn by a crash is skipped)."""
        if not self.metrics_path.is_file():
            return []
        rows = []
        for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line torn by a crash
        return rows

    def truncate_metrics(self, step: int) -> None:
        """Drop rows logged after ``step`` (by an interrupted run that is now resumed from it)."""
        kept = [r for r in self.records() if int(r.get("step", 0)) <= step]
        atomic_write(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))

    def save_final_weights(self, model: nn.Module) -> None:
        """``model.safetensors``: the final (EMA) weights and buffers, written atomically."""
        state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
        atomic_write(self.weights_path, save(state))


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

    Raises:
        CheckpointError: not a run folder, or no weights that fit the model.
    """
    run = Run(run_dir)
    cfg = run.load_config()
    if device is not None:
        cfg.train.device = device
    dev = resolve_device(cfg.train.device)
    if dev.type == "cpu":
        torch.set_flush_denormal(True)
    data = load_data(
        cfg.data,
        standardizer=run.load_standardizer(),
        context_standardizer=run.load_standardizer("context_standardizer"),
    )
    model = build_model(cfg, data).to(dev)
    weights = run.weights_path
    if not weights.is_file():
        ckpt = latest_checkpoint(run.checkpoints)
        if ckpt is None:
            raise CheckpointError(
                f"{run.path}: no model.safetensors and no valid checkpoint to evaluate"
            )
        weights = ckpt / "ema.safetensors"
    load_weights(model, weights)
    model.eval()
    return TrainedRun(run, cfg, data, make_task(cfg, data, dev), model, weights)
