"""The Cayley log-det ``log det(I - J) - log det(I + J)`` of the monotone block, from every
estimator, against ``slogdet`` (float64, fixed seeds, standard errors)."""

import math

import pytest
import torch

import iresnet
from iresnet.ops import cayley_weights, exact_logdet, jacobian, series_logdet
from tests.helpers import make_strong_g, mlp_g, scale_weights


def make_g(dim: int, coeff: float = 0.9, hidden: int = 16) -> torch.nn.Module:
    g = mlp_g(dim, hidden, coeff).double()
    scale_weights(g, 3.0)
    return g.eval()


def cayley_slogdet(g, x):
    """``slogdet(I - J) - slogdet(I + J)`` from the autograd Jacobian."""
    _, jac = jacobian(g, x)
    eye = torch.eye(jac.shape[-1], dtype=jac.dtype)
    return torch.linalg.slogdet(eye - jac).logabsdet - torch.linalg.slogdet(eye + jac).logabsdet


def truncated_cayley(g, x, n):
    """``-2 sum_{k odd, k <= n} tr(J^k)/k``: the expectation of the n-term Cayley series."""
    _, jac = jacobian(g, x)
    total = torch.zeros(x.shape[0], dtype=x.dtype)
    power = torch.eye(jac.shape[-1], dtype=x.dtype).expand_as(jac)
    for k in range(1, n + 1):
        power = power @ jac
        if k % 2:
            total = total - 2 * power.diagonal(dim1=1, dim2=2).sum(-1) / k
    return total


def test_cayley_weights_keep_odd_terms_doubled_and_negated():
    assert cayley_weights([1.0, 1.0, 1.0]) == [-2.0, 0.0, -2.0]
    assert cayley_weights([[1.0, 2.0], [3.0]]) == [[-2.0, 0.0], [-6.0]]


def test_odd_power_series_equals_the_two_slogdets():
    """The derivation itself, on explicit matrices: the even powers cancel."""
    g = make_g(5)
    x = torch.randn(3, 5, dtype=torch.float64)
    torch.testing.assert_close(
        truncated_cayley(g, x, 101), cayley_slogdet(g, x), rtol=0, atol=1e-12
    )


def test_exact_cayley_matches_slogdet_and_gradcheck():
    g = make_g(4)
    x = torch.randn(6, 4, dtype=torch.float64)
    gx, ld = iresnet.ExactLogDet().cayley(g, x)
    torch.testing.assert_close(gx, g(x))
    torch.testing.assert_close(ld, cayley_slogdet(g, x), rtol=0, atol=1e-12)
    small = make_g(3, hidden=6)
    v = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda u: exact_logdet(small, u, cayley=True)[1], (v,))


@pytest.mark.parametrize("probe", ["gaussian", "rademacher"])
def test_power_series_cayley_is_hutchinson_of_the_odd_series(probe):
    g = make_g(4)
    x = torch.randn(1, 4, dtype=torch.float64).expand(4000, 4).contiguous()
    exact = cayley_slogdet(g, x[:1])[0]
    biases = []
    for n in (1, 3, 7):
        est = iresnet.PowerSeriesLogDet(n_terms=n, probe=probe).cayley(g, x)[1]
        target = truncated_cayley(g, x[:1], n)[0]
        se = est.std() / math.sqrt(est.numel())
        assert abs(est.mean() - target) <= 4 * se + 1e-12
        biases.append(abs(target - exact).item())
    assert biases == sorted(biases, reverse=True)


@pytest.mark.parametrize(
    "estimator",
    [
        iresnet.RussianRouletteLogDet(p=0.5, n_exact=1, memory_efficient=False),
        iresnet.StratifiedRouletteLogDet(p=0.5, n_exact=1, head_probes=2, memory_efficient=False),
    ],
    ids=["roulette", "stratified"],
)
def test_roulettes_are_unbiased_for_the_cayley_log_det(estimator):
    g = make_strong_g(4)
    x = 0.3 * torch.randn(1, 4, dtype=torch.float64)
    exact = cayley_slogdet(g, x)[0]
    batch = x.expand(200, 4).contiguous()
    means = torch.stack([estimator.cayley(g, batch)[1].mean() for _ in range(600)])
    se = means.std() / math.sqrt(means.numel())
    assert abs(means.mean() - exact) <= 4 * se, (means.mean().item(), exact.item(), se.item())
    # The first term alone is visibly biased: the test has power.
    assert abs(truncated_cayley(g, x, 1)[0] - exact) > 6 * se


@pytest.mark.parametrize("memory_efficient", [False, True])
def test_neumann_gradient_of_the_cayley_series_is_the_exact_gradient(memory_efficient):
    """With the probes ``sqrt(D) e_i`` (``mean v v^T = I`` exactly) the trace is exact, so the
    Neumann-series gradient with the Cayley weights must equal the exact gradient."""
    g = make_g(3, coeff=0.8, hidden=8)
    x = torch.randn(2, 3, dtype=torch.float64)
    eye = torch.eye(3, dtype=torch.float64)
    probes = math.sqrt(3) * eye[:, None, :].expand(3, 2, 3).contiguous()
    params = list(g.parameters())

    def grads(compute):
        v = x.clone().requires_grad_()
        ld = compute(v)
        out = torch.autograd.grad(ld.mean(), [v, *params], allow_unused=True)
        flat = [
            (torch.zeros_like(p) if t is None else t).flatten()
            for t, p in zip(out, [v, *params], strict=True)
        ]
        return torch.cat(flat), ld.detach()

    exact, ld_exact = grads(lambda v: exact_logdet(g, v, cayley=True)[1])
    weights = cayley_weights([1.0] * 80)
    neumann, ld = grads(
        lambda v: series_logdet(
            g, v, probes, weights, neumann_gradient=True, memory_efficient=memory_efficient
        )[1]
    )
    torch.testing.assert_close(ld, ld_exact, rtol=0, atol=1e-10)
    torch.testing.assert_close(neumann, exact, rtol=0, atol=1e-9)


def test_estimator_without_a_cayley_form_refuses_in_one_line():
    class Mine(iresnet.LogDetEstimator):
        def __call__(self, g, x):
            return g(x), x.new_zeros(x.shape[0])

    with pytest.raises(TypeError, match="Mine has no Cayley log-det"):
        Mine().cayley(make_g(2), torch.zeros(1, 2, dtype=torch.float64))


def test_no_logdet_cayley_is_nan():
    _, ld = iresnet.ops.NoLogDet().cayley(make_g(2), torch.zeros(3, 2, dtype=torch.float64))
    assert ld.isnan().all()
