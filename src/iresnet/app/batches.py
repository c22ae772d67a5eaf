"""Deterministic, resumable mini-batches over in-memory data, sharded across ranks.

Every epoch is a permutation drawn from ``seed + epoch`` (as ``DistributedSampler`` does, and
with it: each rank takes its own slice of the same permutation); the position is two integers,
so a resumed run continues with exactly the batches the interrupted one would have drawn.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor
from torch.utils.data.distributed import DistributedSampler

from ..datasets import DataBundle

__all__ = ["EpochBatches", "stage_data", "DEVICE_DATA_LIMIT"]

#: Image sets up to this size (bytes, as stored: uint8 levels) live on the accelerator.
DEVICE_DATA_LIMIT = 2 * 1024**3


def stage_data(data: DataBundle, device: torch.device) -> DataBundle:
    """Place an image set where the training loop reads it fastest.

    On an accelerator, a set that fits in ``DEVICE_DATA_LIMIT`` (Fashion-MNIST: 55 MB,
    CIFAR-10: 184 MB as uint8) is copied there once, so a batch is one on-device gather and the
    GPU never waits for a host-to-device copy or a loader worker; a larger one is pinned, so its
    batches copy asynchronously (``non_blocking``). On the CPU, and for vectors, nothing moves.
    """
    if device.type == "cpu" or data.kind != "image":
        return data
    tensors = {k: getattr(data, k) for k in ("train_x", "test_x", "train_y", "test_y")}
    size = sum(t.numel() * t.element_size() for t in tensors.values() if t is not None)
    move = (lambda t: t.to(device)) if size <= DEVICE_DATA_LIMIT else (lambda t: t.pin_memory())
    return replace(data, **{k: (move(t) if t is not None else None) for k, t in tensors.items()})


@dataclass
class EpochBatches:
    """Global batches of ``batch_size`` indices into ``n`` items; this rank gets its share.

    Arguments:
        n: data size; batch_size: the global batch (split evenly across ranks);
        seed: permutation seed; rank, world: this process's place.
    """

    n: int
    batch_size: int
    seed: int
    rank: int = 0
    world: int = 1
    epoch: int = 0
    position: int = 0  # batches already taken in this epoch

    def __post_init__(self) -> None:
        if self.batch_size % self.world:
            raise ValueError(
                f"batch size {self.batch_size} does not split evenly over {self.world} processes"
            )
        self.local_batch = self.batch_size // self.world
        self._order: Tensor | None = None

    def _epoch_order(self) -> Tensor:
        if self._order is None:
            sampler = DistributedSampler(
                range(self.n),
                num_replicas=self.world,
                rank=self.rank,
                shuffle=True,
                seed=self.seed,
                drop_last=True,
            )
            sampler.set_epoch(self.epoch)
            self._order = torch.tensor(list(iter(sampler)), dtype=torch.long)
        return self._order

    @property
    def batches_per_epoch(self) -> int:
        """Global batches in one epoch (the last partial one is dropped)."""
        return max(1, (self.n // self.world) // self.local_batch)

    def next(self) -> Tensor:
        """Indices of this rank's part of the next global batch."""
        if self.position >= self.batches_per_epoch:
            self.epoch, self.position, self._order = self.epoch + 1, 0, None
        order = self._epoch_order()
        start = self.position * self.local_batch
        self.position += 1
        idx = order[start : start + self.local_batch]
        if idx.numel() < self.local_batch:  # fewer items than one batch: sample with repeats
            idx = order[torch.arange(self.local_batch) % order.numel()]
        return idx

    def state(self) -> dict[str, int]:
        """The position as two integers (JSON-ready), for a checkpoint."""
        return {"epoch": self.epoch, "position": self.position}

    def load_state(self, state: dict[str, int]) -> None:
        """Continue from a position saved by ``state``."""
        self.epoch, self.position, self._order = int(state["epoch"]), int(state["position"]), None
