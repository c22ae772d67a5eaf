"""The roulette's variance: the exact formula, the bound, the automatic choice and the warnings."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import iresnet
from iresnet.ops import (
    auto_roulette_bound,
    roulette_for_lipschitz,
    roulette_variance_bound,
    roulette_variance_is_finite,
    roulette_weights,
)
from tests.helpers import slogdet_of

LIPSCHITZ = [0.0, 0.3, 0.5, 0.7, 0.9, 0.95, 0.98, 0.99]


def _terms(jac: torch.Tensor, v: torch.Tensor, n: int) -> torch.Tensor:
    """``a_k = (-1)^(k+1) v^T J^k v / k`` for ``k = 1..n`` (float64)."""
    out, w = [], v
    for k in range(1, n + 1):
        w = jac.T @ w
        out.append((-1) ** (k + 1) * (w @ v) / k)
    return torch.stack(out)


def _enough_terms(lipschitz: float, n_exact: int, p: float) -> int:
    """Terms after which ``max(L^2 / q, q)^n`` is below ``e^-50`` (the sums have converged:
    ``P(N = n) T_n^2`` decays like ``q^n`` once ``T_n`` has, like ``(L^2 / q)^n`` before)."""
    r = max(lipschitz**2 / (1 - p), 1 - p)
    return n_exact + 10 + math.ceil(50 / -math.log(r))


def _tails(n: int, n_exact: int, p: float) -> torch.Tensor:
    """``P(N >= k)``, ``k = 1..n``, for ``N = n_exact + Geometric(p)`` on ``{0, 1, ...}``."""
    return 1.0 / torch.tensor(roulette_weights(n, n_exact, "geometric", p), dtype=torch.float64)


def _second_moment_by_draws(a: torch.Tensor, tails: torch.Tensor) -> torch.Tensor:
    """``E[Z^2] = sum_n P(N = n) T_n^2`` with ``T_n = sum_{k<=n} a_k / P_k`` (truncated)."""
    partial = torch.cumsum(a / tails, 0)
    p_n = tails - torch.cat([tails[1:], tails.new_zeros(1)])
    return torch.cumsum(p_n * partial**2, 0)


def test_variance_formula_and_bound_hold_for_a_random_jacobian():
    """Eq. (1) (pairs of terms) equals the second moment summed over the draws of ``N``, and
    eq. (2)'s bound lies above it."""
    gen = torch.Generator().manual_seed(0)
    for lipschitz, p, n_exact in ((0.6, 0.5, 1), (0.9, 0.15, 3), (0.95, 0.08, 2)):
        jac = torch.randn(5, 5, generator=gen, dtype=torch.float64)
        jac *= lipschitz / torch.linalg.matrix_norm(jac, ord=2)
        v = torch.randn(5, generator=gen, dtype=torch.float64)
        n = _enough_terms(lipschitz, n_exact, p)
        a, tails = _terms(jac, v, n), _tails(n, n_exact, p)
        mean = a.sum()
        inv_min = (
            1.0
            / tails[torch.minimum(*torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij"))]
        )
        variance = (a[:, None] * a[None, :] * (inv_min - 1)).sum()
        by_draws = _second_moment_by_draws(a, tails)[-1] - mean**2
        torch.testing.assert_close(variance, by_draws, rtol=1e-9, atol=1e-12)
        bound = v.dot(v) ** 2 * roulette_variance_bound(lipschitz, n_exact, param=p)
        assert 0 <= variance <= bound, (float(variance), float(bound))


@pytest.mark.parametrize("lipschitz", LIPSCHITZ)
def test_the_automatic_choice_has_finite_variance_up_to_0_99(lipschitz):
    p, n_exact = roulette_for_lipschitz(lipschitz)
    assert 0 < p <= 0.5 and n_exact >= 2
    assert roulette_variance_is_finite(lipschitz, "geometric", p)
    bound = roulette_variance_bound(lipschitz, n_exact, param=p)
    assert math.isfinite(bound) and bound <= auto_roulette_bound(lipschitz, n_exact) + 1e-15
    if lipschitz == 0:
        return
    # The worst case J = L I (scalar: a_k = (-1)^(k+1) L^k / k): the second moment summed over
    # the draws of N converges, to at most the bound above the squared mean.
    n = _enough_terms(lipschitz, n_exact, p)
    a = torch.tensor([(-1) ** (k + 1) * lipschitz**k / k for k in range(1, n + 1)])
    moments = _second_moment_by_draws(a.double(), _tails(n, n_exact, p))
    variance = moments[-1] - math.log1p(lipschitz) ** 2
    assert float(variance) <= bound * (1 + 1e-9) + 1e-15
    assert float(moments[-1] - moments[n // 2]) <= 1e-9 * max(1.0, float(moments[-1]))


def test_the_papers_geometric_half_blows_up_above_l_squared_one_half():
    """p = 1/2: finite at L = 0.7 (L^2 = 0.49), infinite at L = 0.75 (J = L I diverges)."""
    assert roulette_variance_is_finite(0.7, "geometric", 0.5)
    assert not roulette_variance_is_finite(0.75, "geometric", 0.5)
    assert math.isinf(roulette_variance_bound(0.75, 2, param=0.5))
    assert not roulette_variance_is_finite(0.1, "poisson", 2.0)
    n = 900
    a = torch.tensor([(-1) ** (k + 1) * 0.75**k / k for k in range(1, n + 1)], dtype=torch.float64)
    moments = _second_moment_by_draws(a, _tails(n, 2, 0.5))
    assert float(moments[n - 1]) > 1e6 * float(moments[99])  # grows without bound


def test_auto_roulette_says_what_it_chose_and_is_unbiased_at_high_lipschitz():
    est = iresnet.RussianRouletteLogDet(auto=True, lipschitz=0.99)
    assert (round(est.p, 5), est.n_exact) == (0.00995, 50)
    assert "auto=True (chosen for Lip(g) <= 0.99)" in repr(est)
    template = iresnet.RussianRouletteLogDet(auto=True, probe="rademacher")
    assert template.is_template and "to be chosen" in repr(template)
    with pytest.raises(ValueError, match="Lipschitz bound"):
        template(lambda x: 0.5 * x, torch.zeros(1, 2))
    # g = 0.9 tanh(x): J = 0.9 diag(sech^2), Lip(g) <= 0.9 > 0.707 (Geometric(1/2) would
    # blow up); the auto roulette is unbiased within 4 standard errors of slogdet.
    bound = template.with_lipschitz(0.9)
    assert (round(bound.p, 4), bound.n_exact, bound.probe) == (0.095, 5, "rademacher")
    bound.memory_efficient = False
    torch.manual_seed(0)
    x = 0.3 * torch.randn(1, 3, dtype=torch.float64)

    def g(v):
        return 0.9 * torch.tanh(v)

    exact = slogdet_of(lambda v: v + g(v), x)[0]
    batch = x.expand(64, 3).contiguous()
    means = torch.stack([bound(g, batch)[1].mean() for _ in range(300)])
    se = means.std() / math.sqrt(means.numel())
    assert abs(means.mean() - exact) <= 4 * se, (means.mean().item(), exact.item(), se.item())


def test_fixed_choices_warn_where_their_variance_is_infinite():
    with pytest.warns(iresnet.RouletteVarianceWarning, match="p <= 1 - L"):
        est = iresnet.RussianRouletteLogDet(p=0.5, lipschitz=0.9)
    assert "INFINITE variance" in repr(est) and math.isinf(est.variance_bound(0.9))
    # the warning prices its fix: at L = 0.9 the automatic law has p = (1 - 0.81) / 2 = 0.095
    # and n_exact = ceil(0.81 / 0.19) = 5, so E[N] = 5 + 0.905 / 0.095 = 14.5 against 2 + 1
    priced = r"p=0.095, n_exact=5: E\[N\] = 14.5 terms per probe against 3.0 now"
    with pytest.warns(iresnet.RouletteVarianceWarning, match=priced):
        iresnet.RussianRouletteLogDet(p=0.5, lipschitz=0.9)
    # the stratified roulette is pointed at its own automatic form, not at another estimator
    own = r"StratifiedRouletteLogDet\(auto=True, lipschitz=0.9\) chooses p and n_exact"
    with pytest.warns(iresnet.RouletteVarianceWarning, match=own):
        iresnet.StratifiedRouletteLogDet(p=0.5, lipschitz=0.9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ok = iresnet.RussianRouletteLogDet(p=0.1, lipschitz=0.9)
        assert ok.check_variance(0.9) and "finite variance" in repr(ok)
    # A family checks the user's estimator against its blocks' design bound (0.98^3 = 0.94).
    with pytest.warns(iresnet.RouletteVarianceWarning, match="0.9412"):
        iresnet.MultiscaleResidualFlow((1, 4, 4), scales=1, blocks=1, hidden_channels=(4, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        flow = iresnet.ResidualFlow(2, transforms=2, hidden_features=(8,), logdet="roulette-auto")
    est = flow.transform[1].logdet_estimator
    assert est is flow.transform[3].logdet_estimator
    assert est.lipschitz == pytest.approx(0.98**2) and est.auto
    assert est.p == pytest.approx((1 - 0.98**4) / 2)
    with pytest.raises(ValueError, match=r"needs the blocks' Lipschitz bound: pass Russian"):
        iresnet.ops.logdet_estimator("roulette-auto")
    # the estimator that message names is what swap_logdets takes instead of the name
    with iresnet.swap_logdets(flow, iresnet.RussianRouletteLogDet(auto=True, lipschitz=0.99)):
        assert flow.transform[1].logdet_estimator.auto
    # L = 1 (coeff=1): no law has finite variance; a fixed one warns, auto cannot choose
    with pytest.warns(iresnet.RouletteVarianceWarning, match="holds for no law at L >= 1"):
        iresnet.ResidualFlow(2, transforms=1, hidden_features=(8,), coeff=1.0, logdet="roulette")
    assert math.isinf(iresnet.RussianRouletteLogDet(p=0.01).variance_bound(1.0))
    with pytest.raises(ValueError, match="below 1 \\(the blocks' coeff < 1\\)"):
        iresnet.ResidualFlow(
            2, transforms=1, hidden_features=(8,), coeff=1.0, logdet="roulette-auto"
        )
    with pytest.raises(ValueError, match="lipschitz must be >= 0"):
        iresnet.RussianRouletteLogDet(lipschitz=-0.1)
    with pytest.raises(ValueError, match="Poisson"):
        iresnet.RussianRouletteLogDet(distribution="poisson", auto=True)


def test_roulette_auto_from_the_config():
    from iresnet.app.builder import build_model, load_data
    from iresnet.app.presets import get_preset

    cfg = get_preset("toy-moons").override(["logdet=roulette-auto", "n_blocks=2"])
    data = load_data(cfg.data.__class__(name="moons", n_train=64, n_test=64))
    flow = build_model(cfg, data)
    est = flow.transform[1].logdet_estimator
    assert est.auto and est.lipschitz == pytest.approx(0.98**3)
    with pytest.raises(iresnet.ConfigError, match="roulette-auto"):
        cfg.override(["kind=classifier"])
    # no design bound to choose from: one line, not the estimator's traceback at build time
    for unbounded in ("constrained=false", "lipschitz_norm=penalty"):
        with pytest.raises(iresnet.ConfigError, match="design bound.*model.logdet=roulette"):
            cfg.override([unbounded])


def test_the_hybrid_binds_its_roulette_to_each_block_bound_as_the_flows_do():
    shape, kw = (1, 8, 8), {"scales": 2, "blocks": 1, "hidden_channels": 4, "coeff": 0.9}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = iresnet.HybridClassifier(shape, 10, logdet="roulette-auto", **kw)
    blocks = [m for m in model.modules() if isinstance(m, iresnet.InvertibleResidualBlock)]
    assert len(blocks) == 2
    for block in blocks:
        est = block.logdet_estimator
        assert est.auto and est.lipschitz == pytest.approx(iresnet.nn.design_bound_of(block.g))
        assert math.isfinite(est.variance_bound(est.lipschitz))
    # a fixed Geometric(1/2) roulette at these bounds (0.9^3 = 0.73 > 0.707) warns
    with pytest.warns(iresnet.RouletteVarianceWarning):
        iresnet.HybridClassifier(shape, 10, logdet="roulette", **kw)


def test_conditional_flows_bind_and_check_their_roulettes_as_the_unconditional_ones_do():
    """A conditional branch is bounded in ``x`` by its x-path for every context (its
    modulations count 1), but ``design_bound_of`` gave it None: a conditional flow's fixed
    Geometric(1/2) roulette at 0.98^2 went unchecked (its variance infinite, without a word),
    and ``roulette-auto`` refused to build ("needs the blocks' Lipschitz bound"). Both now
    behave as for the unconditional flows, toy and image."""
    from iresnet.nn.conditional import conditional_conv_branch, conditional_mlp_branch

    bound = iresnet.nn.design_bound_of
    assert bound(conditional_conv_branch(2, 3, (4, 4), coeff=0.9)) == pytest.approx(0.9**3)
    assert bound(conditional_mlp_branch(2, 3, (4,), coeff=0.9)) == pytest.approx(0.9**2)
    plain = conditional_mlp_branch(2, 3, (4,), norm="penalty")
    assert bound(plain) is None  # no hard norm: still nothing to choose from
    families = {
        "image": lambda logdet: iresnet.MultiscaleResidualFlow(
            (1, 4, 4), scales=1, blocks=1, hidden_channels=(4,), context=3, logdet=logdet
        ),
        "toy": lambda logdet: iresnet.ResidualFlow(
            2, transforms=1, hidden_features=(8,), context=3, logdet=logdet
        ),
    }
    for build in families.values():
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            flow = build("roulette-auto")
        blocks = [m for m in flow.modules() if isinstance(m, iresnet.InvertibleResidualBlock)]
        assert blocks
        for block in blocks:
            est = block.logdet_estimator
            assert est.auto and est.lipschitz == pytest.approx(0.98**2)
            assert math.isfinite(est.variance_bound(est.lipschitz))
        with pytest.warns(iresnet.RouletteVarianceWarning, match="0.9604"):
            build("roulette")


@pytest.mark.parametrize("lipschitz", [0.5, 0.9, 0.99])
def test_the_cap_on_terms_leaves_a_truncation_bias_below_its_tolerance(lipschitz):
    """A capped roulette's mean is the series truncated at the cap (the weights of the terms
    below it are unchanged), so its bias is exactly the tail: for the worst case J = -L I in
    float64 it stays below 1e-6 nats per dimension, where the old fixed cap of 200 terms left
    0.05 at L = 0.99 (found by a try-out: auto at L = 0.99 draws N >= 200 with probability 0.22)."""
    est = iresnet.RussianRouletteLogDet(auto=True, lipschitz=lipschitz)
    cap = est.max_terms
    assert cap >= iresnet.ops.roulette.truncation_cap(lipschitz)
    d = 3
    jac = -lipschitz * torch.eye(d, dtype=torch.float64)
    exact = torch.linalg.slogdet(torch.eye(d, dtype=torch.float64) + jac)[1].item()

    def truncated(k_max: int) -> float:
        power, total = torch.eye(d, dtype=torch.float64), 0.0
        for k in range(1, k_max + 1):
            power = power @ jac
            total += (-1) ** (k + 1) * torch.trace(power).item() / k
        return total

    assert abs(truncated(cap) - exact) <= 1e-6 * d
    if lipschitz == 0.99:
        assert abs(truncated(200) - exact) > 0.01 * d  # the old cap's bias
    # the capped draw's weights are those of the uncapped law below the cap
    n = est.draw_n_terms()
    assert est.n_exact <= n <= cap


@pytest.mark.parametrize("kind", ["RussianRouletteLogDet", "StratifiedRouletteLogDet"])
@pytest.mark.parametrize("given", [{"p": 0.3}, {"n_exact": 4}, {"p": 0.3, "n_exact": 4}])
def test_auto_refuses_a_p_or_n_exact_of_its_own(kind, given):
    """``auto=True`` chooses ``p`` and ``n_exact``: an explicit one beside it was kept, the repr
    said "chosen", and the variance warning advised the automatic law the user had asked for."""
    cls = getattr(iresnet, kind)
    for lipschitz in (0.99, None):  # bound now, or a template the family binds
        with pytest.raises(ValueError, match=r"auto=True chooses p and n_exact.*without auto"):
            cls(auto=True, lipschitz=lipschitz, **given)
    fixed = cls(lipschitz=0.5, **given)  # without auto: kept and checked
    assert "chosen" not in repr(fixed) and "finite variance" in repr(fixed)


@pytest.mark.parametrize("kind", ["RussianRouletteLogDet", "StratifiedRouletteLogDet"])
@pytest.mark.parametrize(("max_terms", "n_exact"), [(0, None), (1, 2), (2.5, None)])
def test_a_cap_below_the_sure_terms_is_refused(kind, max_terms, n_exact):
    """``max_terms=0`` was accepted and failed at call time with a bare IndexError, and a cap
    below ``n_exact`` silently overrode it (the estimate's mean moved: 1.0 instead of 0.811 on
    ``g = x / 2``)."""
    given = {} if n_exact is None else {"n_exact": n_exact}
    with pytest.raises(ValueError, match="max_terms must be an integer >= n_exact"):
        getattr(iresnet, kind)(max_terms=max_terms, **given)
    getattr(iresnet, kind)(max_terms=2, n_exact=2)  # a cap at the sure terms: N = n_exact


def test_the_variance_warning_carries_the_bound_it_was_checked_against():
    """Callers that say it their own way (the app's note for a preset's law) read ``L`` from
    the warning, not from its text."""
    with pytest.warns(iresnet.RouletteVarianceWarning) as caught:
        iresnet.RussianRouletteLogDet(p=0.5, lipschitz=0.9)
    assert caught[0].message.lipschitz == 0.9
    assert iresnet.RouletteVarianceWarning("text").lipschitz is None
