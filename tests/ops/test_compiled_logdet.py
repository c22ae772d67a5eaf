"""A compiled Russian roulette is the eager one: same draws of ``N``, log-dets and gradients.

Traced by ``torch.compile``, the roulette draws ``N`` in the graph and runs its random tail in a
``while_loop``, and the memory-efficient backward gives way to a carrier of the gradient formed in
the forward pass (``iresnet.ops.logdet``). Here, in float64, for seeds whose draws differ (tails of
several lengths), the compiled training loss of a block (``aot_eager``: ATen's random generators, as
``iresnet.compile_options`` asks of inductor) gives the eager loss's log-dets and parameter
gradients, with one graph for every draw and no graph break (``fullgraph=True``). Timings live in
``benchmarks/compile.py``, never here.
"""

from __future__ import annotations

import copy

import pytest
import torch

from iresnet import (
    ExactLogDet,
    InvertibleResidualBlock,
    PowerSeriesLogDet,
    ResidualFlow,
    RussianRouletteLogDet,
    StratifiedRouletteLogDet,
    compile_options,
)
from iresnet.nn import conv_branch, mlp_branch

dynamo = pytest.importorskip("torch._dynamo")
testing = pytest.importorskip("torch._dynamo.testing")

SEEDS = range(8)


def _run(block, loss, x, seed, state):
    block.load_state_dict(state)  # the same power-iteration vectors for both calls
    block.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    value, logdet = loss(x)
    value.backward()
    return logdet.detach(), {n: p.grad.clone() for n, p in block.named_parameters()}


@pytest.mark.filterwarnings("ignore::iresnet.RouletteVarianceWarning")
@pytest.mark.parametrize(
    ("branch", "shape", "estimator"),
    [
        ("mlp", (16, 3), {}),
        ("mlp", (16, 3), {"memory_efficient": False, "n_probes": 2}),
        ("mlp", (16, 3), {"distribution": "poisson", "rate": 1.5, "n_exact": 1}),
        ("conv", (4, 2, 5, 5), {}),
    ],
)
def test_a_compiled_roulette_gives_the_eager_logdet_and_gradients(branch, shape, estimator):
    torch.manual_seed(0)
    g = mlp_branch(3, (8, 8)) if branch == "mlp" else conv_branch(2, (4, 4))
    est = RussianRouletteLogDet(**estimator)
    block = InvertibleResidualBlock(g, logdet=est).double().train()
    x = torch.randn(*shape, dtype=torch.float64)
    with torch.no_grad():
        block(x)  # a convolution learns its input shape
    state = copy.deepcopy(block.state_dict())

    def loss(batch):
        y, logdet = block(batch)
        return (0.5 * y.pow(2).flatten(1).sum(1) - logdet).mean(), logdet

    counter = testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(loss, backend=counter, fullgraph=True)
    draws, compiled_graphs = set(), None
    for seed in SEEDS:
        torch.manual_seed(seed)
        draws.add(est.draw_n_terms())
        eager_ld, eager_grads = _run(block, loss, x, seed, state)
        comp_ld, comp_grads = _run(block, compiled, x, seed, state)
        compiled_graphs = compiled_graphs or counter.frame_count
        torch.testing.assert_close(comp_ld, eager_ld, rtol=1e-10, atol=1e-12)
        assert eager_grads.keys() == comp_grads.keys()
        for name, grad in eager_grads.items():
            torch.testing.assert_close(comp_grads[name], grad, rtol=1e-9, atol=1e-12, msg=name)
    assert len(draws) >= 3 and max(draws) > est.n_exact  # the loop ran tails of several lengths
    # one graph served every N: nothing was compiled after the first call
    assert counter.frame_count == compiled_graphs
    assert sum(len(graph.graph.nodes) > 0 for graph in counter.graphs) == 1


def test_a_compiled_roulette_without_gradient_is_the_eager_estimate():
    """Under ``no_grad`` the compiled estimate is the eager one too (training mode: the eval
    mode's cached normalisation is a host check of its own)."""
    torch.manual_seed(0)
    block = InvertibleResidualBlock(mlp_branch(3, (8,)), logdet=RussianRouletteLogDet()).double()
    x = torch.randn(8, 3, dtype=torch.float64)
    state = copy.deepcopy(block.state_dict())

    def estimate(batch):
        with torch.no_grad():
            return block(batch)[1]

    compiled = torch.compile(estimate, backend="aot_eager", fullgraph=True)
    for seed in SEEDS:
        values = []
        for fn in (estimate, compiled):
            block.load_state_dict(state)
            torch.manual_seed(seed)
            values.append(fn(x))
        torch.testing.assert_close(values[1], values[0], rtol=1e-10, atol=1e-12)


@pytest.mark.filterwarnings("ignore::iresnet.RouletteVarianceWarning")
@pytest.mark.parametrize(
    ("branch", "shape", "make"),
    [
        (
            "mlp",
            (16, 3),
            lambda: PowerSeriesLogDet(3, neumann_gradient=True, memory_efficient=True),
        ),
        (
            "conv",
            (4, 2, 5, 5),
            lambda: PowerSeriesLogDet(2, neumann_gradient=True, memory_efficient=True),
        ),
        ("mlp", (16, 3), lambda: RussianRouletteLogDet(n_probes=2)),
        ("mlp", (16, 3), StratifiedRouletteLogDet),  # reads its draws on the host: a break
    ],
)
def test_a_compiled_memory_efficient_series_gives_the_eager_gradients(branch, shape, make):
    """The memory-efficient route traced by ``torch.compile`` (``g(x)`` with its graph, the
    log-det's gradient formed in the forward pass and carried by a zero tensor) gives the eager
    route's log-det and gradients with respect to the parameters and to an input that requires
    one (a truncated series and the stratified roulette used to lose their gradient when
    compiled: no graph at all)."""
    torch.manual_seed(0)
    g = mlp_branch(3, (8, 8)) if branch == "mlp" else conv_branch(2, (4, 4))
    block = InvertibleResidualBlock(g, logdet=make()).double().train()
    x0 = torch.randn(*shape, dtype=torch.float64)
    with torch.no_grad():
        block(x0)
    state = copy.deepcopy(block.state_dict())

    def loss(batch):
        y, logdet = block(batch * 1.5)  # the block's input carries a graph back to `batch`
        return (0.5 * y.pow(2).flatten(1).sum(1) - logdet).mean(), logdet

    stratified = isinstance(block.logdet_estimator, StratifiedRouletteLogDet)
    compiled = torch.compile(loss, backend="aot_eager", fullgraph=not stratified)
    for seed in range(3):
        results = []
        for fn in (loss, compiled):
            x = x0.clone().requires_grad_()
            logdet, grads = _run(block, fn, x, seed, state)
            results.append((logdet, {**grads, "input": x.grad}))
        (eager_ld, eager_grads), (comp_ld, comp_grads) = results
        torch.testing.assert_close(comp_ld, eager_ld, rtol=1e-10, atol=1e-12)
        for name, grad in eager_grads.items():
            torch.testing.assert_close(comp_grads[name], grad, rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.filterwarnings("ignore::iresnet.RouletteVarianceWarning")
@pytest.mark.parametrize(
    ("make", "dim"),
    [
        (ExactLogDet, 2),
        (ExactLogDet, 3),
        (lambda: PowerSeriesLogDet(2, neumann_gradient=True, memory_efficient=True), 2),
    ],
    ids=["exact-2d", "exact-3d", "series"],
)
def test_inductor_gives_the_eager_log_likelihood_and_gradients(make, dim):
    """With inductor itself (what ``train.compile=true`` runs, not ``aot_eager``): the same loss
    and parameter gradients as eager, in float64. torch 2.13's inductor miscompiled two things
    the estimators wrote: ``slogdet``'s backward through the batched Jacobian of the exact
    log-det (wrong gradients, some of the wrong sign) and ``torch.add(a, w, alpha=k)`` with
    ``w`` a matrix product (alpha dropped: the series' value off by 1e-2). In 2-D the exact
    log-det takes the determinant's closed form; in 3-D ``slogdet``."""
    torch.manual_seed(1)
    flow = ResidualFlow(dim, transforms=2, hidden_features=(16, 16), logdet=make()).double()
    x = torch.randn(64, dim, dtype=torch.float64)
    with torch.no_grad():
        flow.log_prob(x)  # ActNorm's initialisation
    state = copy.deepcopy(flow.state_dict())

    def loss(batch):
        return -flow.log_prob(batch).mean()

    compiled = torch.compile(loss, options=compile_options("cpu"))
    results = []
    for fn in (loss, compiled):
        flow.load_state_dict(state)
        flow.zero_grad(set_to_none=True)
        torch.manual_seed(0)  # the same probes
        value = fn(x)
        value.backward()
        results.append((value.detach(), {n: p.grad.clone() for n, p in flow.named_parameters()}))
    (eager, eager_grads), (comp, comp_grads) = results
    torch.testing.assert_close(comp, eager, rtol=1e-10, atol=1e-12)
    for name, grad in eager_grads.items():
        torch.testing.assert_close(comp_grads[name], grad, rtol=1e-8, atol=1e-12, msg=name)
