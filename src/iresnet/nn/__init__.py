"""Lipschitz-constrained layers, 1-Lipschitz activations and residual-branch builders."""

from .activations import ACTIVATIONS, LipELU, LipSwish, activation_factory
from .branches import BRANCH_NORMS, conv_branch, conv_layer, linear_layer, mlp_branch
from .lipschitz import conv_tap_bound, lipschitz_bound_of
from .spectral import (
    NORMS,
    SpectralConv2d,
    SpectralLinear,
    frozen_normalisation,
    linear_operator_norm,
    power_iteration,
    spectral_penalty,
)

__all__ = [
    "ACTIVATIONS",
    "BRANCH_NORMS",
    "NORMS",
    "LipELU",
    "LipSwish",
    "SpectralConv2d",
    "SpectralLinear",
    "activation_factory",
    "conv_branch",
    "conv_layer",
    "conv_tap_bound",
    "frozen_normalisation",
    "linear_layer",
    "linear_operator_norm",
    "lipschitz_bound_of",
    "mlp_branch",
    "power_iteration",
    "spectral_penalty",
]
