"""Conditional residual flows: zuko's interface, implicit gradients, certificates for every
context, the estimators in ``x`` only, and mistakes named in one line (float64 references)."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import Tensor

import iresnet
from iresnet.errors import DataError
from iresnet.nn import bind_context, conditional_mlp_branch, layer_bounds
from tests.helpers import explicit_jacobian


def _solver() -> iresnet.FixedPointInverse:
    return iresnet.FixedPointInverse(atol=1e-11, rtol=0.0, max_iter=1000, on_failure="raise")


def _flow(**kw) -> iresnet.ResidualFlow:
    options = {
        "transforms": 2,
        "hidden_features": (16,),
        "context_features": (16,),
        "inverse": _solver(),
        "coeff": 0.9,
    }
    options.update(kw)
    return iresnet.ResidualFlow(2, context=1, **options)


def _perturb_context_nets(model: torch.nn.Module, scale: float = 0.5) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "context_net" in name or ".net." in name:
                p.add_(scale * torch.randn_like(p))


# ------------------------------------------------------------------- zuko's interface, shared
def fit_like_a_zuko_user(flow: torch.nn.Module, steps: int = 5) -> list[float]:
    """Code written against zuko's interface only: ``flow(c)`` is a Distribution of ``x``."""
    torch.manual_seed(0)
    c = torch.randn(64, 1)
    x = torch.cat([c, 0.5 * c], dim=1) + 0.3 * torch.randn(64, 2)
    dist = flow(c)
    assert isinstance(dist, torch.distributions.Distribution)
    assert dist.log_prob(x).shape == (64,)
    assert dist.batch_shape == (64,) and dist.event_shape == (2,)
    assert flow(c).rsample((3,)).shape == (3, 64, 2)
    assert flow(c[0]).sample((5,)).shape == (5, 2)
    y, log_p = flow(c).rsample_and_log_prob((2,))
    assert y.shape == (2, 64, 2) and log_p.shape == (2, 64)
    assert y.requires_grad  # reparameterised: differentiable in the parameters
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-2)
    losses = []
    for _ in range(steps):
        loss = -flow(c).log_prob(x).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


def test_one_function_written_for_zuko_runs_on_zuko_and_on_ours():
    zuko = pytest.importorskip("zuko")
    ours = iresnet.ResidualFlow(2, context=1, transforms=2, hidden_features=(16,))
    for flow in (zuko.flows.NSF(2, 1, transforms=2, hidden_features=(16, 16)), ours):
        losses = fit_like_a_zuko_user(flow, steps=15)
        assert all(math.isfinite(v) for v in losses)
        assert losses[-1] < losses[0], type(flow).__name__  # Adam makes progress on both


# ---------------------------------------------------------------- the distribution's shapes
def test_batch_semantics_follow_zuko():
    torch.manual_seed(0)
    flow = _flow().double().eval()
    c = torch.randn(3, 1, dtype=torch.float64)
    x = torch.randn(4, 3, 2, dtype=torch.float64)
    d = flow(c)
    assert d.log_prob(x).shape == (4, 3)
    # row j is scored at context j, as if one at a time
    one = flow(c[1]).log_prob(x[:, 1])
    torch.testing.assert_close(d.log_prob(x)[:, 1], one, rtol=0, atol=1e-12)
    # values broadcast against the contexts
    assert d.log_prob(x[0, 0]).shape == (3,)
    assert flow(c[0]).rsample((2, 5)).shape == (2, 5, 2)


def test_rsample_inverts_at_its_context_and_log_prob_matches():
    torch.manual_seed(0)
    flow = _flow().double()
    flow.train()
    with torch.no_grad():
        flow.log_prob(torch.randn(32, 2, dtype=torch.float64), torch.randn(32, 1).double())
    _perturb_context_nets(flow)
    flow.eval()
    c = 3.0 * torch.randn(6, 1, dtype=torch.float64)
    torch.manual_seed(1)
    x, log_p = flow(c).rsample_and_log_prob((2,))
    torch.manual_seed(1)
    z = flow.base().sample((12,))
    cs = flow.check_context(c, "test").expand(2, 6, 1).reshape(12, 1)
    z_back, logdet = flow.transform(x.reshape(12, 2), c=cs)
    torch.testing.assert_close(z_back, z, rtol=0, atol=1e-10)
    torch.testing.assert_close(
        log_p.reshape(12), flow.base().log_prob(z) + logdet, atol=1e-9, rtol=0
    )


def test_rsample_gradients_match_finite_differences():
    """Implicit differentiation through the fixed points, ``dx*/dtheta`` via
    ``(I + J_g)^{-1}``, against central differences of the solved samples (float64), for a
    parameter of the x-path, one of the context network, and the context itself."""
    torch.manual_seed(0)
    flow = _flow(actnorm=False, context_affine=False).double()
    _perturb_context_nets(flow)
    flow.eval()
    c = torch.randn(5, 1, dtype=torch.float64, requires_grad=True)
    z = torch.randn(5, 2, dtype=torch.float64)
    w = torch.randn(5, 2, dtype=torch.float64)  # the loss sum(w * x)

    def loss(ctx: Tensor) -> Tensor:
        return (w * flow.inverse(z, ctx)).sum()

    value = loss(c)
    block = flow.transform[0]
    targets = {
        "x-path weight": block.g.x_path[0].weight,
        "context weight": block.g.context_net[0].weight,
    }
    grads = torch.autograd.grad(value, [*targets.values(), c])
    eps = 1e-6
    for (name, p), grad in zip(targets.items(), grads, strict=False):
        idx = (0, 0)
        with torch.no_grad():
            p[idx] += eps
            up = float(loss(c))
            p[idx] -= 2 * eps
            down = float(loss(c))
            p[idx] += eps
        assert grad[idx].item() == pytest.approx((up - down) / (2 * eps), rel=1e-5, abs=1e-8), name
    with torch.no_grad():
        e = torch.zeros_like(c)
        e[2, 0] = eps
        fd = (float(loss(c + e)) - float(loss(c - e))) / (2 * eps)
    assert grads[-1][2, 0].item() == pytest.approx(fd, rel=1e-5, abs=1e-8)


# -------------------------------------------------------------------- the math, per context
def test_certificate_bounds_the_jacobian_in_x_at_every_context_tried():
    """``||J_x g(x, c)||_2 <= bound`` at random points and contexts, extreme ones included
    (contexts of size 1e3 saturate the gains at 0 and 1 and make huge shifts)."""
    torch.manual_seed(0)
    g = conditional_mlp_branch(3, 2, (16, 16), context_features=(8,), coeff=0.95).double()
    with torch.no_grad():
        for layer in g.x_path:
            if isinstance(layer, iresnet.SpectralLinear):
                layer.weight.mul_(5.0)
    _perturb_context_nets(g, 2.0)
    g.eval()
    bound = math.prod(b.bound for b in layer_bounds(g))
    assert bound <= 0.95**3 + 1e-9
    assert "context" in {b.method for b in layer_bounds(g)}
    largest = unbounded = 0.0
    for scale in (0.1, 1.0, 10.0, 1e3):
        c = scale * torch.randn(64, 2, dtype=torch.float64)
        x = 3.0 * torch.randn(64, 3, dtype=torch.float64)
        for i in range(64):
            ci = c[i : i + 1]
            jac = explicit_jacobian(lambda v, ci=ci: g(v, ci), x[i : i + 1])
            largest = max(largest, float(torch.linalg.matrix_norm(jac[0], ord=2)))
            # the same branch with its gains let out of (0, 1) (times 50) breaks the bound:
            # the check has teeth
            mods = [(s, None if a is None else 50 * a) for s, a in g.modulations(ci)]
            jac = explicit_jacobian(lambda v, m=mods: g._run(v, m, float64=False), x[i : i + 1])
            unbounded = max(unbounded, float(torch.linalg.matrix_norm(jac[0], ord=2)))
    assert largest <= bound
    assert unbounded > bound


def test_certify_marks_conditional_blocks_and_says_how():
    flow = _flow().eval()
    cert = iresnet.certify(flow)
    assert cert.invertible and all(b.conditional for b in cert.blocks)
    assert all("context" in b.methods for b in cert.blocks)
    assert "every context" in str(cert)
    again = iresnet.Certificate.from_dict(cert.to_dict())
    assert again == cert
    old = cert.to_dict()  # a certificate saved before conditional blocks existed
    for b in old["blocks"]:
        del b["conditional"]
    assert not any(b.conditional for b in iresnet.Certificate.from_dict(old).blocks)


@pytest.mark.parametrize("estimator", ["series", "roulette"])
def test_stochastic_logdets_of_a_conditional_block_estimate_the_jacobian_in_x(estimator):
    """Series and roulette estimates at fixed contexts, averaged over many draws, against the
    exact ``log det(I + J_x)``; within 4 standard errors (plus the series' truncation)."""
    torch.manual_seed(0)
    g = conditional_mlp_branch(3, 2, (16,), context_features=(8,), coeff=0.7).double()
    _perturb_context_nets(g)
    g.eval()
    x = torch.randn(4, 3, dtype=torch.float64)
    c = torch.randn(4, 2, dtype=torch.float64)
    bound = bind_context(g, c)
    with torch.no_grad():
        _, exact = iresnet.ExactLogDet()(bound, x)
        est = (
            iresnet.PowerSeriesLogDet(n_terms=20, n_probes=1)
            if estimator == "series"
            else iresnet.RussianRouletteLogDet(n_exact=2, n_probes=1)
        )
        draws = torch.stack([est(bound, x)[1] for _ in range(2000)])
    mean, se = draws.mean(0), draws.std(0) / math.sqrt(draws.shape[0])
    tail = 3 * 0.49**21 / (21 * 0.51)  # d L^(n+1) / ((n+1)(1-L)), L = 0.7^2
    assert ((mean - exact).abs() <= 4 * se + tail).all(), (mean - exact) / se
    # and the context matters: the same points at other contexts have other log-dets
    with torch.no_grad():
        _, other = iresnet.ExactLogDet()(bind_context(g, -c), x)
    assert (other - exact).abs().max() > 1e-3


def test_exact_logdet_is_that_of_the_jacobian_in_x_only():
    torch.manual_seed(0)
    flow = _flow().double()
    _perturb_context_nets(flow)
    flow.eval()
    x = torch.randn(5, 2, dtype=torch.float64)
    c = torch.randn(5, 1, dtype=torch.float64)
    cs = flow.check_context(c, "test")
    jac = torch.cat(
        [
            explicit_jacobian(lambda v, ci=cs[i : i + 1]: flow.transform(v, c=ci)[0], x[i : i + 1])
            for i in range(5)
        ]
    )
    expected = flow.base().log_prob(flow.transform(x, c=cs)[0])
    expected = expected + torch.linalg.slogdet(jac).logabsdet
    torch.testing.assert_close(flow.log_prob(x, c), expected, rtol=0, atol=1e-10)


def test_certified_reconstruction_error_holds_at_every_context():
    torch.manual_seed(0)
    flow = _flow().double()
    loose = iresnet.FixedPointInverse(atol=1e-3, rtol=0.0, max_iter=500)
    for m in flow.modules():
        if isinstance(m, iresnet.InvertibleResidualBlock):
            m.inverse_solver = loose
    _perturb_context_nets(flow)
    flow.eval()
    x = torch.randn(32, 2, dtype=torch.float64)
    c = 3.0 * torch.randn(32, 1, dtype=torch.float64)
    cs = flow.check_context(c, "test")
    with torch.no_grad():
        rec, report = flow.transform.inverse_with_diagnostics(flow.transform(x, c=cs)[0], c=cs)
    err = (rec - x).norm(dim=1)
    assert report.error_bound is not None
    assert (err <= report.error_bound * (1 + 1e-9) + 1e-12).all()
    assert err.max() > 1e-7


# ------------------------------------------------------------------------ save, load, devices
def test_a_conditional_flow_round_trips_through_its_state_dict(tmp_path):
    torch.manual_seed(0)
    flow = _flow(context_standardize=([2.0], [3.0])).double()
    flow.log_prob(torch.randn(16, 2).double(), torch.randn(16, 1).double())  # ActNorm init
    _perturb_context_nets(flow)
    flow.eval()
    state = flow.state_dict()
    assert "context_standardize.mean" in state and "base.loc" in state
    torch.save(state, tmp_path / "flow.pt")
    torch.manual_seed(5)
    fresh = _flow(context_standardize=([0.0], [1.0])).double()
    fresh.load_state_dict(torch.load(tmp_path / "flow.pt"))
    fresh.eval()
    x, c = torch.randn(7, 2).double(), torch.randn(7, 1).double()
    torch.testing.assert_close(fresh.log_prob(x, c), flow.log_prob(x, c), rtol=0, atol=0)
    f32 = fresh.float()
    assert f32(c.float()).log_prob(x.float()).dtype == torch.float32


def test_context_standardize_means_contexts_are_given_in_their_own_units():
    torch.manual_seed(0)
    a = _flow(context_standardize=([10.0], [4.0])).double().eval()
    b = _flow().double().eval()
    b.load_state_dict(a.state_dict(), strict=False)
    x = torch.randn(5, 2).double()
    c = torch.randn(5, 1).double()
    torch.testing.assert_close(a.log_prob(x, 10.0 + 4.0 * c), b.log_prob(x, c), rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------- mistakes
def test_context_mistakes_are_named_in_one_line():
    flow = _flow().eval()
    x = torch.randn(3, 2)
    cases = [
        (lambda: flow.log_prob(x), "this flow is conditional"),
        (lambda: flow(torch.randn(3, 2)), r"\(B, 1\) or \(1,\), got \(3, 2\)"),
        (lambda: flow(torch.randn(3, 1).double()), "float64"),
        (lambda: flow(torch.tensor([[math.nan]])), "NaN"),
        (lambda: flow(torch.randn(3, 1)).log_prob(torch.randn(4, 2)), "broadcast"),
        (lambda: flow.sample(4, c=torch.randn(3, 1)), r"\(4, 1\)"),
        (lambda: iresnet.ResidualFlow(2).log_prob(x, torch.randn(3, 1)), "not conditional"),
        (lambda: flow.transform[2](x), "pass the contexts as c="),
        (lambda: flow.transform[2](x, c=torch.randn(2, 1)), r"\(3, 1\)"),
        (lambda: flow.transform[0](x), "pass the contexts as c="),
    ]
    for call, match in cases:
        with pytest.raises(DataError, match=match) as info:
            call()
        assert "\n" not in str(info.value)
    # the context in the temperature's place (log_prob takes it second; sample third)
    with pytest.raises(TypeError, match=r"pass the context by name, flow.sample\(n, c=c\)"):
        flow.sample(3, torch.randn(3, 1))
    with pytest.raises(ValueError, match="context"):
        iresnet.ResidualFlow(2, context=-1)
    with pytest.raises(ValueError, match="conditional"):
        iresnet.Flow([flow.transform[2]], event_shape=(2,))  # context=0 for a conditional block


def test_a_0d_context_is_named_with_the_shape_received_and_the_shapes_expected():
    """A scalar tensor has no context axis: the message shows ``()`` and ``(B, k)`` or ``(k,)``
    (not the shape of an internal reshape), for ``flow(c)``, ``log_prob`` and ``sample``."""
    flow = _flow().eval()
    scalar = torch.tensor(0.5)
    calls = {
        "flow(c)": lambda: flow(scalar),
        "log_prob": lambda: flow.log_prob(torch.randn(3, 2), scalar),
        "sample": lambda: flow.sample(3, c=scalar),
    }
    for where, call in calls.items():
        with pytest.raises(DataError) as info:
            call()
        assert str(info.value) == (
            f"{where}: expected contexts of shape (B, 1) or (1,), got (); a 0-d tensor has no "
            "context axis: pass c.reshape(1)"
        )
    wide = iresnet.ResidualFlow(2, context=3, transforms=1, hidden_features=(8,))
    for c, shape in ((scalar, "()"), (torch.zeros(2), "(2,)")):
        with pytest.raises(DataError, match=re.escape(f"(B, 3) or (3,), got {shape}")):
            wide(c)
    assert flow.log_prob(torch.randn(3, 2), torch.tensor([0.5])).shape == (3,)  # (k,) works


@pytest.mark.parametrize("memory_efficient", [False, True])
def test_gradients_reach_the_contexts_through_every_log_det_path(memory_efficient):
    """A context that requires a gradient (e.g. from an embedding network) gets the same
    gradient from the memory-efficient series as from backprop through it, and through the
    fixed-point inverse (implicit differentiation) when nothing else requires one."""
    torch.manual_seed(0)
    g = conditional_mlp_branch(3, 2, (16,), context_features=(8,), coeff=0.8).double()
    _perturb_context_nets(g)
    g.eval()  # the same map on every call (no power-iteration step)
    x = torch.randn(4, 3, dtype=torch.float64)
    c = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    probes = iresnet.ops.sample_probes(x, 2, "gaussian")
    grads = []
    for mem in (False, memory_efficient):
        gx, logdet = iresnet.ops.series_logdet(
            bind_context(g, c), x, probes, [1.0] * 6, memory_efficient=mem
        )
        grads.append(torch.autograd.grad((gx.sum() + logdet.sum()), c)[0])
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-12)
    assert grads[0].abs().sum() > 0
    for p in g.parameters():
        p.requires_grad_(False)
    y = torch.randn(4, 3, dtype=torch.float64)
    solved = iresnet.FixedPointInverse(atol=1e-12, rtol=0.0).solve(bind_context(g, c), y)[0]
    assert solved.requires_grad  # only the context asks for a gradient
