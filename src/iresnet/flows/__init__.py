"""Flows and their distributions; the model families built from keyword arguments."""

from .flow import Flow, FlowDistribution, StandardNormal, check_finite
from .multiscale import MultiscaleResidualFlow
from .residual_flow import ResidualFlow

__all__ = [
    "Flow",
    "FlowDistribution",
    "MultiscaleResidualFlow",
    "ResidualFlow",
    "StandardNormal",
    "check_finite",
]
