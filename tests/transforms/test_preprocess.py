"""Dequantisation, logit transform and bits/dim: ranges, inverses, log-dets and known values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from iresnet.errors import DataError
from iresnet.flows import Flow
from iresnet.transforms import Dequantize
from iresnet.transforms.preprocess import (
    bits_per_dim,
    dequantize,
    dequantize_mid,
    logit_inverse,
    logit_transform,
)
from tests.helpers import explicit_jacobian


def test_dequantize_stays_in_cell() -> None:
    k = 17
    x = torch.arange(k, dtype=torch.uint8).repeat(50).reshape(50, 1, k)
    gen = torch.Generator().manual_seed(0)
    u = dequantize(x, k, generator=gen)
    assert u.dtype == torch.get_default_dtype() and u.shape == x.shape
    assert bool((u >= 0).all()) and bool((u < 1).all())
    assert torch.equal(torch.floor(u * k).to(torch.uint8), x)
    again = dequantize(x, k, generator=torch.Generator().manual_seed(0))
    assert torch.equal(u, again)
    mid = dequantize_mid(x, k, dtype=torch.float64)
    assert torch.allclose(mid, (x.double() + 0.5) / k)


def test_dequantize_float32_top_level_below_one() -> None:
    # (255 + v)/256 rounds to 1.0 in float32 for v near 1; the result must stay below 1.
    x = torch.full((200_000,), 255, dtype=torch.uint8)
    u = dequantize(x, 256, generator=torch.Generator().manual_seed(1), dtype=torch.float32)
    assert float(u.max()) < 1.0


def test_dequantize_rejects_bad_levels() -> None:
    with pytest.raises(DataError, match="0..3"):
        dequantize(torch.tensor([0, 4]), 4)
    with pytest.raises(DataError, match="integer"):
        dequantize_mid(torch.tensor([0.5]), 4)
    # a sampled image in [0, 1] is told how to become levels
    with pytest.raises(DataError, match=r"levels torch.floor\(x \* 4\).clamp\(max=3\)"):
        dequantize(torch.tensor([0.25, 0.6]), 4)
    with pytest.raises(DataError, match="n_levels"):
        dequantize(torch.tensor([0]), 1)


@pytest.mark.parametrize("alpha", [0.0, 0.05, 1e-6])
def test_logit_round_trip(alpha: float) -> None:
    u = torch.rand(4, 2, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    u = u.clamp(1e-6, 1 - 1e-6)
    z, logdet = logit_transform(u, alpha)
    assert z.shape == u.shape and logdet.shape == (4,)
    assert torch.allclose(logit_inverse(z, alpha), u, atol=1e-12)


@pytest.mark.parametrize("alpha", [0.0, 0.05])
def test_logit_logdet_matches_autograd_jacobian(alpha: float) -> None:
    u = torch.rand(3, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    _, logdet = logit_transform(u, alpha)
    sign, logabs = torch.linalg.slogdet(
        explicit_jacobian(lambda v: logit_transform(v, alpha)[0], u)
    )
    assert torch.equal(sign, torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(logdet, logabs, rtol=0, atol=1e-10)


@pytest.mark.parametrize("alpha", [0.0, 0.05])
def test_logit_change_of_variables_of_uniform(alpha: float) -> None:
    # u ~ U[0,1)^D maps to z whose density is a logistic density rescaled by 1/(1-2 alpha) on the
    # image of [0,1); log p_z(z) + logdet must then give back log p_u(u) = 0.
    u = torch.rand(5, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    z, logdet = logit_transform(u, alpha)
    log_logistic = -F.softplus(z) - F.softplus(-z)
    log_pz = (log_logistic - math.log1p(-2 * alpha)).sum(dim=1)
    assert torch.allclose(log_pz + logdet, torch.zeros(5, dtype=torch.float64), atol=1e-10)


def test_logit_rejects_bad_alpha() -> None:
    with pytest.raises(DataError, match="alpha"):
        logit_transform(torch.rand(2, 2), 0.5)
    with pytest.raises(DataError, match="alpha"):
        logit_inverse(torch.rand(2, 2), -0.1)


@pytest.mark.parametrize("k", [2, 17, 256])
def test_bits_per_dim_uniform_density(k: int) -> None:
    # The uniform density on [0, K)^D has log p = -D log K: exactly log2 K bits per dimension.
    d = 784
    bpd = bits_per_dim(torch.full((3,), -d * math.log(k), dtype=torch.float64), n_dims=d)
    assert torch.allclose(bpd, torch.full((3,), math.log2(k), dtype=torch.float64))


def _uniform_u_model() -> Flow:
    """``Dequantize`` over the uniform density on ``[0, 1)^D`` (log p(u) = 0 inside)."""

    class UnitCube(torch.nn.Module):
        def forward(self):
            lo = torch.zeros(6, dtype=torch.float64)
            return torch.distributions.Independent(torch.distributions.Uniform(lo, lo + 1), 1)

    return Flow([Dequantize(5)], event_shape=(6,), base=UnitCube()).double()


def test_bits_per_dim_equals_entropy_of_discrete_uniform() -> None:
    # x uniform on K levels has entropy D log2 K bits; dequantised, u is exactly uniform on
    # [0,1)^D, whose log-density is 0, so the bound is tight: bpd = log2 K = entropy per dim.
    k, d, n = 5, 6, 1000
    x = torch.randint(0, k, (n, d), generator=torch.Generator().manual_seed(5))
    log_p = _uniform_u_model().log_prob(x)  # includes Dequantize's -D log K
    entropy_bits = -sum((1 / k) * math.log2(1 / k) for _ in range(k))
    assert torch.allclose(bits_per_dim(log_p, d), torch.full((n,), entropy_bits).double())


def test_bits_per_dim_piecewise_constant_model_is_exact() -> None:
    # A density constant on each cell, p(u) = K^D P(x), makes Jensen tight: bpd = -log2 P(x) / D.
    k, d = 4, 3
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    gen = torch.Generator().manual_seed(6)
    x = torch.multinomial(probs, 500 * d, replacement=True, generator=gen).reshape(500, d)
    u = dequantize(x, k, generator=gen, dtype=torch.float64)
    cell = torch.floor(u * k).long()
    log_p_u = (torch.log(probs[cell]) + math.log(k)).sum(dim=1)
    expected = -torch.log2(probs[x]).sum(dim=1) / d
    assert torch.allclose(bits_per_dim(log_p_u - d * math.log(k), d), expected)
    with pytest.raises(DataError):
        bits_per_dim(log_p_u, 0)


def test_dequantize_transform_round_trip_log_det_and_dtype() -> None:
    """``Dequantize``: fresh noise inside the cells at every call, log-det ``-D log K``, the
    floor as exact left inverse, midpoints without noise, and the module's dtype."""
    t = Dequantize(17).double()
    x = torch.randint(0, 17, (50, 1, 3, 3), dtype=torch.uint8)
    u1, logdet = t(x)
    u2, _ = t(x)
    assert u1.dtype == torch.float64 and not torch.equal(u1, u2)
    assert torch.equal(t.inverse(u1), x.double()) and torch.equal(t.inverse(u2), x.double())
    assert torch.allclose(logdet, torch.full((50,), -9 * math.log(17), dtype=torch.float64))
    torch.testing.assert_close(t.midpoints(x), (x.double() + 0.5) / 17)
    with pytest.raises(DataError, match="0..16"):
        t(torch.full((1, 2), 17))
