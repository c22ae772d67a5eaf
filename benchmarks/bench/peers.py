"""The peers: normflows' residual flow and Glow and zuko's coupling flows, built as their own
examples build them, and the one loop that trains any of them for a budget of CPU seconds.

Each peer library is imported where it is used, so a script that compares against one of them
runs without the other installed (``pip install -e ".[bench]"`` installs both).
"""

from __future__ import annotations

import os
import signal
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .density import LogDensity, chunked

# normflows' Glow calls torch.lu, deprecated in torch 2.x: its 7-line warning on every run
# says nothing about this benchmark's results.
warnings.filterwarnings("ignore", message=r"torch\.lu is deprecated", category=UserWarning)


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# --------------------------------------------------------------------------------- normflows


def normflows_resflow(
    dim: int = 2, blocks: int = 16, width: int = 128, lipschitz_const: float = 0.9, **residual: Any
) -> nn.Module:
    """normflows' residual-flow toy example (``examples/residual.ipynb``): ``blocks`` x
    [``Residual(LipschitzMLP([dim, width, width, dim], init_zeros=True), reduce_memory=True,
    **residual)``, ``ActNorm(dim)``] over a fixed standard normal."""
    import normflows as nf

    flows: list[nn.Module] = []
    for _ in range(blocks):
        net = nf.nets.LipschitzMLP(
            [dim, width, width, dim], init_zeros=True, lipschitz_const=lipschitz_const
        )
        flows += [nf.flows.Residual(net, reduce_memory=True, **residual), nf.flows.ActNorm(dim)]
    q0 = nf.distributions.DiagGaussian(dim, trainable=False)
    return nf.NormalizingFlow(q0=q0, flows=flows)


def normflows_conv_resflow(
    shape: tuple[int, int, int],
    blocks: int,
    width: int,
    lipschitz_const: float = 0.9,
    **residual: Any,
) -> nn.Module:
    """normflows' convolutional residual flow on images of ``shape`` (C, H, W): ``blocks`` x
    [``Residual(LipschitzCNN([C, width, width, C], [3, 1, 3], init_zeros=True),
    reduce_memory=True, **residual)``, ``ActNorm((C, 1, 1))``] over a fixed standard normal
    (Residual Flows' ``3x3 -> 1x1 -> 3x3`` branch, a Swish before every convolution)."""
    import normflows as nf

    c = shape[0]
    flows: list[nn.Module] = []
    for _ in range(blocks):
        net = nf.nets.LipschitzCNN(
            [c, width, width, c], [3, 1, 3], init_zeros=True, lipschitz_const=lipschitz_const
        )
        flows += [
            nf.flows.Residual(net, reduce_memory=True, **residual),
            nf.flows.ActNorm((c, 1, 1)),
        ]
    q0 = nf.distributions.DiagGaussian(shape, trainable=False)
    return nf.NormalizingFlow(q0=q0, flows=flows)


def normflows_update_lipschitz(model: nn.Module, n_iterations: int) -> None:
    """Refresh the stored spectral-norm estimates (normflows divides by them; only this call
    updates them): ``nf.utils.update_lipschitz``."""
    import normflows as nf

    nf.utils.update_lipschitz(model, n_iterations)


def normflows_max_spectral_norm(model: nn.Module) -> float:
    """The constraint as it holds: the largest exact spectral norm of an effective weight."""
    import normflows as nf

    return max(
        float(torch.linalg.matrix_norm(m.compute_weight(update=False).detach(), ord=2))
        for m in model.modules()
        if isinstance(m, nf.nets.lipschitz.InducedNormLinear)
    )


def normflows_log_prob(model: nn.Module, chunk: int = 1024) -> LogDensity:
    """``z -> log q(z)`` in chunks. normflows computes the Jacobian with autograd inside its
    blocks (the brute-force 2x2 one in eval mode), so gradients are on within each chunk and its
    graph is dropped after it."""

    def log_q(part: Tensor) -> Tensor:
        with torch.enable_grad():
            return model.log_prob(part)

    return chunked(log_q, chunk)


# -------------------------------------------------------------------------------------- zuko


def zuko_flow(kind: str, features: int, **kwargs: Any) -> nn.Module:
    """``zuko.flows.<kind>(features, **kwargs)`` (``RealNVP``, ``NSF``, ...); calling it gives
    the distribution: ``flow().log_prob(x)``."""
    import zuko

    return getattr(zuko.flows, kind)(features, **kwargs)


def normflows_glow(
    shape: tuple[int, int, int], levels: int = 2, blocks: int = 8, hidden: int = 64
) -> nn.Module:
    """normflows' Glow (Kingma & Dhariwal 2018, arXiv 1807.03039) as its own Glow example
    builds it: ``levels`` scales of ``blocks`` x ``GlowBlock`` (ActNorm, invertible 1x1
    convolution with LU weights, affine coupling with a sigmoid scale and a 3-1-3 convolutional
    network of ``hidden`` channels), a squeeze per level, half the channels factored out after
    each but the last into a learned diagonal Gaussian (``GlowBase``), ``MultiscaleFlow``.

    ``shape`` is ``(C, H, W)`` with ``H`` and ``W`` divisible by ``2**levels``. Its
    ``log_prob(x)`` takes ``(B, C, H, W)`` and returns ``(B,)`` nats.
    """
    import normflows as nf

    c, h, w = shape
    if h % 2**levels or w % 2**levels:
        raise ValueError(f"Glow with {levels} levels needs H, W divisible by {2**levels}: {shape}")
    q0: list[nn.Module] = []
    flows: list[list[nn.Module]] = []
    merges: list[nn.Module] = []
    for i in range(levels):  # i = 0 is the coarsest level, as in normflows' example
        channels = c * 2 ** (levels + 1 - i)
        flows.append(
            [nf.flows.GlowBlock(channels, hidden, split_mode="channel") for _ in range(blocks)]
            + [nf.flows.Squeeze()]
        )
        if i == 0:
            latent = (channels, h // 2**levels, w // 2**levels)
        else:
            merges.append(nf.flows.Merge())
            latent = (c * 2 ** (levels - i), h // 2 ** (levels - i), w // 2 ** (levels - i))
        q0.append(nf.distributions.GlowBase(latent))
    return nf.MultiscaleFlow(q0, flows, merges, class_cond=False)


# ------------------------------------------------------------------------------ the one loop


@dataclass
class Resumable:
    """Where :func:`train_for_budget` keeps its state (``path``, written atomically), how often
    (``every`` CPU seconds), and the caller's own state to keep with it (``state()`` returns a
    dict of plain values, ``restore(dict)`` puts it back; for example a batch position)."""

    path: Path
    every: float = 120.0
    state: Callable[[], dict[str, Any]] | None = None
    restore: Callable[[dict[str, Any]], None] | None = None

    def save(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        step_times: list[float],
        curve: list[tuple[int, float, float]],
        skipped: int,
        cpu_seconds: float,
        wall_seconds: float,
    ) -> None:
        payload = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": torch.get_rng_state(),
            "caller": self.state() if self.state is not None else {},
            "step_times": step_times,
            "curve": [list(c) for c in curve],
            "skipped": skipped,
            "cpu_seconds": cpu_seconds,
            "wall_seconds": wall_seconds,
        }
        tmp = self.path.with_name(self.path.name + ".tmp")
        torch.save(payload, tmp)
        os.replace(tmp, self.path)

    def load(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
        """Put a saved state back into ``model``, ``optimizer``, the RNG and the caller; the
        saved counters, or None when there is nothing to resume."""
        if not self.path.exists():
            return None
        payload = torch.load(self.path, weights_only=True)
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        torch.set_rng_state(payload["rng"])
        if self.restore is not None:
            self.restore(payload["caller"])
        payload["curve"] = [tuple(c) for c in payload["curve"]]
        return payload


@dataclass
class PeerTraining:
    """What :func:`train_for_budget` did: steps, CPU and wall seconds (from the start, the
    initialisation included), per-step CPU seconds, skipped non-finite steps and the loss
    curve as ``(steps done, loss, CPU seconds)``."""

    steps: int
    cpu_seconds: float
    wall_seconds: float
    step_seconds: list[float] = field(repr=False)
    skipped: int
    curve: list[tuple[int, float, float]] = field(repr=False)

    @property
    def cpu_share(self) -> float:
        return self.cpu_seconds / self.wall_seconds


def train_for_budget(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[Tensor], Tensor],
    next_batch: Callable[[], Tensor],
    budget: float,
    *,
    max_steps: int | None = None,
    init: Callable[[], Any] | None = None,
    lr_at: Callable[[int, float], float] | None = None,
    clip: float | None = None,
    after_step: Callable[[], Any] | None = None,
    curve_every: int = 50,
    checkpoint: Resumable | None = None,
) -> PeerTraining:
    """Optimise ``loss_fn(next_batch())`` until ``budget`` CPU seconds of this process are spent
    (checked after each step, so at least one step runs) or ``max_steps`` steps are done.

    ``init`` runs first (on the clock: a data-dependent initialisation); ``lr_at(step,
    fraction of the budget spent)`` sets the learning rate of every step; ``clip`` caps the
    gradient norm; ``after_step`` runs after every step, on the step's clock. A non-finite loss
    skips the update.

    ``checkpoint``: save the whole state (model, optimiser, torch RNG, the caller's batch
    position, clocks, curve) every ``checkpoint.every`` CPU seconds and at the end, and continue
    from the file if it exists: a run killed between two saves redoes at most that much, and the
    budget counts the CPU seconds of every earlier process.
    """
    model.train()
    t_start, c_start = time.perf_counter(), time.process_time()
    step_times: list[float] = []
    curve: list[tuple[int, float, float]] = []
    skipped, elapsed = 0, 0.0
    saved = checkpoint.load(model, optimizer) if checkpoint is not None else None
    if saved is not None:
        step_times, curve, skipped = saved["step_times"], saved["curve"], saved["skipped"]
        elapsed = saved["cpu_seconds"]
        t_start -= saved["wall_seconds"]
        c_start -= elapsed
    elif init is not None:
        init()
    last_save = elapsed
    signals: list[int] = []
    previous: dict[int, Any] = {}
    if checkpoint is not None and threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda signum, _frame: signals.append(signum))
    try:
        while elapsed < budget and (max_steps is None or len(step_times) < max_steps):
            if lr_at is not None:
                lr = lr_at(len(step_times), min(elapsed / budget, 1.0))
                for group in optimizer.param_groups:
                    group["lr"] = lr
            t0 = time.process_time()
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(next_batch())
            if torch.isfinite(loss):
                loss.backward()
                if clip is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
                optimizer.step()
            else:
                skipped += 1
            if after_step is not None:
                after_step()
            step_times.append(time.process_time() - t0)
            elapsed = time.process_time() - c_start
            if len(step_times) % curve_every == 0:
                curve.append((len(step_times), float(loss.detach()), elapsed))
            if checkpoint is not None and (elapsed - last_save >= checkpoint.every or signals):
                last_save = elapsed
                wall = time.perf_counter() - t_start
                checkpoint.save(model, optimizer, step_times, curve, skipped, elapsed, wall)
                if signals:  # SIGTERM/SIGINT: saved after the step it interrupted; resume later
                    raise SystemExit(128 + signals[0])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    wall = time.perf_counter() - t_start
    if checkpoint is not None:
        checkpoint.save(model, optimizer, step_times, curve, skipped, elapsed, wall)
    return PeerTraining(len(step_times), elapsed, wall, step_times, skipped, curve)
