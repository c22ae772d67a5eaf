"""Invertible transforms: the contract, its composition, and the pieces flows are made of."""

from .actnorm import ActNorm
from .base import ComposedTransform, Transform
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
from .residual import InvertibleResidualBlock, set_branch_precision, swap_logdets

__all__ = [
    "ActNorm",
    "ComposedTransform",
    "Dequantize",
    "Flatten",
    "InjectivePad",
    "InvertibleResidualBlock",
    "Logit",
    "OnActive",
    "Squeeze",
    "Standardize",
    "Transform",
    "bits_per_dim",
    "dequantize",
    "dequantize_mid",
    "logit_inverse",
    "logit_transform",
    "set_branch_precision",
    "swap_logdets",
]
