"""Helpers shared by the tests: tiny models, weight scaling, explicit Jacobians."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

import iresnet


def explicit_jacobian(f: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """Per-sample Jacobians ``(B, D_out, D_in)`` of a samplewise ``f`` by autograd, one sample
    at a time (so no batching rule of ``f`` is relied on)."""
    rows = []
    for xi in x:
        jac = torch.autograd.functional.jacobian(lambda v: f(v[None])[0], xi)
        rows.append(jac.reshape(f(xi[None])[0].numel(), xi.numel()))
    return torch.stack(rows)


def operator_matrix(f: Callable[[Tensor], Tensor], shape: tuple[int, ...]) -> Tensor:
    """The matrix ``(out, in)`` of a linear map ``f`` on inputs of ``shape`` (float64)."""
    x = torch.zeros(1, *shape, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: f(v).flatten(), x)
    return jac.reshape(-1, x.numel())


def slogdet_of(f: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``log|det J_f(x)|`` per sample from :func:`explicit_jacobian` (square Jacobians)."""
    return torch.linalg.slogdet(explicit_jacobian(f, x)).logabsdet


def mlp_g(
    dim: int, hidden: int = 16, coeff: float = 0.9, act: type[nn.Module] = iresnet.LipSwish
) -> nn.Module:
    """A residual branch ``SpectralLinear -> act -> SpectralLinear -> act -> SpectralLinear``."""
    return nn.Sequential(
        iresnet.SpectralLinear(dim, hidden, coeff=coeff),
        act(),
        iresnet.SpectralLinear(hidden, hidden, coeff=coeff),
        act(),
        iresnet.SpectralLinear(hidden, dim, coeff=coeff),
    )


def scale_weights(module: nn.Module, factor: float) -> None:
    """Push raw weights far above norm 1, so normalisation has work to do."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                m.weight.mul_(factor)


def mlp_flow(
    dim: int = 2,
    n_blocks: int = 2,
    coeff: float = 0.9,
    hidden: int = 16,
    estimator=None,
    dtype: torch.dtype = torch.float64,
    atol: float = 1e-12,
) -> iresnet.Flow:
    blocks = []
    for _ in range(n_blocks):
        g = mlp_g(dim, hidden, coeff)
        scale_weights(g, 3.0)
        blocks.append(
            iresnet.InvertibleResidualBlock(
                g,
                logdet=estimator() if estimator else iresnet.ExactLogDet(),
                inverse=iresnet.FixedPointInverse(
                    atol=atol, rtol=0.0, max_iter=500, on_failure="raise"
                ),
            )
        )
    return iresnet.Flow(blocks, event_shape=(dim,)).to(dtype)


def make_strong_g(dim: int, low: float = 0.2, high: float = 0.6) -> nn.Module:
    """``tanh(W x)`` with ``W = Q diag(s) Q^T``, ``s`` in ``[low, high]``: a Jacobian with large
    traces, so that truncating the series is visibly biased (the unbiasedness tests have power),
    while ``high <= 0.6`` keeps the geometric(0.5) roulette's variance finite (needs L^2 < 1/2)."""
    gen = torch.Generator().manual_seed(dim)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=torch.float64))
    s = torch.linspace(low, high, dim, dtype=torch.float64)
    layer = iresnet.SpectralLinear(dim, dim, bias=False, coeff=0.99).double()
    with torch.no_grad():
        layer.weight.copy_(q @ torch.diag(s) @ q.T)
    return nn.Sequential(layer, nn.Tanh()).eval()


#: A run small enough for the command-line tests: one block of width 8, a few hundred points,
#: evaluations and checkpoints every 5 steps on one test batch.
TINY_RUN = [
    "model.n_blocks=1",
    "model.hidden=8",
    "data.n_train=256",
    "data.n_test=128",
    "train.batch_size=64",
    "train.eval_every=5",
    "train.checkpoint_every=5",
    "train.eval_batches=1",
]


def assert_figures_named(run_dir: str | Path) -> None:
    """The pictures in a finished run's folder are those ``figure_names`` lists for its task
    loaded without data (what a resume checks for when it redraws missing ones)."""
    from iresnet.app.figures import figure_names
    from iresnet.app.runs import load_run

    names = figure_names(load_run(run_dir, data=False).task)
    assert sorted(p.name for p in Path(run_dir).glob("*.png")) == sorted(names)


def graphs_and_breaks() -> tuple[int, int]:
    """dynamo's counts so far in this process: graphs compiled, graph breaks."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())
