"""Flows and their distributions; the model families built from keyword arguments.

Re-exported from ``flow`` ([`Flow`][iresnet.flows.flow.Flow] and its
[`FlowDistribution`][iresnet.flows.flow.FlowDistribution]), ``residual_flow``
([`ResidualFlow`][iresnet.flows.residual_flow.ResidualFlow], on vectors) and ``multiscale``
([`MultiscaleResidualFlow`][iresnet.flows.multiscale.MultiscaleResidualFlow], on images).

Examples:
    >>> import torch
    >>> from iresnet import flows
    >>> flow = flows.ResidualFlow(3, transforms=2, hidden_features=(8,), logdet="roulette")
    >>> loss = -flow().log_prob(torch.randn(16, 3)).mean()
    >>> loss.backward()
    >>> flow.eval().sample(2).shape
    torch.Size([2, 3])
"""

from .flow import ContextStandardize, DiagonalNormal, Flow, FlowDistribution, StandardNormal
from .multiscale import MultiscaleResidualFlow
from .residual_flow import ResidualFlow

__all__ = [
    "ContextStandardize",
    "DiagonalNormal",
    "Flow",
    "FlowDistribution",
    "MultiscaleResidualFlow",
    "ResidualFlow",
    "StandardNormal",
]
