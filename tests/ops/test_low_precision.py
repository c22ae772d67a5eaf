"""float16 / bfloat16: the linear algebra torch has no half-precision kernel for (``slogdet``
of the exact log-det, the solve of Anderson mixing) runs in float32 and returns the input's
dtype, as accurate as that dtype allows."""

from __future__ import annotations

import pytest
import torch

from iresnet.ops.fixed_point import FixedPointInverse
from iresnet.ops.logdet import exact_logdet

LOW = [torch.float16, torch.bfloat16]


def _branch() -> torch.nn.Module:
    torch.manual_seed(0)
    g = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    with torch.no_grad():
        for layer in (g[0], g[2]):  # Lip(g) <= 0.7 * 1 * 0.7 < 1
            layer.weight.mul_(0.7 / torch.linalg.matrix_norm(layer.weight, ord=2))
    return g


@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("cayley", [False, True])
def test_exact_logdet_in_half_precision_matches_float64(dtype, cayley):
    g, x = _branch(), torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
    _, ref = exact_logdet(g.double(), x.double(), cayley=cayley)
    gx, logdet = exact_logdet(g.to(dtype), x.to(dtype), cayley=cayley)
    assert gx.dtype == logdet.dtype == dtype and logdet.shape == (5,)
    # The Jacobian's entries carry the dtype's rounding (eps); log det moves by about
    # tr((I + J)^{-1} dJ) <= d * |dJ| / (1 - Lip): a few eps per dimension.
    eps = torch.finfo(dtype).eps
    assert torch.allclose(logdet.double(), ref, atol=3 * 8 * eps / (1 - 0.7), rtol=0)


@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_anderson_mixing_solves_in_half_precision(dtype):
    y = torch.linspace(-2, 2, 12).reshape(4, 3).to(dtype)
    x, diag = FixedPointInverse(atol=1e-2, anderson=3).solve(lambda v: 0.5 * torch.tanh(v), y)
    assert x.dtype == dtype and bool(diag.all_converged)
    residual = (x.double() + 0.5 * torch.tanh(x.double()) - y.double()).abs().max()
    assert residual <= 1e-2 + 4 * torch.finfo(dtype).eps * 2
