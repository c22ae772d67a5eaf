"""Lipschitz-constrained layers, 1-Lipschitz activations and residual-branch builders.

Everything is re-exported here from the modules ``spectral`` (spectral normalisation),
``activations``, ``branches`` (MLP and CNN branches ``g`` from keyword arguments) and
``lipschitz`` (bounds by composition).

Examples:
    >>> import torch
    >>> from iresnet import nn
    >>> g = nn.mlp_branch(2, (16,), coeff=0.9)
    >>> g(torch.zeros(5, 2)).shape, nn.lipschitz_bound_of(g.eval()) < 1
    (torch.Size([5, 2]), True)
"""

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
