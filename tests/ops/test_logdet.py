"""Log-det estimators against exact computation (float64, fixed seeds, standard errors)."""

import math

import pytest
import torch

import iresnet
from iresnet.ops import exact_logdet, jacobian, roulette_weights, sample_probes, series_logdet
from tests.helpers import make_strong_g, mlp_g, scale_weights, slogdet_of


def make_g(dim: int, coeff: float = 0.9, hidden: int = 16) -> torch.nn.Module:
    g = mlp_g(dim, hidden, coeff).double()
    scale_weights(g, 3.0)
    g.eval()  # fixed normalised weights, so every call sees the same map
    return g


def explicit_logdet(g, x):
    """``slogdet(I + J)`` with ``J`` the autograd Jacobian, sample by sample."""
    return slogdet_of(lambda v: v + g(v), x)


def truncated_series(g, x, n):
    """E_v of the n-term estimator: sum_{k<=n} (-1)^{k+1} tr(J^k)/k, from explicit J."""
    _, jac = jacobian(g, x)
    total = torch.zeros(x.shape[0], dtype=x.dtype)
    power = torch.eye(jac.shape[-1], dtype=x.dtype).expand_as(jac)
    for k in range(1, n + 1):
        power = power @ jac
        total = total + (-1) ** (k + 1) * power.diagonal(dim1=1, dim2=2).sum(-1) / k
    return total


def test_exact_logdet_matches_explicit_jacobian():
    g = make_g(4)
    x = torch.randn(6, 4, dtype=torch.float64)
    gx, ld = exact_logdet(g, x)
    torch.testing.assert_close(gx, g(x))
    torch.testing.assert_close(ld, explicit_logdet(g, x), rtol=0, atol=1e-10)


@pytest.mark.parametrize("dim", [1, 2, 3, 4])
def test_exact_logdet_matches_explicit_jacobian_in_every_small_dimension(dim):
    """1 and 2 take the determinant's closed form, 3 and up ``slogdet``: all agree with the
    explicit log-det, and their gradients (first and second order) pass gradcheck."""
    g = make_g(dim, hidden=5)
    x = torch.randn(7, dim, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(exact_logdet(g, x)[1], explicit_logdet(g, x), rtol=0, atol=1e-10)
    assert torch.autograd.gradcheck(lambda v: exact_logdet(g, v)[1], (x,))
    assert torch.autograd.gradgradcheck(lambda v: exact_logdet(g, v)[1], (x,))


@pytest.mark.parametrize("dim", [1, 2])
def test_small_closed_form_log_det_equals_slogdet_with_either_sign(dim):
    """The closed form is ``log|det|`` for any matrix, negative determinants included."""
    from iresnet.ops.logdet import _logabsdet

    m = torch.randn(64, dim, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    assert (torch.linalg.det(m) < 0).any() and (torch.linalg.det(m) > 0).any()
    m.requires_grad_()
    torch.testing.assert_close(_logabsdet(m), torch.linalg.slogdet(m).logabsdet, rtol=0, atol=1e-12)
    (grad,) = torch.autograd.grad(_logabsdet(m).sum(), m)
    torch.testing.assert_close(grad, torch.linalg.inv(m).detach().transpose(-2, -1))


def test_exact_logdet_refuses_large_dimensions():
    g = make_g(8)
    with pytest.raises(ValueError, match="max_dim=4"):
        iresnet.ExactLogDet(max_dim=4)(g, torch.randn(2, 8, dtype=torch.float64))


def test_exact_logdet_gradcheck():
    g = make_g(3, hidden=6)
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: exact_logdet(g, v)[1], (x,))


@pytest.mark.parametrize("probe", ["gaussian", "rademacher"])
def test_power_series_is_hutchinson_of_truncated_series_and_bias_shrinks(probe):
    g = make_g(4, coeff=0.9)
    x = torch.randn(1, 4, dtype=torch.float64).expand(4000, 4).contiguous()
    exact = explicit_logdet(g, x[:1])[0]
    biases = []
    for n in (1, 2, 4, 8):
        est = iresnet.PowerSeriesLogDet(n_terms=n, probe=probe)(g, x)[1]
        target = truncated_series(g, x[:1], n)[0]
        se = est.std() / math.sqrt(est.numel())
        assert abs(est.mean() - target) <= 4 * se + 1e-12
        biases.append(abs(target - exact).item())
    assert biases == sorted(biases, reverse=True) and biases[-1] < 0.2 * biases[0]


@pytest.mark.parametrize("dim,distribution", [(4, "geometric"), (16, "geometric"), (4, "poisson")])
def test_russian_roulette_is_unbiased(dim, distribution):
    g = make_strong_g(dim)
    x = 0.3 * torch.randn(1, dim, dtype=torch.float64)
    exact = explicit_logdet(g, x)[0]
    est = iresnet.RussianRouletteLogDet(distribution=distribution, p=0.5, rate=1.5, n_exact=1)
    batch = x.expand(200, dim).contiguous()
    # One N per call: average within a call over 200 probes, then treat calls as iid draws.
    means = torch.stack([est(g, batch)[1].mean() for _ in range(600)])
    se = means.std() / math.sqrt(means.numel())
    assert abs(means.mean() - exact) <= 4 * se, (means.mean().item(), exact.item(), se.item())
    # Truncating at the expected number of terms would be visibly biased: the test has power.
    trunc = truncated_series(g, x, 2)[0]
    assert abs(trunc - exact) > 6 * se


def test_roulette_weights():
    assert roulette_weights(4, 2, "geometric", 0.5) == [1.0, 1.0, 2.0, 4.0]
    w = roulette_weights(3, 1, "poisson", 2.0)
    assert w[0] == 1.0 and w[1] == pytest.approx(1 / (1 - math.exp(-2.0)))


def _grads(estimator, g, x):
    x = x.clone().requires_grad_()
    params = [p for p in g.parameters()]
    _, ld = estimator(g, x)
    grads = torch.autograd.grad(ld.mean(), [x, *params], allow_unused=True)
    # The last bias does not enter the Jacobian: its log-det gradient is zero (None).
    flat = [
        torch.zeros_like(p) if t is None else t for t, p in zip(grads, [x, *params], strict=True)
    ]
    return torch.cat([t.flatten() for t in flat]), ld.detach()


def _exact_grads(g, x):
    return _grads(iresnet.ExactLogDet(), g, x)[0]


@pytest.mark.parametrize("memory_efficient", [False, True])
def test_neumann_gradient_is_unbiased(memory_efficient):
    g = make_g(3, coeff=0.8, hidden=8)
    x = torch.randn(2, 3, dtype=torch.float64)
    exact = _exact_grads(g, x)
    est = iresnet.RussianRouletteLogDet(
        n_exact=1, p=0.5, n_probes=8, memory_efficient=memory_efficient
    )
    draws = torch.stack([_grads(est, g, x)[0] for _ in range(400)])
    mean, se = draws.mean(0), draws.std(0) / math.sqrt(draws.shape[0])
    z = (mean - exact).abs() / (se + 1e-12)
    assert z.max() < 4.5, z.max()  # ~150 components: 4.5 SE leaves room for multiplicity


@pytest.mark.parametrize("neumann", [False, True])
@pytest.mark.parametrize("cls", ["series", "roulette"])
def test_memory_efficient_equals_plain_backprop_with_same_draws(neumann, cls):
    g = make_g(5, coeff=0.9)
    x = torch.randn(7, 5, dtype=torch.float64)

    def build(mem):
        if cls == "series":
            return iresnet.PowerSeriesLogDet(
                n_terms=6, n_probes=2, neumann_gradient=neumann, memory_efficient=mem
            )
        return iresnet.RussianRouletteLogDet(
            n_exact=3, neumann_gradient=neumann, memory_efficient=mem
        )

    torch.manual_seed(123)
    a, lda = _grads(build(True), g, x)
    torch.manual_seed(123)
    b, ldb = _grads(build(False), g, x)
    torch.testing.assert_close(lda, ldb, rtol=0, atol=1e-12)
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_value_is_the_estimate_not_the_surrogate():
    g = make_g(4)
    x = torch.randn(5, 4, dtype=torch.float64)
    torch.manual_seed(7)
    plain = iresnet.PowerSeriesLogDet(n_terms=5)(g, x)[1]
    torch.manual_seed(7)
    neu = iresnet.PowerSeriesLogDet(n_terms=5, neumann_gradient=True)(g, x.requires_grad_())[1]
    torch.testing.assert_close(plain.detach(), neu.detach(), rtol=0, atol=1e-12)


def test_gradients_reach_input_and_parameters():
    g = make_g(4)
    g.train()
    for est in (
        iresnet.ExactLogDet(),
        iresnet.PowerSeriesLogDet(),
        iresnet.RussianRouletteLogDet(),
    ):
        x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
        gx, ld = est(g, x)
        (gx.sum() + ld.sum()).backward()
        assert x.grad is not None and x.grad.abs().sum() > 0
        for name, p in g.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        g.zero_grad()


def test_memory_efficient_refuses_non_uniform_sample_weights():
    g = make_g(3)
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    _, ld = iresnet.RussianRouletteLogDet()(g, x)
    with pytest.raises(RuntimeError, match="weights every sample"):
        (ld * torch.arange(4.0, dtype=torch.float64)).sum().backward()


def test_a_second_backward_through_a_memory_efficient_log_det_is_a_clear_error():
    """The memory-efficient log-det frees what its backward needs after one pass: a second
    one (``autograd.functional.jacobian``, ``retain_graph=True``) gets a message naming the
    way out, not an internal unpacking error; with ``memory_efficient=False`` it works."""
    g = make_g(3)
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    gx, ld = iresnet.RussianRouletteLogDet()(g, x)
    loss = (gx.sum() + ld.sum()) / 4
    torch.autograd.grad(loss, x, retain_graph=True)
    with pytest.raises(RuntimeError, match="memory_efficient=False"):
        torch.autograd.grad(loss, x, retain_graph=True)
    gx, ld = iresnet.RussianRouletteLogDet(memory_efficient=False)(g, x)
    loss = (gx.sum() + ld.sum()) / 4
    first = torch.autograd.grad(loss, x, retain_graph=True)[0]
    torch.testing.assert_close(torch.autograd.grad(loss, x)[0], first)


def test_no_grad_evaluation_returns_detached_values():
    g = make_g(4)
    x = torch.randn(3, 4, dtype=torch.float64)
    with torch.no_grad():
        for est in (
            iresnet.ExactLogDet(),
            iresnet.PowerSeriesLogDet(),
            iresnet.RussianRouletteLogDet(),
        ):
            gx, ld = est(g, x)
            assert not gx.requires_grad and not ld.requires_grad and ld.shape == (3,)


def test_probes_follow_generator_and_device():
    x = torch.zeros(3, 5, dtype=torch.float64)
    a = sample_probes(x, 2, "gaussian", torch.Generator().manual_seed(1))
    b = sample_probes(x, 2, "gaussian", torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)
    r = sample_probes(x, 4000, "rademacher")
    assert set(r.unique().tolist()) == {-1.0, 1.0} and r.dtype == x.dtype
    assert a.shape == (2, 3, 5)


def test_series_logdet_accepts_explicit_probes_for_conv_inputs():
    conv_g = (
        torch.nn.Sequential(
            iresnet.SpectralConv2d(1, 4, 3, padding=1, coeff=0.9),
            iresnet.LipSwish(),
            iresnet.SpectralConv2d(4, 1, 3, padding=1, coeff=0.9),
        )
        .double()
        .eval()
    )
    x = torch.randn(1, 1, 4, 4, dtype=torch.float64)
    conv_g(x)
    # 2000 copies of one input, one probe each: per-sample estimates are iid Hutchinson draws.
    batch = x.expand(2000, 1, 4, 4).contiguous()
    probes = torch.randn(1, *batch.shape, dtype=torch.float64)
    _, ld = series_logdet(conv_g, batch, probes, [1.0] * 12)
    target = truncated_series(conv_g, x, 12)[0]
    se = ld.std() / math.sqrt(ld.numel())
    assert abs(ld.mean() - target) <= 4 * se
    assert abs(target - explicit_logdet(conv_g, x)[0]) < 1e-3  # 12 terms: small truncation bias


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"n_terms": 0}, "n_terms"),
        ({"n_probes": 0}, "n_probes"),
        ({"probe": "uniform"}, "probe"),
    ],
)
def test_power_series_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        iresnet.PowerSeriesLogDet(**kwargs)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"p": 1.0}, "p must"),
        ({"distribution": "poisson", "rate": 0.0}, "rate"),
        ({"n_exact": 0}, "n_exact"),
        ({"distribution": "binomial"}, "distribution"),
    ],
)
def test_roulette_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        iresnet.RussianRouletteLogDet(**kwargs)
