"""Shared fixtures: tiny models so the suite stays fast."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import iresnet


def mlp_g(dim: int, hidden: int = 16, coeff: float = 0.9, act: type[nn.Module] = iresnet.LipSwish) -> nn.Module:
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


def mlp_flow(dim: int = 2, n_blocks: int = 2, coeff: float = 0.9, hidden: int = 16, estimator=None,
             dtype: torch.dtype = torch.float64, atol: float = 1e-12) -> iresnet.Flow:
    blocks = []
    for _ in range(n_blocks):
        g = mlp_g(dim, hidden, coeff)
        scale_weights(g, 3.0)
        blocks.append(
            iresnet.InvertibleResidualBlock(
                g,
                logdet=estimator() if estimator else iresnet.ExactLogDet(),
                inverse=iresnet.FixedPointInverse(atol=atol, max_iter=500, on_failure="raise"),
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


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny convolutions run fastest on one thread (and far slower on a busy machine's two);
    modules of conv models opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

