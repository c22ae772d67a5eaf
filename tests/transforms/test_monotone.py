"""The monotone block ``f = 2 (Id + g)^{-1} - Id`` (Monotone Flows, arXiv:2210.08176): its
inverse, log-det, gradients (implicit, against finite differences and an unrolled solve), its
Lipschitz and monotonicity bounds, and its refusals. Float64 unless said otherwise."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import iresnet
from iresnet.errors import DataError
from tests.helpers import explicit_jacobian, make_strong_g, mlp_g, scale_weights


def _solver(atol: float = 1e-13) -> iresnet.FixedPointInverse:
    return iresnet.FixedPointInverse(atol=atol, rtol=0.0, max_iter=1000, on_failure="raise")


def _block(dim: int = 3, coeff: float = 0.9, logdet=None, seed: int = 0) -> iresnet.MonotoneBlock:
    torch.manual_seed(seed)
    g = mlp_g(dim, 12, coeff)
    scale_weights(g, 3.0)
    block = iresnet.MonotoneBlock(g, logdet=logdet or iresnet.ExactLogDet(), inverse=_solver())
    return block.double().eval()


def _unrolled(block: iresnet.MonotoneBlock, x: torch.Tensor, n: int = 400) -> torch.Tensor:
    """``y`` by autograd through ``n`` unrolled iterations ``z <- x - g(z)``: the reference the
    implicit gradient must reproduce."""
    z = x
    for _ in range(n):
        z = x - block.g(z)
    return z - block.g(z)


def test_forward_is_the_cayley_map_and_inverse_reconstructs():
    block = _block()
    x = 2 * torch.randn(8, 3, dtype=torch.float64)
    y, _ = block(x)
    with torch.no_grad():
        z = x - block.g(x)
        for _ in range(500):
            z = x - block.g(z)
    torch.testing.assert_close(y, 2 * z - x, rtol=0, atol=1e-11)
    rec, report = block.inverse_with_diagnostics(y)
    torch.testing.assert_close(rec, x, rtol=0, atol=1e-11)
    assert report.all_converged
    err = (rec - x).norm(dim=1)
    assert report.error_bound is not None and (err <= report.error_bound).all()


def test_float32_default_solver_reconstructs_within_its_tolerance():
    torch.manual_seed(1)
    block = iresnet.MonotoneBlock(iresnet.nn.mlp_branch(4, (32,), coeff=0.9)).eval()
    x = torch.randn(64, 4)
    with torch.no_grad():
        y, _ = block(x)
        rec = block.inverse(y)
    # each solve stops at a step of atol + rtol |x| = 1e-6 (scale ~3): a few 1e-6 after both
    assert (rec - x).abs().max() < 1e-4


def test_exact_logdet_equals_slogdet_of_the_explicit_jacobian():
    block = _block(4)
    x = torch.randn(5, 4, dtype=torch.float64)
    jac = explicit_jacobian(lambda v: block(v)[0], x)
    _, logdet = block(x)
    torch.testing.assert_close(logdet, torch.linalg.slogdet(jac).logabsdet, rtol=0, atol=1e-10)
    # and the Jacobian is (I - J_g(z)) (I + J_g(z))^{-1} at the solution z
    with torch.no_grad():
        z = (block(x)[0] + x) / 2
    jg = explicit_jacobian(block.g, z)
    eye = torch.eye(4, dtype=torch.float64)
    torch.testing.assert_close(jac, (eye - jg) @ torch.linalg.inv(eye + jg), rtol=0, atol=1e-10)


@pytest.mark.parametrize(
    "make",
    [
        lambda: iresnet.PowerSeriesLogDet(n_terms=41, n_probes=1, probe="rademacher"),
        lambda: iresnet.RussianRouletteLogDet(n_exact=1, p=0.5, memory_efficient=False),
    ],
    ids=["series", "roulette"],
)
def test_stochastic_logdets_are_unbiased_within_four_standard_errors(make):
    g = make_strong_g(4)  # large traces: truncating to one term is visibly biased
    block = iresnet.MonotoneBlock(g, logdet=iresnet.ExactLogDet(), inverse=_solver()).eval()
    x = 0.3 * torch.randn(1, 4, dtype=torch.float64)
    with torch.no_grad():
        exact = block(x)[1][0]
        block.logdet_estimator = make()
        batch = x.expand(100, 4).contiguous()
        means = torch.stack([block(batch)[1].mean() for _ in range(300)])
    se = means.std() / math.sqrt(means.numel())
    assert abs(means.mean() - exact) <= 4 * se, (means.mean().item(), exact.item(), se.item())
    z = block.inverse_solver(block.g, x)
    _, jac = iresnet.ops.jacobian(block.g, z)
    assert abs(-2 * jac.diagonal(dim1=1, dim2=2).sum() - exact) > 6 * se  # the test has power


def test_gradients_match_finite_differences_and_the_unrolled_solve():
    block = _block(3, seed=2)
    x = torch.randn(2, 3, dtype=torch.float64)
    w = torch.randn(2, 3, dtype=torch.float64)
    param = block.g[0].weight

    def loss(v: torch.Tensor) -> torch.Tensor:
        y, logdet = block(v)
        return (w * y).sum() + logdet.sum()

    v = x.clone().requires_grad_()
    gx, gp = torch.autograd.grad(loss(v), (v, param))
    # autograd through the unrolled iteration (y part), the same loss
    v2 = x.clone().requires_grad_()
    z = v2
    for _ in range(400):
        z = v2 - block.g(z)
    ld = iresnet.ExactLogDet().cayley(block.g, z)[1]
    ux, up = torch.autograd.grad((w * (z - block.g(z))).sum() + ld.sum(), (v2, param))
    torch.testing.assert_close(gx, ux, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(gp, up, rtol=1e-9, atol=1e-10)
    # central finite differences in x and in one weight entry
    eps = 1e-6
    with torch.no_grad():
        for i in range(2):
            for j in range(3):
                e = torch.zeros_like(x)
                e[i, j] = eps
                fd = (loss(x + e) - loss(x - e)) / (2 * eps)
                assert abs(fd - gx[i, j]) < 1e-7, (fd, gx[i, j])
        for idx in [(0, 0), (3, 1)]:
            old = param[idx].item()
            values = []
            for s in (1, -1):
                param[idx] = old + s * eps
                values.append(loss(x))
            param[idx] = old
            fd = (values[0] - values[1]) / (2 * eps)
            assert abs(fd - gp[idx]) < 1e-6, (fd, gp[idx])


def test_memory_efficient_roulette_trains():
    block = _block(3, logdet=iresnet.RussianRouletteLogDet())  # Neumann + memory-efficient
    block.train()
    x = torch.randn(16, 3, dtype=torch.float64, requires_grad=True)
    y, logdet = block(x)
    (0.5 * y.pow(2).sum(1) - logdet).mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for name, p in block.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_jacobian_singular_values_and_monotonicity_obey_the_bounds():
    """``(1 - L)/(1 + L) <= s(J_f) <= (1 + L)/(1 - L)`` and ``J_f + J_f^T >= 2 (1 - L)/(1 + L)``."""
    block = _block(4, coeff=0.95, seed=3)
    lip = block.lipschitz_bound()
    hi = block.forward_lipschitz()
    assert hi == pytest.approx((1 + lip) / (1 - lip)) and block.inverse_lipschitz() == hi
    x = 3 * torch.randn(32, 4, dtype=torch.float64)
    jac = explicit_jacobian(lambda v: block(v)[0], x)
    s = torch.linalg.svdvals(jac)
    assert (s <= hi).all() and (s >= 1 / hi).all()
    sym = torch.linalg.eigvalsh(jac + jac.transpose(1, 2))
    assert (sym >= 2 / hi - 1e-12).all()


def test_lipschitz_bound_is_attained_and_exceeds_the_residual_blocks():
    """A linear branch ``g = -a I`` gives ``f = (1 + a)/(1 - a) I``: the bound is tight, and above
    the ``1 + a`` a residual block with the same branch can reach."""
    a = 0.8
    layer = iresnet.SpectralLinear(2, 2, bias=False, coeff=1.0).double()
    with torch.no_grad():
        layer.weight.copy_(-a * torch.eye(2, dtype=torch.float64))
    block = iresnet.MonotoneBlock(nn.Sequential(layer), logdet=iresnet.ExactLogDet()).eval()
    block.inverse_solver = _solver()
    x = torch.randn(3, 2, dtype=torch.float64)
    y, logdet = block(x)
    torch.testing.assert_close(y, (1 + a) / (1 - a) * x, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(logdet, torch.full((3,), 2 * math.log(9.0), dtype=torch.float64))
    assert block.forward_lipschitz() == pytest.approx(9.0)
    assert block.forward_lipschitz() > 1 + a


def test_certify_and_swap_logdets_see_monotone_blocks():
    flow = iresnet.ResidualFlow(2, transforms=2, hidden_features=(8,), block="monotone")
    assert all(isinstance(flow.transform[i], iresnet.MonotoneBlock) for i in (1, 3))
    cert = iresnet.certify(flow.eval())
    assert len(cert.blocks) == 2 and cert.invertible
    with iresnet.swap_logdets(flow, "series"):
        assert isinstance(flow.transform[1].logdet_estimator, iresnet.PowerSeriesLogDet)
    assert isinstance(flow.transform[1].logdet_estimator, iresnet.ExactLogDet)


def test_default_block_is_unchanged():
    flow = iresnet.ResidualFlow(2, transforms=1, hidden_features=(4,))
    assert type(flow.transform[1]) is iresnet.InvertibleResidualBlock
    image = iresnet.MultiscaleResidualFlow(
        (1, 4, 4), scales=1, blocks=1, hidden_channels=(4,), logdet="exact"
    )
    kinds = {type(t) for t in image.transform if isinstance(t, iresnet.InvertibleResidualBlock)}
    assert kinds == {iresnet.InvertibleResidualBlock}


def test_bad_inputs_and_settings_raise_one_line_errors():
    block = _block()
    with pytest.raises(DataError, match="MonotoneBlock: got float32, the module is float64"):
        block(torch.zeros(2, 3))
    with pytest.raises(DataError, match="MonotoneBlock.inverse: got an empty batch"):
        block.inverse(torch.zeros(0, 3, dtype=torch.float64))
    with pytest.raises(DataError, match="not conditional"):
        block(torch.zeros(2, 3, dtype=torch.float64), c=torch.zeros(2, 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="block must be one of"):
        iresnet.ResidualFlow(2, block="cayley")
    with pytest.raises(ValueError, match="block must be one of"):
        iresnet.MultiscaleResidualFlow((1, 4, 4), block="cayley")
    cond = iresnet.MonotoneBlock(iresnet.nn.conditional_mlp_branch(3, 2, (8,)))
    with pytest.raises(DataError, match="pass the contexts"):
        cond(torch.zeros(2, 3))


def test_forward_that_does_not_converge_raises():
    block = _block()
    block.inverse_solver = iresnet.FixedPointInverse(
        atol=1e-14, rtol=0.0, max_iter=2, on_failure="raise"
    )
    with pytest.raises(iresnet.InverseNotConvergedError, match="MonotoneBlock"):
        block(torch.randn(2, 3, dtype=torch.float64))


def test_a_monotone_flow_refuses_a_coefficient_of_one():
    # Its bound (1 + c)/(1 - c) is infinite at c = 1: nothing would be certified.
    for make in (
        lambda: iresnet.ResidualFlow(2, block="monotone", coeff=1.0),
        lambda: iresnet.MultiscaleResidualFlow((1, 4, 4), block="monotone", coeff=1.0),
    ):
        with pytest.raises(ValueError, match="block='monotone' needs coeff < 1"):
            make()
    assert iresnet.ResidualFlow(2, block="residual", coeff=1.0) is not None
