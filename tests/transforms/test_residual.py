"""``compile_blocks``: each residual block's training forward compiled, one graph shared by the
blocks; the same values and gradients as eager (float64), evaluation left eager."""

from __future__ import annotations

import copy
import io

import pytest
import torch

import iresnet
from iresnet import compile_blocks
from tests.helpers import graphs_and_breaks


def _steps(flow, batches, compiled: bool, backend: str):
    """Losses and parameter gradients of plain SGD steps on ``batches``, the flow compiled or
    not; the same seed draws the same probes in both."""
    flow = copy.deepcopy(flow)
    if compiled:
        compile_blocks(flow, backend=backend)
    opt = torch.optim.SGD(flow.parameters(), lr=1e-2)
    out = []
    torch.manual_seed(0)
    for x in batches:
        opt.zero_grad()
        loss = -flow.log_prob(x).mean()
        loss.backward()
        out.append((loss.detach(), [p.grad.clone() for p in flow.parameters()]))
        opt.step()
    return out


@pytest.mark.filterwarnings("ignore::iresnet.RouletteVarianceWarning")
@pytest.mark.parametrize(
    ("logdet", "backend"),
    [("exact", "inductor"), ("series", "inductor"), ("roulette", "aot_eager")],
)
def test_compiled_blocks_give_the_eager_losses_and_gradients(logdet, backend):
    """Three steps (the first eager, then compiled): equal losses and gradients, float64. The
    series with the Neumann gradient and the memory-efficient backward (its closed-form
    products), as ``train.compile=true`` runs it: autograd's double backward does not trace."""
    torch.manual_seed(1)
    if logdet == "series":
        logdet = iresnet.PowerSeriesLogDet(3, neumann_gradient=True, memory_efficient=True)
    flow = iresnet.ResidualFlow(2, transforms=3, hidden_features=(8, 8), logdet=logdet).double()
    batches = [torch.randn(32, 2, dtype=torch.float64) for _ in range(3)]
    eager = _steps(flow, batches, compiled=False, backend=backend)
    torch._dynamo.reset()
    before = graphs_and_breaks()
    compiled = _steps(flow, batches, compiled=True, backend=backend)
    graphs, breaks = (a - b for a, b in zip(graphs_and_breaks(), before, strict=True))
    assert (graphs, breaks) == (1, 0)  # three blocks, one graph
    for (loss_e, grads_e), (loss_c, grads_c) in zip(eager, compiled, strict=True):
        torch.testing.assert_close(loss_c, loss_e, rtol=1e-10, atol=1e-12)
        for g_c, g_e in zip(grads_c, grads_e, strict=True):
            torch.testing.assert_close(g_c, g_e, rtol=1e-8, atol=1e-12)


@pytest.mark.filterwarnings("ignore::iresnet.RouletteVarianceWarning")
def test_compiled_convolutional_blocks_give_the_eager_losses_and_gradients():
    """A two-scale image flow (convolutions in their own layout, ActNorm between blocks)."""
    torch.manual_seed(2)
    flow = iresnet.MultiscaleResidualFlow(
        (1, 4, 4), scales=2, blocks=2, hidden_channels=(4,), logdet="roulette"
    ).double()
    batches = [torch.rand(8, 1, 4, 4, dtype=torch.float64) for _ in range(3)]
    eager = _steps(flow, batches, compiled=False, backend="aot_eager")
    compiled = _steps(flow, batches, compiled=True, backend="aot_eager")
    for (loss_e, grads_e), (loss_c, grads_c) in zip(eager, compiled, strict=True):
        torch.testing.assert_close(loss_c, loss_e, rtol=1e-10, atol=1e-12)
        for g_c, g_e in zip(grads_c, grads_e, strict=True):
            torch.testing.assert_close(g_c, g_e, rtol=1e-8, atol=1e-12)


def test_evaluation_and_copies_of_a_compiled_flow_stay_eager():
    """Only training forwards with autograd on compile: eval mode, ``no_grad`` and inverses of
    a compiled flow add no graph; a deep copy and a pickle (``torch.save``) are eager flows
    with the same numbers."""
    flow = iresnet.ResidualFlow(2, transforms=2, hidden_features=(8,), logdet="exact")
    compile_blocks(flow, backend="eager")
    x = torch.randn(16, 2)
    torch._dynamo.reset()
    before = graphs_and_breaks()
    flow.log_prob(x).sum().backward()  # each block's first call: eager
    with torch.no_grad():
        flow.log_prob(x)
    flow.eval()
    flow.log_prob(x)
    flow.transform.inverse(flow.transform(x)[0])
    assert graphs_and_breaks() == before
    flow.train()
    flow.log_prob(x).sum().backward()
    assert graphs_and_breaks()[0] == before[0] + 1
    buffer = io.BytesIO()
    torch.save(flow, buffer)
    buffer.seek(0)
    for twin in (copy.deepcopy(flow), torch.load(buffer, weights_only=False)):
        assert all(b._compiled_forward is None for b in twin.transform if hasattr(b, "g"))
        twin.log_prob(x).sum().backward()  # eager: no graph added
        assert graphs_and_breaks()[0] == before[0] + 1
        torch.testing.assert_close(twin.eval().log_prob(x), flow.eval().log_prob(x))
        flow.train()


def test_a_block_with_its_own_forward_stays_eager():
    """``MonotoneBlock`` overrides the forward (its inverse's implicit gradient runs autograd in
    the backward pass): ``compile_blocks`` leaves it eager, and says so when nothing is left."""
    g = iresnet.nn.mlp_branch(2, (8,), coeff=0.5)
    block = iresnet.MonotoneBlock(g, logdet=iresnet.ExactLogDet())
    with pytest.raises(ValueError, match="no residual block"):
        compile_blocks(block, backend="eager")
    assert block._compiled_forward is None


def _flow(**kwargs):
    return iresnet.ResidualFlow(2, transforms=1, hidden_features=(8,), **kwargs)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: _flow(context=3), "conditional"),
        (lambda: _flow(logdet=iresnet.PowerSeriesLogDet(3)), "neumann"),
        (lambda: _bf16(_flow(logdet="exact")), "mixed precision"),
    ],
    ids=["conditional", "series-without-neumann", "bf16"],
)
def test_blocks_whose_backward_is_a_double_backward_are_refused_up_front(make, match):
    """They passed and failed at the first compiled backward with torch's "does not currently
    support double backward" traceback."""
    flow = make()
    with pytest.raises(ValueError, match=match):
        compile_blocks(flow)
    assert all(
        b._compiled_forward is None for b in flow.modules() if hasattr(b, "logdet_estimator")
    )


def _bf16(flow):
    iresnet.transforms.set_branch_precision(flow, "bf16")
    return flow
