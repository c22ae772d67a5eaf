"""Data: toy 2-D densities, user arrays and image sets, all read or generated locally.

:func:`load_data` turns a :class:`~iresnet.config.DataConfig` into a :class:`DataBundle`, the
one object the training loop and the evaluation read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..config import DataConfig
from ..errors import ConfigError
from .arrays import Standardizer, load_array, split_array
from .images import DATASET_NAMES, load_image_dataset
from .toy import TOY_DATASETS, toy_log_density, toy_split, true_entropy

__all__ = ["DataBundle", "load_data", "TOY_DATASETS", "IMAGE_DATASETS"]

IMAGE_DATASETS = tuple(DATASET_NAMES)


@dataclass
class DataBundle:
    """Train and test tensors and what is known about them.

    Attributes:
        name: the data set's name.
        kind: ``"vector"`` (``(N, d)`` float) or ``"image"`` (``(N, C, H, W)`` uint8 levels).
        train_x, test_x: the data; train_y, test_y: labels (images) or None.
        n_levels: images: quantisation levels ``K``.
        standardizer: user arrays: the map to standard units (its log-det converts NLLs back).
        true_log_density: toy densities with a closed form: ``log p(x)`` on ``(M, 2)``.
    """

    name: str
    kind: str
    train_x: Tensor
    test_x: Tensor
    train_y: Tensor | None = None
    test_y: Tensor | None = None
    n_levels: int | None = None
    standardizer: Standardizer | None = None
    true_log_density: Callable[[Tensor], Tensor] | None = None

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    def true_entropy(self) -> tuple[float, float] | None:
        """Monte Carlo entropy of the true density with its standard error, where known."""
        return true_entropy(self.name) if self.true_log_density is not None else None


def load_data(cfg: DataConfig, standardizer: Standardizer | None = None) -> DataBundle:
    """Load or generate the data named by ``cfg``.

    ``standardizer``: for user arrays, reuse saved statistics (a resumed or evaluated run)
    instead of fitting them again, so a changed file cannot silently change the units.
    """
    if cfg.name in TOY_DATASETS:
        train, test = toy_split(cfg.name, cfg.n_train, cfg.n_test, seed=cfg.seed)
        return DataBundle(cfg.name, "vector", train, test, true_log_density=toy_log_density(cfg.name))
    if cfg.name == "array":
        if not cfg.path:
            raise ConfigError("data.name=array needs data.path (or pass --data FILE)")
        arr = load_array(cfg.path)
        train_np, test_np = split_array(arr, cfg.test_fraction, cfg.seed)
        std = standardizer or Standardizer.fit(train_np)
        train = torch.as_tensor(std.transform(train_np), dtype=torch.float32)
        test = torch.as_tensor(std.transform(test_np), dtype=torch.float32)
        return DataBundle(cfg.path, "vector", train, test, standardizer=std)
    if cfg.name in IMAGE_DATASETS:
        tr = load_image_dataset(cfg.name, "train", cfg.data_dir)
        te = load_image_dataset(cfg.name, "test", cfg.data_dir)
        return DataBundle(cfg.name, "image", tr.images, te.images, tr.labels, te.labels, n_levels=tr.n_levels)
    known = [*TOY_DATASETS, "array", *IMAGE_DATASETS]
    raise ConfigError(f"unknown data set '{cfg.name}'; known: {known}")
