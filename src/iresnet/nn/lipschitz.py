"""Upper bounds of Lipschitz constants by composition.

A residual branch ``g`` is a chain of maps and ``Lip(f o h) <= Lip(f) Lip(h)``, so the product of
the layers' bounds bounds ``Lip(g)`` (i-ResNet sec. 2.1; Miyato et al. eq. (7)); ``Lip(g) < 1``
makes ``x + g(x)`` invertible (i-ResNet Theorem 1). Activations with slopes in ``[0, 1]``
contribute 1.

References:
    - Behrmann et al., "Invertible Residual Networks", ICML 2019, arXiv:1811.00995.
    - Miyato et al., "Spectral Normalization for Generative Adversarial Networks", ICLR 2018,
      arXiv:1802.05957.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .activations import ONE_LIPSCHITZ_ACTIVATIONS

__all__ = ["lipschitz_bound_of", "conv_tap_bound"]


def conv_tap_bound(weight: Tensor) -> float:
    """Upper bound of a convolution's operator norm (any stride and zero padding).

    The sum over kernel taps of each tap's matrix norm: the convolution is the sum of its taps,
    each a shifted, zero-padded copy of a ``C_out x C_in`` matrix, and shifting, padding and
    striding do not expand norms (triangle inequality). Valid for every input size.

    Args:
        weight: ``(C_out, C_in, k_h, k_w)``.

    Returns:
        The bound as a Python float, computed in float64.

    Examples:
        >>> w = torch.zeros(1, 1, 3, 3)
        >>> w[0, 0, 1, 1] = 2.0  # a single tap: the map x -> 2x
        >>> conv_tap_bound(w)
        2.0
    """
    taps = weight.detach().double().permute(2, 3, 0, 1).reshape(-1, *weight.shape[:2])
    return float(torch.linalg.matrix_norm(taps, ord=2).sum())


def lipschitz_bound_of(module: nn.Module) -> float:
    """An upper bound of ``Lip(module)`` by composition (``inf`` where none is known).

    A module with a ``lipschitz_bound()`` method: its value (the spectral layers give their
    operator norm, see [`SpectralLinear`][iresnet.nn.spectral.SpectralLinear]).
    ``nn.Sequential``: the product of its children's bounds. Plain ``nn.Linear``: its exact
    spectral norm (float64 SVD); plain ``nn.Conv2d``:
    [`conv_tap_bound`][iresnet.nn.lipschitz.conv_tap_bound]; ELU and LeakyReLU: their largest
    slopes; the other activations of
    [`ONE_LIPSCHITZ_ACTIVATIONS`][iresnet.nn.activations.ONE_LIPSCHITZ_ACTIVATIONS]: 1. Anything
    else is not certified (``inf``).

    Args:
        module: the map, usually a residual branch ``g``.

    Returns:
        The bound as a Python float (``math.inf`` if unknown).

    Raises:
        RuntimeError: a [`SpectralConv2d`][iresnet.nn.spectral.SpectralConv2d] inside that has
            not yet seen an input (its norm depends on the input size).

    Examples:
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
