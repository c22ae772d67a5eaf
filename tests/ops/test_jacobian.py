"""Closed-form products of the known branch chains against autograd, in float64."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import iresnet
from iresnet.ops import logdet as logdet_module
from iresnet.ops.jacobian import Samplewise, linearize, linearize_adjoint


def branches() -> dict[str, tuple[nn.Module, tuple[int, ...]]]:
    torch.manual_seed(0)
    strided = nn.Sequential(
        iresnet.SpectralConv2d(2, 3, 3, stride=2, padding=1, coeff=0.9),
        iresnet.LipELU(),
        iresnet.SpectralConv2d(3, 2, 1, coeff=0.9),
    )
    return {
        "mlp-lipswish": (iresnet.nn.mlp_branch(3, (8, 8), activation="lipswish"), (3,)),
        "mlp-elu": (iresnet.nn.mlp_branch(3, (8,), activation="elu"), (3,)),
        "conv": (iresnet.nn.conv_branch(2, (4,)), (2, 5, 5)),
        # output smaller than input: the transposed convolution needs the input's size
        "strided-conv": (strided, (2, 6, 6)),
    }


@pytest.mark.parametrize("name", list(branches()))
def test_closed_form_products_equal_autograd(name):
    g, event = branches()[name]
    g = g.double()
    x = torch.randn(4, *event, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 4, *event, dtype=torch.float64)
    g(x)  # convolutions learn their input size
    with iresnet.nn.frozen_normalisation(g):  # every call normalises alike
        check_products(g, x, t)


def check_products(g: nn.Module, x: torch.Tensor, t: torch.Tensor) -> None:
    gx, jt, vjp = linearize(g, x, t)
    assert vjp is not None and jt is not None
    torch.testing.assert_close(gx, g(x), rtol=1e-12, atol=1e-12)
    w = torch.randn_like(gx)
    torch.testing.assert_close(
        vjp(w), torch.autograd.grad(gx, x, w, retain_graph=True)[0], rtol=1e-10, atol=1e-12
    )
    for i in range(t.shape[0]):
        _, want = torch.autograd.functional.jvp(g, x.detach(), t[i])
        torch.testing.assert_close(jt[i], want, rtol=1e-10, atol=1e-12)
    # J t carries its graph: the gradient of w^T J t to the weights equals the double backward's.
    params = [p for p in g.parameters() if p.requires_grad]
    first = torch.autograd.grad((jt[0] * w).sum(), params, retain_graph=True, allow_unused=True)
    wj = torch.autograd.grad(g(x), x, w, create_graph=True)[0]
    second = torch.autograd.grad((wj * t[0]).sum(), params, allow_unused=True)
    for a, b in zip(first, second, strict=True):
        if a is None or b is None:
            assert a is None or float(a.abs().max()) == 0.0
            continue
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_other_maps_fall_back_to_autograd():
    g = nn.Sequential(nn.Linear(2, 2), nn.Tanh())
    gx, jt, vjp = linearize(g, torch.zeros(3, 2), torch.zeros(1, 3, 2))
    assert gx.shape == (3, 2) and jt is None and vjp is None


@pytest.mark.parametrize("memory_efficient", [False, True])
@pytest.mark.parametrize("neumann", [False, True])
def test_the_series_is_the_same_with_and_without_closed_forms(
    monkeypatch, neumann, memory_efficient
):
    """Same probes, same terms: the value and every gradient agree to rounding."""
    g, event = branches()["mlp-lipswish"]
    g = g.double().train()
    x0 = torch.randn(6, *event, dtype=torch.float64)
    estimator = iresnet.PowerSeriesLogDet(
        n_terms=5, n_probes=2, neumann_gradient=neumann, memory_efficient=memory_efficient
    )
    results = []
    for closed in (True, False):
        if not closed:
            monkeypatch.setattr(logdet_module, "linearize", lambda g, x, t=None: (g(x), None, None))
        torch.manual_seed(1)
        x = x0.clone().requires_grad_()
        g.zero_grad()
        with iresnet.nn.frozen_normalisation(g):
            _, value = estimator(g, x)
            value.sum().backward()
        grads = [None if p.grad is None else p.grad.clone() for p in g.parameters()]
        results.append((value.detach(), x.grad.clone(), grads))
    (v1, gx1, p1), (v2, gx2, p2) = results
    torch.testing.assert_close(v1, v2, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gx1, gx2, rtol=1e-9, atol=1e-12)
    for a, b in zip(p1, p2, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


ADJOINT_BRANCHES = ["mlp-lipswish", "conv"]


def _carry(pairs: list, params: list) -> list:
    """Gradients of the parameters from (tensor, gradient) pairs, as the estimator adds them."""
    index = {id(p): i for i, p in enumerate(params)}
    out: list = [None] * len(params)
    others = []
    for a, b in pairs:
        if not isinstance(a, torch.Tensor):  # a closed-form pullback to a parameter
            a, b = a.param, a.pullback(b)
        if id(a) in index:
            i = index[id(a)]
            out[i] = b if out[i] is None else out[i] + b
        else:
            others.append((a, b))
    if not others:
        return out
    carried = torch.autograd.grad(
        [a for a, _ in others], params, [b for _, b in others], allow_unused=True, retain_graph=True
    )
    return [
        b if a is None else (a if b is None else a + b) for a, b in zip(out, carried, strict=True)
    ]


def _inputs(g: nn.Module, event: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, list]:
    """``x`` (4 samples, requiring a gradient), two tangents, and ``g``'s trainable parameters,
    after one call of ``g`` (a convolution learns its input size)."""
    x = torch.randn(4, *event, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 4, *event, dtype=torch.float64)
    g(x)
    return x, t, [p for p in g.parameters() if p.requires_grad]


def _assert_grads_close(mine: list, want: tuple) -> None:
    for a, b in zip(mine, want, strict=True):
        if a is None or b is None:
            assert a is None or float(a.abs().max()) == 0.0
            assert b is None or float(b.abs().max()) == 0.0
            continue
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("mode", ["train", "eval", "small-weights", "certified"])
@pytest.mark.parametrize("name", ADJOINT_BRANCHES)
def test_gradients_in_closed_form_equal_autograd(name, mode):
    """d/d(x, params) of sum_p c_p^T J t_p and of r^T g(x), in closed form and by autograd.

    Modes: training; eval (the converged vectors); weights so small that no layer is rescaled
    (the clamp passes no gradient to sigma); ``norm="certified"`` (no closed-form pullback: the
    normalised weights' graphs carry the gradient)."""
    g, event = branches()[name]
    g = g.double()
    if mode == "certified":
        for m in g.modules():
            if hasattr(m, "norm") and isinstance(m.norm, str):
                m.norm = "certified"
    if mode == "small-weights":
        with torch.no_grad():
            for m in g.modules():
                if hasattr(m, "weight") and m.weight is not None and m.weight.dim() > 1:
                    m.weight.mul_(1e-3)
    g.train(mode != "eval")
    x, t, params = _inputs(g, event)
    with iresnet.nn.frozen_normalisation(g):
        closed = linearize_adjoint(g, x, t)
        assert closed is not None
        gx, vjp, surrogate_grad, grad = closed
        assert gx.grad_fn is None
        torch.testing.assert_close(gx, g(x), rtol=1e-12, atol=1e-12)
        w = torch.randn_like(gx)
        torch.testing.assert_close(
            vjp(w), torch.autograd.grad(g(x), x, w)[0], rtol=1e-10, atol=1e-12
        )
        c = torch.randn(2, *gx.shape, dtype=torch.float64)
        grad_x, pairs = surrogate_grad(c)
        mine = _carry(pairs, params)
        _, jt, _ = linearize(g, x, t)
        assert jt is not None
        want = torch.autograd.grad((jt * c).sum(), [x, *params], allow_unused=True)
        torch.testing.assert_close(grad_x, want[0], rtol=1e-9, atol=1e-12)
        _assert_grads_close(mine, want[1:])
        # the backward pass of g, r -> d(r^T g(x)), from what the forward kept
        r = torch.randn_like(gx)
        grad_x, pairs = grad(r)
        want = torch.autograd.grad((g(x) * r).sum(), [x, *params], allow_unused=True)
        torch.testing.assert_close(grad_x, want[0], rtol=1e-10, atol=1e-12)
        _assert_grads_close(_carry(pairs, params), want[1:])


@pytest.mark.parametrize("name", ADJOINT_BRANCHES)
def test_with_graph_the_output_carries_autograds_backward_and_the_rest_is_unchanged(name):
    """``linearize_adjoint(..., graph=True)`` (the route ``torch.compile`` traces): ``g(x)``
    with the graph of ``g`` (its gradients those of autograd through ``g``), the same
    products and the same surrogate gradient as without ``graph``."""
    g, event = branches()[name]
    g = g.double().train()
    x, t, params = _inputs(g, event)
    with iresnet.nn.frozen_normalisation(g):
        plain = linearize_adjoint(g, x, t)
        traced = linearize_adjoint(g, x, t, graph=True)
        assert plain is not None and traced is not None
        assert plain[0].grad_fn is None and traced[0].grad_fn is not None
        torch.testing.assert_close(traced[0], plain[0], rtol=1e-12, atol=1e-12)
        r = torch.randn_like(plain[0])
        grad_x, pairs = plain[3](r)
        got = torch.autograd.grad(
            (traced[0] * r).sum(), [x, *params], allow_unused=True, retain_graph=True
        )
        torch.testing.assert_close(got[0], grad_x, rtol=1e-10, atol=1e-12)
        _assert_grads_close(_carry(pairs, params), got[1:])
        w = torch.randn_like(plain[0])
        torch.testing.assert_close(traced[1](w), plain[1](w), rtol=1e-12, atol=1e-12)
        # the surrogate's gradient: the layers' inputs' cotangents ride on their graphs
        c = torch.randn(2, *plain[0].shape, dtype=torch.float64)
        (gx_plain, pairs_plain), (gx_traced, pairs_traced) = plain[2](c), traced[2](c)
        assert gx_traced is None
        samplewise = [(t.tensor, g) for t, g in pairs_traced if isinstance(t, Samplewise)]
        assert samplewise  # LipSwish's curvature gives its input a cotangent
        others = [(t, g) for t, g in pairs_traced if not isinstance(t, Samplewise)]
        via_inputs = torch.autograd.grad(
            [t for t, _ in samplewise],
            [x, *params],
            [g for _, g in samplewise],
            allow_unused=True,
            retain_graph=True,
        )
        total = [
            b if a is None else (a if b is None else a + b)
            for a, b in zip(_carry(others, params), via_inputs[1:], strict=True)
        ]
        torch.testing.assert_close(via_inputs[0], gx_plain, rtol=1e-10, atol=1e-12)
        _assert_grads_close(total, tuple(_carry(pairs_plain, params)))


def test_linearize_adjoint_declines_unknown_layers():
    assert (
        linearize_adjoint(branches()["mlp-elu"][0], torch.zeros(3, 3), torch.zeros(1, 3, 3)) is None
    )
    g = nn.Sequential(nn.Linear(2, 2), nn.Tanh())
    assert linearize_adjoint(g, torch.zeros(3, 2), torch.zeros(1, 3, 2)) is None


@pytest.mark.parametrize("name", ADJOINT_BRANCHES)
@pytest.mark.parametrize("n_probes", [1, 2])
def test_memory_efficient_series_is_the_same_with_the_closed_form_surrogate_gradient(
    monkeypatch, name, n_probes
):
    """The memory-efficient Neumann estimator with the surrogate's gradient in closed form
    against the same estimator through autograd's graph of J v: same value, same gradients."""
    g, event = branches()[name]
    g = g.double().train()
    x0 = torch.randn(6, *event, dtype=torch.float64)
    g(x0)
    results = []
    for closed in (True, False):
        if not closed:
            monkeypatch.setattr(logdet_module, "linearize_adjoint", lambda g, x, t, **kw: None)
        # the loss weights g(x) unevenly across samples: the backward pass of g must see it
        estimator = iresnet.RussianRouletteLogDet(
            n_exact=2, n_probes=n_probes, neumann_gradient=True, memory_efficient=True
        )
        torch.manual_seed(1)
        x = x0.clone().requires_grad_()
        g.zero_grad()
        with iresnet.nn.frozen_normalisation(g):
            gx, value = estimator(g, x)
            (
                value.mean() + (gx * gx * torch.arange(6.0).reshape(6, *[1] * len(event))).sum()
            ).backward()
        grads = [None if p.grad is None else p.grad.clone() for p in g.parameters()]
        results.append((value.detach(), x.grad.clone(), grads))
    (v1, gx1, p1), (v2, gx2, p2) = results
    torch.testing.assert_close(v1, v2, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gx1, gx2, rtol=1e-9, atol=1e-12)
    for a, b in zip(p1, p2, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
