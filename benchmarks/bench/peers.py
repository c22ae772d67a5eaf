"""The peers: normflows' residual flow and Glow and zuko's coupling flows, built as their own
examples build them, and the one loop that trains any of them for a budget of CPU seconds.

Each peer library is imported where it is used, so a script that compares against one of them
runs without the other installed (``pip install -e ".[bench]"`` installs both).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .density import LogDensity, chunked


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
) -> PeerTraining:
    """Optimise ``loss_fn(next_batch())`` until ``budget`` CPU seconds of this process are spent
    (checked after each step, so at least one step runs) or ``max_steps`` steps are done.

    ``init`` runs first (on the clock: a data-dependent initialisation); ``lr_at(step,
    fraction of the budget spent)`` sets the learning rate of every step; ``clip`` caps the
    gradient norm; ``after_step`` runs after every step, on the step's clock. A non-finite loss
    skips the update.
    """
    model.train()
    t_start, c_start = time.perf_counter(), time.process_time()
    if init is not None:
        init()
    step_times: list[float] = []
    curve: list[tuple[int, float, float]] = []
    skipped, elapsed = 0, 0.0
    while True:
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
        if elapsed >= budget or (max_steps is not None and len(step_times) >= max_steps):
            break
    wall = time.perf_counter() - t_start
    return PeerTraining(len(step_times), elapsed, wall, step_times, skipped, curve)
