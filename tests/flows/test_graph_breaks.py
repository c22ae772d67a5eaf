"""torch.compile readiness: which training losses trace into one graph (``torch._dynamo.explain``).

Zero graph breaks: the exact log-det, the power series and the Russian roulette with the Neumann
gradient, with and without the memory-efficient backward, for MLP and convolutional flows. Traced,
the roulette draws its number of terms in the graph and runs its random tail in a
``while_loop`` (one graph for every draw), and the memory-efficient backward gives way to the
Neumann surrogate that the compiler differentiates (same numbers: ``tests/ops/
test_compiled_logdet.py``). What still breaks, asserted here so that a change is seen: the
roulette whose terms need autograd (a branch without closed-form products, or the gradient
through the series instead of the Neumann series) draws ``N`` on the host and calls autograd."""

from __future__ import annotations

import warnings

import pytest
import torch

from iresnet import MultiscaleResidualFlow, ResidualFlow
from iresnet.errors import DataError
from iresnet.ops.logdet import PowerSeriesLogDet, RussianRouletteLogDet

dynamo = pytest.importorskip("torch._dynamo")


def _explain(flow: torch.nn.Module, x: torch.Tensor):
    flow.train()
    flow().log_prob(x)  # ActNorm's data-dependent initialisation happens once, eagerly

    def loss(batch: torch.Tensor) -> torch.Tensor:
        return -flow().log_prob(batch).mean()

    dynamo.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dynamo.explain(loss)(x)


def _neumann_series(memory_efficient: bool = False) -> PowerSeriesLogDet:
    return PowerSeriesLogDet(n_terms=3, neumann_gradient=True, memory_efficient=memory_efficient)


def _roulette(memory_efficient: bool = True, **kwargs) -> RussianRouletteLogDet:
    return RussianRouletteLogDet(memory_efficient=memory_efficient, **kwargs)


ESTIMATORS = {
    "exact": lambda: "exact",
    "neumann-series": _neumann_series,
    "neumann-series-memory-efficient": lambda: _neumann_series(True),
    "roulette": _roulette,
    "roulette-plain-backward": lambda: _roulette(False),
}


@pytest.mark.filterwarnings("ignore::iresnet.RouletteVarianceWarning")
@pytest.mark.parametrize("logdet", list(ESTIMATORS))
def test_a_vector_flow_training_loss_traces_into_one_graph(logdet):
    torch.manual_seed(0)
    est = ESTIMATORS[logdet]()
    flow = ResidualFlow(2, transforms=2, hidden_features=(16, 16), logdet=est, validate=False)
    report = _explain(flow, torch.randn(8, 2))
    assert report.graph_break_count == 0, [str(b.reason)[:200] for b in report.break_reasons]
    assert report.graph_count == 1


def test_the_input_check_is_skipped_inside_a_compiled_graph_only():
    """A flow built with its default ``validate=True`` still traces into one graph (the NaN
    check is a host read; it runs eagerly and is skipped while compiling)."""
    torch.manual_seed(0)
    flow = ResidualFlow(2, transforms=2, hidden_features=(16, 16), logdet="exact")
    report = _explain(flow, torch.randn(8, 2))
    assert report.graph_break_count == 0, [str(b.reason)[:200] for b in report.break_reasons]
    with pytest.raises(DataError, match="NaN"):
        flow().log_prob(torch.tensor([[float("nan"), 0.0]]))


@pytest.mark.filterwarnings("ignore::iresnet.RouletteVarianceWarning")
@pytest.mark.parametrize("logdet", ["neumann-series", "roulette"])
def test_an_image_flow_training_loss_traces_into_one_graph(logdet):
    torch.manual_seed(0)
    flow = MultiscaleResidualFlow(
        (1, 8, 8),
        scales=2,
        blocks=1,
        hidden_channels=(8, 8),
        logdet=ESTIMATORS[logdet](),
        validate=False,
    )
    report = _explain(flow, torch.rand(4, 1, 8, 8))
    assert report.graph_break_count == 0, [str(b.reason)[:200] for b in report.break_reasons]
    assert report.graph_count == 1


@pytest.mark.filterwarnings("ignore::iresnet.RouletteVarianceWarning")
def test_a_roulette_differentiated_through_its_series_breaks_at_its_draw_and_autograd():
    """Backprop through the terms (no Neumann gradient) needs autograd in the loop, which a
    ``while_loop`` cannot hold: ``N`` is drawn on the host, and the terms call
    ``torch.autograd.grad``; nothing else breaks."""
    torch.manual_seed(0)
    est = RussianRouletteLogDet(neumann_gradient=False, memory_efficient=False)
    flow = ResidualFlow(2, transforms=2, hidden_features=(16, 16), logdet=est, validate=False)
    report = _explain(flow, torch.randn(8, 2))
    assert report.graph_break_count >= 1
    for brk in report.break_reasons:
        reason = str(brk.reason)
        at_draw = "item()" in reason and any(
            "draw_n_terms" in frame.name for frame in brk.user_stack
        )
        assert at_draw or "torch.autograd.grad" in reason, reason[:300]


@pytest.mark.filterwarnings("ignore::iresnet.RouletteVarianceWarning")
@pytest.mark.parametrize("first_call", ["eager", "compiled"])
def test_a_fresh_flow_compiled_after_its_first_call_runs_as_one_graph(first_call):
    """``compile_after_first_call`` (what ``train.compile=true`` uses): a fresh image flow's
    first call sets up ActNorm and the convolutions' power-iteration vectors with host reads;
    run eagerly, every later call is one graph with no break. Compiled from the first call
    (plain ``torch.compile``), the graphs dynamo built around those reads stay in use: the
    step runs in pieces (asserted, so that a torch that stops doing so is seen)."""
    from iresnet import compile_after_first_call

    testing = pytest.importorskip("torch._dynamo.testing")
    torch.manual_seed(0)
    flow = MultiscaleResidualFlow(
        (1, 8, 8), scales=2, blocks=1, hidden_channels=(8, 8), validate=False
    ).train()

    def loss(batch: torch.Tensor) -> torch.Tensor:
        return -flow.log_prob(batch).mean()

    dynamo.reset()
    counter = testing.CompileCounterWithBackend("aot_eager")
    if first_call == "eager":
        step = compile_after_first_call(loss, backend=counter)
    else:
        step = torch.compile(loss, backend=counter)
    for seed in range(3):
        step(torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(seed))).backward()
    if first_call == "eager":
        assert counter.frame_count == 1
    else:
        assert counter.frame_count > 1
