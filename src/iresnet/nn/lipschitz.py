"""Upper bounds of Lipschitz constants by composition.

A residual branch ``g`` is a chain of maps; ``Lip(f o h) <= Lip(f) Lip(h)``, so the product of
the layers' bounds bounds ``Lip(g)`` (i-ResNet, arXiv:1811.00995, sec. 2: ``Lip(g) < 1`` makes
``x + g(x)`` invertible, Theorem 1). Activations with derivatives in ``[0, 1]`` contribute 1.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .activations import ONE_LIPSCHITZ_ACTIVATIONS

__all__ = ["lipschitz_bound_of", "conv_tap_bound"]


def conv_tap_bound(weight: Tensor) -> float:
    """Upper bound of a convolution's operator norm (any stride and zero padding).

    The sum over kernel taps of each tap's matrix norm: each tap is a shifted, zero-padded copy
    of a ``C_out x C_in`` matrix, and shifting, padding and striding do not expand norms.

    Args:
        weight: ``(C_out, C_in, k_h, k_w)``.

    Returns:
        The bound, computed in float64.
    """
    taps = weight.detach().double().permute(2, 3, 0, 1).reshape(-1, *weight.shape[:2])
    return float(torch.linalg.matrix_norm(taps, ord=2).sum())


def lipschitz_bound_of(module: nn.Module) -> float:
    """An upper bound of ``Lip(module)`` by composition (``inf`` where none is known).

    ``nn.Sequential``: product of its children's bounds. A module with a ``lipschitz_bound()``
    method: its value. Plain ``nn.Linear``: its exact spectral norm; plain ``nn.Conv2d``:
    :func:`conv_tap_bound`; ELU and LeakyReLU: their slopes; other 1-Lipschitz activations: 1.
    Anything else is not certified (``inf``).

    Example:
        >>> lipschitz_bound_of(torch.nn.Sequential(torch.nn.Tanh(), torch.nn.ReLU()))
        1.0
    """
    if hasattr(module, "lipschitz_bound") and callable(module.lipschitz_bound):
        return float(module.lipschitz_bound())
    if isinstance(module, nn.Sequential):
        bound = 1.0
        for child in module:
            bound *= lipschitz_bound_of(child)
        return bound
    if isinstance(module, nn.ELU):
        return 1.0 if module.alpha <= 1 else float(module.alpha)
    if isinstance(module, nn.LeakyReLU):
        return max(1.0, abs(module.negative_slope))
    if isinstance(module, ONE_LIPSCHITZ_ACTIVATIONS):
        return 1.0
    if isinstance(module, nn.Linear):
        return float(torch.linalg.matrix_norm(module.weight.detach().double(), ord=2))
    if isinstance(module, nn.Conv2d):
        return conv_tap_bound(module.weight)
    return math.inf
