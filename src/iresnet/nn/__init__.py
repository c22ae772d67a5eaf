"""Lipschitz-constrained layers, 1-Lipschitz activations and residual-branch builders.

Everything is re-exported here from the modules ``spectral`` (spectral normalisation),
``activations``, ``branches`` (MLP and CNN branches ``g`` from keyword arguments),
``conditional`` (branches ``g(x, c)`` whose bound in ``x`` holds for every context), ``dense``
(the i-DenseNet branch),
``lipschitz`` (bounds by composition) and ``bounds`` (provable operator-norm bounds: Gram
iteration, convolutions through the DFT, exact SVDs).

Examples:
    >>> import torch
    >>> from iresnet import nn
    >>> g = nn.mlp_branch(2, (16,), coeff=0.9)
    >>> g(torch.zeros(5, 2)).shape, nn.lipschitz_bound_of(g.eval()) < 1
    (torch.Size([5, 2]), True)
"""

from .activations import (
    ACTIVATIONS,
    CLIPSWISH_CONSTANT,
    CPILA_CONSTANT,
    CLipSwish,
    CPila,
    LipELU,
    LipSwish,
    activation_factory,
    expansion_of,
)
from .bounds import (
    GRAM_ITERATIONS,
    Bound,
    conv2d_exact_norm,
    conv2d_operator_bound,
    gram_iteration_bound,
    linear_operator_bound,
)
from .branches import BRANCH_NORMS, conv_branch, conv_layer, linear_layer, mlp_branch
from .conditional import (
    BoundContext,
    ConditionalBranch,
    ContextModulation,
    bind_context,
    conditional_conv_branch,
    conditional_mlp_branch,
)
from .dense import DenseLayer, dense_branch
from .lipschitz import (
    LayerBound,
    conv_tap_bound,
    design_bound_of,
    layer_bounds,
    lipschitz_bound_of,
)
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
    "Bound",
    "BoundContext",
    "ConditionalBranch",
    "ContextModulation",
    "CLIPSWISH_CONSTANT",
    "CPILA_CONSTANT",
    "CLipSwish",
    "CPila",
    "DenseLayer",
    "GRAM_ITERATIONS",
    "LayerBound",
    "NORMS",
    "LipELU",
    "LipSwish",
    "SpectralConv2d",
    "SpectralLinear",
    "activation_factory",
    "bind_context",
    "conditional_conv_branch",
    "conditional_mlp_branch",
    "conv2d_exact_norm",
    "conv2d_operator_bound",
    "conv_branch",
    "conv_layer",
    "conv_tap_bound",
    "dense_branch",
    "design_bound_of",
    "expansion_of",
    "frozen_normalisation",
    "gram_iteration_bound",
    "layer_bounds",
    "linear_layer",
    "linear_operator_bound",
    "linear_operator_norm",
    "lipschitz_bound_of",
    "mlp_branch",
    "power_iteration",
    "spectral_penalty",
]
