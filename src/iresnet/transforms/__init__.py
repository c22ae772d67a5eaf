"""Invertible transforms: the contract, its composition, and the pieces flows are made of.

Every piece is a [`Transform`][iresnet.transforms.base.Transform]:
``forward(x) -> (y, logdet)`` with ``logdet = log|det dy/dx|`` of shape ``(batch,)`` and
``inverse(y) -> x``. Re-exported from ``base`` (the contract and
[`ComposedTransform`][iresnet.transforms.base.ComposedTransform]), ``residual`` (the block
``x + g(x)``, conditional with a branch ``g(x, c)``), ``monotone`` (Monotone Flows' block
``2 (Id + g)^{-1} - Id``), ``conditional`` (an affine map chosen by
the context), ``actnorm``, ``reshape`` (squeeze, flatten, factor-out, padding),
``preprocess`` (dequantisation, logit, standardisation) and ``dequantization`` (variational
dequantisation, Flow++).

Examples:
    >>> import torch
    >>> from iresnet import nn, transforms
    >>> f = transforms.ComposedTransform(
    ...     transforms.Standardize([0.0, 0.0], [2.0, 2.0]),
    ...     transforms.InvertibleResidualBlock(nn.mlp_branch(2, (8,), coeff=0.9)),
    ... ).eval()
    >>> x = torch.randn(4, 2)
    >>> y, logdet = f(x)
    >>> bool(torch.allclose(f.inverse(y), x, atol=1e-4)), logdet.shape
    (True, torch.Size([4]))
"""

from .actnorm import ActNorm
from .base import ComposedTransform, InverseReport, Transform
from .conditional import ConditionalAffine
from .dequantization import VariationalDequantize, uniform_dequantization
from .monotone import MonotoneBlock
from .preprocess import (
    Dequantize,
    Logit,
    Standardize,
    bits_per_dim,
    dequantize,
    dequantize_mid,
    logit_inverse,
    logit_transform,
)
from .reshape import Flatten, InjectivePad, OnActive, Squeeze
from .residual import (
    InvertibleResidualBlock,
    compile_blocks,
    set_branch_precision,
    swap_logdets,
)

__all__ = [
    "ActNorm",
    "ComposedTransform",
    "ConditionalAffine",
    "Dequantize",
    "Flatten",
    "InjectivePad",
    "InverseReport",
    "InvertibleResidualBlock",
    "Logit",
    "MonotoneBlock",
    "OnActive",
    "Squeeze",
    "Standardize",
    "Transform",
    "VariationalDequantize",
    "bits_per_dim",
    "compile_blocks",
    "dequantize",
    "dequantize_mid",
    "logit_inverse",
    "logit_transform",
    "set_branch_precision",
    "swap_logdets",
    "uniform_dequantization",
]
