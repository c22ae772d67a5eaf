"""Flow: log_prob against the whole flow's explicit Jacobian, sampling, bad input, certificate."""

import math

import pytest
import torch
from torch import nn

import iresnet

from .conftest import mlp_flow


def test_log_prob_equals_base_plus_exact_logdet_of_whole_flow():
    flow = mlp_flow(dim=3, n_blocks=3).eval()
    flow.transforms.insert(0, iresnet.ActNorm(3).double())
    x = torch.randn(4, 3, dtype=torch.float64)
    z, logdet = flow(x)
    for i in range(4):
        jac = torch.autograd.functional.jacobian(lambda v: flow(v[None])[0][0], x[i])
        torch.testing.assert_close(logdet[i], torch.linalg.slogdet(jac).logabsdet, rtol=0, atol=1e-8)
    base = -0.5 * (z.pow(2).sum(1) + 3 * math.log(2 * math.pi))
    torch.testing.assert_close(flow.log_prob(x), base + logdet, rtol=0, atol=1e-12)


def test_sample_and_distribution_view():
    flow = mlp_flow(dim=2, n_blocks=2).eval()
    x = flow.sample(7)
    assert x.shape == (7, 2)
    dist = flow.distribution()
    assert isinstance(dist, torch.distributions.Distribution)
    s = dist.sample((3, 4))
    assert s.shape == (3, 4, 2)
    torch.testing.assert_close(dist.log_prob(s), flow.log_prob(s.reshape(-1, 2)).reshape(3, 4))


def test_sample_before_any_forward_infers_latent_shape():
    blocks = [iresnet.Squeeze(2)]
    flow = iresnet.Flow(blocks, event_shape=(1, 4, 4))
    assert flow.sample(2).shape == (2, 1, 4, 4)


@pytest.mark.parametrize("method", ["log_prob", "forward", "inverse"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_input_is_refused(method, bad):
    flow = mlp_flow(dim=2, n_blocks=1).eval()
    flow(torch.zeros(1, 2, dtype=torch.float64))
    x = torch.randn(5, 2, dtype=torch.float64)
    x[3, 1] = bad
    with pytest.raises(ValueError, match=rf"Flow\.{method}.*(NaN|Inf).*index 3"):
        getattr(flow, method)(x)


def test_wrong_shape_names_expected_shape():
    flow = mlp_flow(dim=2, n_blocks=1).eval()
    with pytest.raises(ValueError, match=r"expected a tensor of shape \(batch, 2\), got \(4, 3\)"):
        flow.log_prob(torch.randn(4, 3, dtype=torch.float64))


def test_certificate_reports_each_block():
    flow = mlp_flow(dim=2, n_blocks=3, coeff=0.7).eval()
    cert = iresnet.certify(flow)
    assert len(cert.blocks) == 3 and cert.invertible
    assert all(0 < b.bound <= 0.7**3 * (1 + 1e-6) for b in cert.blocks)
    assert "guaranteed invertible" in str(cert)
    # Exact: the product of each layer's SVD norm.
    g = flow.transforms[0].g
    prod = 1.0
    for m in g:
        if isinstance(m, iresnet.SpectralLinear):
            prod *= torch.linalg.matrix_norm(m.normalized_weight().detach(), ord=2).item()
    assert cert.blocks[0].bound == pytest.approx(prod, rel=1e-6)


def test_certificate_refuses_unconstrained_blocks():
    g = nn.Sequential(nn.Linear(2, 8), nn.ELU(), nn.Linear(8, 2))
    with torch.no_grad():
        g[0].weight.mul_(10)
    cert = iresnet.certify(iresnet.Flow([iresnet.InvertibleResidualBlock(g)]))
    assert not cert.invertible and cert.max_bound > 1
    assert "NOT guaranteed" in str(cert)
