"""Monotone Flows' Pila and CPila: smooth at 0, 1-Lipschitz as claimed (float64 Jacobian SVDs,
including the points where CPila is steepest), its constant the supremum rounded up."""

from __future__ import annotations

import math

import pytest
import torch

import iresnet
from iresnet.nn import CPILA_CONSTANT, CPila, lipschitz_bound_of, mlp_branch
from iresnet.nn.activations import PILA_K, PILA_SHIFT, pila, pila_slope
from tests.helpers import explicit_jacobian

REL = 1e-12


def test_pila_is_twice_differentiable_at_zero_and_its_slope_is_right():
    x = torch.linspace(-3, 3, 6001, dtype=torch.float64, requires_grad=True)
    (slope,) = torch.autograd.grad(pila(x).sum(), x, create_graph=True)
    torch.testing.assert_close(slope, pila_slope(x.detach()), rtol=0, atol=1e-12)
    (curv,) = torch.autograd.grad(slope.sum(), x)
    near = x.detach().abs() < 1e-3
    assert curv[near].abs().max() < 0.05  # curvature 0 from both sides: no kink in J_g
    assert pila_slope(x.detach()).max() <= 1.0
    assert float(pila_slope(torch.tensor(-4.0 / PILA_K, dtype=torch.float64))) == pytest.approx(
        -19 * math.exp(-4)
    )


def test_cpila_constant_is_the_supremum_rounded_up():
    x = torch.linspace(-20, 20, 4_000_001, dtype=torch.float64)
    u, v = pila_slope(x - PILA_SHIFT), pila_slope(-x - PILA_SHIFT)
    norms = torch.sqrt(u**2 + v**2)
    exact = math.sqrt(1 + 361 * math.exp(-8))
    assert float(norms.max()) <= CPILA_CONSTANT and exact <= CPILA_CONSTANT < exact + 1e-8
    assert float(norms.max()) > exact - 1e-9  # reached at x = +-0.6
    assert CPILA_CONSTANT <= 1.06  # the authors' divisor is looser
    # where both halves are negative the norm stays well below: the proof's third case
    both = (x - PILA_SHIFT < 0) & (-x - PILA_SHIFT < 0)
    assert float(norms[both].max()) < 1.0428


def test_cpila_is_1_lipschitz_from_rn_to_r2n():
    f = CPila().double()
    x = torch.randn(64, 5, dtype=torch.float64)
    x[:8, 0] = 0.6  # where the block norm peaks
    x[8:16, 1] = -0.6
    sigma = torch.linalg.matrix_norm(explicit_jacobian(f, x), ord=2)
    assert f(x).shape == (64, 10)
    assert bool((sigma <= 1 + REL).all()), float(sigma.max())
    assert float(sigma.max()) > 1 - 1e-8  # tight


def test_cpila_jvp_matches_autograd_on_images():
    f = CPila().double()
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    t = torch.randn(5, *x.shape, dtype=torch.float64)
    y, jt = f.jvp(x, t)
    torch.testing.assert_close(y, f(x))
    for i in range(5):
        expected = torch.func.jvp(f, (x,), (t[i],))[1]
        torch.testing.assert_close(jt[i], expected, rtol=1e-12, atol=1e-12)


def test_cpila_branches_are_within_their_certificate():
    torch.manual_seed(0)
    g = mlp_branch(3, (8, 8), activation="cpila", coeff=0.9).double().eval()
    bound = lipschitz_bound_of(g)
    assert bound <= 0.9**3 + 1e-9
    x = 2 * torch.randn(32, 3, dtype=torch.float64)
    sigma = torch.linalg.matrix_norm(explicit_jacobian(g, x), ord=2)
    assert bool((sigma <= bound * (1 + REL)).all())
    conv = iresnet.nn.conv_branch(2, (4,), activation="cpila", preact=True).double()
    assert conv(torch.randn(2, 2, 4, 4, dtype=torch.float64)).shape == (2, 2, 4, 4)
    dense = iresnet.nn.dense_branch(3, growth=4, depth=2, activation="cpila").double()
    assert dense(torch.randn(2, 3, dtype=torch.float64)).shape == (2, 3)
