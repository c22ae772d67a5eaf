"""torch.compile readiness: which training losses trace into one graph (``torch._dynamo.explain``).

Zero graph breaks: the exact log-det, and the power series with the Neumann gradient (closed-form
products, no memory-saving backward), for MLP and convolutional flows. The Russian roulette's
random number of terms is drawn on the host (one break per block: a loop whose length is random
cannot live in a static graph), and the memory-efficient backward forms its gradient with
``torch.autograd.grad`` inside an ``autograd.Function`` (one more); these are documented in
docs/benchmarks.md and asserted here so that a new break anywhere else fails.
"""

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


def _neumann_series() -> PowerSeriesLogDet:
    return PowerSeriesLogDet(n_terms=3, neumann_gradient=True, memory_efficient=False)


@pytest.mark.parametrize("logdet", ["exact", "neumann-series"])
def test_a_vector_flow_training_loss_traces_into_one_graph(logdet):
    torch.manual_seed(0)
    est = "exact" if logdet == "exact" else _neumann_series()
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


def test_an_image_flow_training_loss_traces_into_one_graph():
    torch.manual_seed(0)
    flow = MultiscaleResidualFlow(
        (1, 8, 8),
        scales=2,
        blocks=1,
        hidden_channels=(8, 8),
        logdet=_neumann_series(),
        validate=False,
    )
    report = _explain(flow, torch.rand(4, 1, 8, 8))
    assert report.graph_break_count == 0, [str(b.reason)[:200] for b in report.break_reasons]


@pytest.mark.filterwarnings("ignore::iresnet.RouletteVarianceWarning")
def test_the_roulette_breaks_only_at_its_host_draw_of_the_number_of_terms():
    torch.manual_seed(0)
    est = RussianRouletteLogDet(neumann_gradient=True, memory_efficient=False)
    flow = ResidualFlow(2, transforms=2, hidden_features=(16, 16), logdet=est, validate=False)
    report = _explain(flow, torch.randn(8, 2))
    assert report.graph_break_count >= 1
    for brk in report.break_reasons:
        assert "item()" in str(brk.reason), str(brk.reason)[:300]
        assert any("draw_n_terms" in frame.name for frame in brk.user_stack), brk.user_stack
