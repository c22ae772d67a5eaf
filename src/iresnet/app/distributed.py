"""Process-group set-up for ``torchrun`` (DDP): gloo on CPU, nccl on CUDA.

A plain ``python -m iresnet train`` is a world of one; under ``torchrun`` the environment
variables it sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) make every process join one group.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import ConfigError
from .words import count

__all__ = [
    "DistContext",
    "check_precision",
    "parse_device",
    "resolve_device",
    "setup_distributed",
    "teardown_distributed",
]


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: ``rank`` of ``world``, its ``device``; rank 0 writes files."""

    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.world > 1

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on any rank."""
        if not self.distributed:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)


def parse_device(name: str) -> torch.device:
    """The device called ``name`` (``cpu``, ``cuda``, ``cuda:N``, ``mps``), whether or not this
    machine has it (a config's check).

    Raises:
        ConfigError: not a device name, or a kind of device iresnet does not run on.
    """
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(
            f"unknown device '{name}'; use cpu, cuda, cuda:N or mps (--device / train.device)"
        ) from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device '{name}' is not supported; use cpu, cuda, cuda:N or mps")
    return dev


def resolve_device(name: str) -> torch.device:
    """The device called ``name`` (``cpu``, ``cuda``, ``cuda:N``, ``mps``), if this machine
    has it.

    Raises:
        ConfigError: an unknown device name, or a device this machine does not have.
    """
    dev = parse_device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device '{name}': no CUDA device is visible here; use --device cpu")
        visible = torch.cuda.device_count()
        if dev.index is not None and dev.index >= visible:
            which = "cuda:0" if visible == 1 else f"one of cuda:0 to cuda:{visible - 1}"
            raise ConfigError(
                f"device '{name}': this machine has {count(visible, 'CUDA device')}; use {which}"
            )
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device '{name}': MPS is not available here; use --device cpu")
    return dev


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse a ``train.precision`` the device cannot run.

    Raises:
        ConfigError: ``fp16`` on a CPU.
    """
    if device.type == "cpu" and precision == "fp16":
        raise ConfigError("train.precision=fp16 needs a CUDA device; use bf16 on CPU")


def setup_distributed(device: str) -> DistContext:
    """Join the process group if launched by ``torchrun``; pick this process's device.

    Raises:
        ConfigError: see [`resolve_device`][iresnet.app.distributed.resolve_device].
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local if world > 1 else dev.index or 0)
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(
            "nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world
        )
    return DistContext(rank, world, dev)


def teardown_distributed(wait: bool = True) -> None:
    """Leave the process group if this process joined one.

    With ``wait`` the ranks first meet at a barrier: a rank that tears gloo down while its peer
    is still evaluating or writing (rank 0's work after the last step) can abort in gloo's C++
    threads (``terminate called without an active exception``, SIGABRT), seen on loaded
    machines. After an error pass ``wait=False``: the peers may never arrive.
    """
    if dist.is_initialized():
        try:
            if wait:
                dist.barrier()
        finally:
            dist.destroy_process_group()
