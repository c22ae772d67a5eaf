"""i-DenseNet pieces: CLipSwish and the dense branch are Lipschitz as certified.

Every claim is checked against the largest singular value of the exact Jacobian (autograd,
float64 SVD) at random points, including the points where CLipSwish is steepest.
"""

from __future__ import annotations

import math

import pytest
import torch

import iresnet
from iresnet.nn import (
    CLIPSWISH_CONSTANT,
    CLipSwish,
    DenseLayer,
    conv_branch,
    dense_branch,
    layer_bounds,
    lipschitz_bound_of,
    mlp_branch,
)
from iresnet.nn.spectral import float64_forward
from iresnet.ops.jacobian import jacobian
from tests.helpers import explicit_jacobian, scale_weights

REL = 1e-12  # float64 rounding only


def _largest_singular_values(f, x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.matrix_norm(explicit_jacobian(f, x), ord=2)


def _swish_slope(t: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(t)
    return s + t * s * (1 - s)


def test_clipswish_constant_is_the_supremum_rounded_up():
    """``C`` bounds ``sqrt(h(t)^2 + h(-t)^2)`` everywhere and is within 1e-8 of its maximum, so
    it is as tight as the paper's ``1.1 * 1.004`` (and slightly tighter)."""
    t = torch.linspace(-40, 40, 2_000_001, dtype=torch.float64)
    norms = torch.sqrt(_swish_slope(t) ** 2 + _swish_slope(-t) ** 2)
    assert float(norms.max()) <= CLIPSWISH_CONSTANT
    assert CLIPSWISH_CONSTANT - float(norms.max()) < 1e-8
    assert CLIPSWISH_CONSTANT <= 1.1 * 1.004


@pytest.mark.parametrize("beta", [0.1, 1.0, 7.0])
def test_clipswish_is_1_lipschitz_from_rn_to_r2n(beta):
    f = CLipSwish(beta).double()
    x = torch.randn(64, 5, dtype=torch.float64) * 4 / beta
    x[:8, 0] = 2.39935728 / beta  # where the slope's norm peaks
    x[8:16, 1] = -2.39935728 / beta
    sigma = _largest_singular_values(f, x)
    assert f(x).shape == (64, 10)
    assert bool((sigma <= 1 + REL).all()), float(sigma.max())
    assert float(sigma.max()) > 1 - 1e-6  # tight: the peak is reached
    # injective: the input is C times the difference of the two halves
    y = f(x)
    torch.testing.assert_close(CLIPSWISH_CONSTANT * (y[:, :5] - y[:, 5:]), x, rtol=0, atol=1e-12)


def test_clipswish_jvp_matches_autograd_on_images():
    f = CLipSwish(2.0).double()
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    t = torch.randn(5, *x.shape, dtype=torch.float64)
    y, jt = f.jvp(x, t)
    torch.testing.assert_close(y, f(x))
    for i in range(5):
        expected = torch.func.jvp(f, (x,), (t[i],))[1]
        torch.testing.assert_close(jt[i], expected, rtol=1e-12, atol=1e-12)


def test_dense_layer_bound_from_its_etas_and_jacobians():
    torch.manual_seed(1)
    h = torch.nn.Sequential(iresnet.SpectralLinear(4, 3, coeff=0.9), CLipSwish()).double()
    layer = DenseLayer(h, dense_coeff=0.95).double()
    with torch.no_grad():
        layer.raw_eta.copy_(torch.tensor([0.3, -1.2]))
    layer.eval()
    torch.testing.assert_close(layer.etas().norm(), torch.tensor(0.95, dtype=torch.float64))
    bound = layer_bounds(layer)[0]
    assert bound.method == "dense[svd]"
    assert bound.bound <= 0.95 + REL
    x = torch.randn(32, 4, dtype=torch.float64) * 3
    sigma = _largest_singular_values(layer, x)
    assert bool((sigma <= bound.bound * (1 + REL)).all())
    with pytest.raises(ValueError, match="dense_coeff"):
        DenseLayer(h, dense_coeff=1.5)


@pytest.mark.parametrize("activation", ["clipswish", "lipswish", "elu"])
def test_dense_mlp_branch_is_within_its_certificate(activation):
    torch.manual_seed(2)
    g = dense_branch(3, growth=6, depth=3, activation=activation, coeff=0.9, dense_coeff=0.9)
    g = g.double()
    scale_weights(g, 3.0)  # the normalisation must do the work
    g.eval()
    bound = lipschitz_bound_of(g)
    assert bound <= 0.9 * 0.9**3 + REL
    x = torch.randn(32, 3, dtype=torch.float64) * 2
    sigma = _largest_singular_values(g, x)
    assert bool((sigma <= bound * (1 + REL)).all()), (float(sigma.max()), bound)
    # the forward-mode Jacobian (used by the exact log-det) agrees with autograd
    torch.testing.assert_close(jacobian(g, x)[1], explicit_jacobian(g, x), rtol=0, atol=1e-12)
    torch.testing.assert_close(float64_forward(g, x.float()), g(x.float().double()))


def test_dense_conv_branch_is_within_its_certificate():
    torch.manual_seed(3)
    g = dense_branch(2, growth=4, depth=2, conv=True, coeff=0.95, dense_coeff=0.98).double()
    scale_weights(g, 3.0)
    x = torch.randn(6, 2, 4, 4, dtype=torch.float64)
    g.train()
    g(x)
    g.eval()
    layers = layer_bounds(g)
    assert [b.method.startswith("dense[") for b in layers] == [True, True, False]
    bound = math.prod(b.bound for b in layers)
    assert bound <= 0.95 * 0.98**2 + REL
    sigma = _largest_singular_values(g, x)
    assert bool((sigma <= bound * (1 + REL)).all())
    assert g(x).shape == x.shape


def test_plain_branches_with_clipswish_take_twice_the_width():
    g = mlp_branch(2, (4, 5), activation="clipswish", coeff=0.9).double()
    assert [m.in_features for m in g if isinstance(m, iresnet.SpectralLinear)] == [2, 8, 10]
    c = conv_branch(2, (4,), activation="clipswish", preact=True, coeff=0.9).double()
    x = torch.randn(4, 2, 4, 4, dtype=torch.float64)
    c.train()
    assert c(x).shape == x.shape
    c.eval()
    for module, inputs in ((g.eval(), torch.randn(16, 2, dtype=torch.float64) * 3), (c, x)):
        sigma = _largest_singular_values(module, inputs)
        assert bool((sigma <= lipschitz_bound_of(module) * (1 + REL)).all())


def test_dense_branch_refuses_bad_sizes():
    with pytest.raises(ValueError, match="divisible by 2"):
        dense_branch(3, growth=5, activation="clipswish")
    with pytest.raises(ValueError, match="depth"):
        dense_branch(3, depth=0)
    with pytest.raises(ValueError, match="branch must be one of"):
        iresnet.ResidualFlow(2, branch="densenet")


def test_certificate_of_a_dense_flow_names_the_dense_layers():
    flow = iresnet.ResidualFlow(
        2, transforms=2, branch="dense", dense_growth=4, dense_depth=2, coeff=0.9
    )
    cert = iresnet.certify(flow.eval())
    assert cert.invertible and cert.max_bound <= 0.9 * 0.98**2 + REL
    assert cert.blocks[0].methods == "dense[svd] x2, svd"


@pytest.mark.parametrize("conv", [False, True])
def test_conditional_branches_take_clipswish_widths(conv):
    """CLipSwish doubles the width: conditional branches size their next layer for it too."""
    import iresnet

    torch.manual_seed(0)
    if conv:
        g = iresnet.nn.conditional_conv_branch(2, 1, (4,), activation="clipswish", preact=True)
        x = torch.randn(3, 2, 5, 5)
    else:
        g = iresnet.nn.conditional_mlp_branch(2, 1, (8, 8), activation="clipswish")
        x = torch.randn(3, 2)
    y = iresnet.nn.bind_context(g, torch.randn(3, 1))(x)
    assert y.shape == x.shape
    assert iresnet.nn.lipschitz_bound_of(g.eval()) < 1
