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
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .activations import ONE_LIPSCHITZ_ACTIVATIONS
from .conditional import BoundContext, ConditionalBranch
from .dense import DenseLayer
from .spectral import _SpectralNormMixin

__all__ = [
    "LayerBound",
    "conv_tap_bound",
    "design_bound_of",
    "layer_bounds",
    "lipschitz_bound_of",
]


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
    ``nn.Sequential``: the product of its children's bounds. A conditional branch
    ([`ConditionalBranch`][iresnet.nn.conditional.ConditionalBranch]): the bound of its x-path,
    which holds for every context. [`DenseLayer`][iresnet.nn.dense.DenseLayer]:
    ``sqrt(eta_1^2 + eta_2^2 Lip(h)^2)`` with ``Lip(h)`` bounded by composition (i-DenseNet
    eq. (8)). Plain ``nn.Linear``: its exact
    spectral norm (float64 SVD); plain ``nn.Conv2d`` with zero padding:
    [`conv_tap_bound`][iresnet.nn.lipschitz.conv_tap_bound] (the other padding modes copy
    entries, so a tap can expand norms: not certified); ELU and LeakyReLU: their largest
    slopes; the other activations of
    [`ONE_LIPSCHITZ_ACTIVATIONS`][iresnet.nn.activations.ONE_LIPSCHITZ_ACTIVATIONS]: 1. Anything
    else is not certified (``inf``).

    Args:
        module: the map, usually a residual branch ``g``.

    Returns:
        The bound as a Python float (``math.inf`` if unknown, e.g. with a
            [`SpectralConv2d`][iresnet.nn.spectral.SpectralConv2d] that has not yet seen an
            input: its norm depends on the input size).

    Raises:
        ValueError: a spectral layer whose weight has NaN or infinite entries (the provable
            bounds of [`iresnet.nn.bounds`][iresnet.nn.bounds] refuse them).

    References:
        - Behrmann et al., "Invertible Residual Networks", arXiv:1811.00995, sec. 2.1.
        - Miyato et al., arXiv:1802.05957 (the composition bound).
        - Perugachi-Diaz et al., "Invertible DenseNets with Concatenated LipSwish",
          arXiv:2102.02694 (dense layers).

    Examples:
        >>> lipschitz_bound_of(torch.nn.Sequential(torch.nn.Tanh(), torch.nn.ReLU()))
        1.0
    """
    return math.prod(b.bound for b in layer_bounds(module))


@dataclass(frozen=True)
class LayerBound:
    """One layer's upper bound of its Lipschitz constant, and how it was obtained.

    Attributes:
        name: the layer's name inside the module passed to
            [`layer_bounds`][iresnet.nn.lipschitz.layer_bounds] (``""`` for the module itself).
        bound: the bound (``inf`` where none is known).
        method: ``"svd"`` (an exact SVD: a linear layer, or the explicit matrix of a small
            convolution), ``"fft-svd"`` / ``"fft-gram"`` (a convolution's circular embedding),
            ``"gram"``, ``"frobenius"``, ``"tap"`` (a plain convolution's tap bound),
            ``"slope"`` (an activation), ``"context"`` (a context modulation of a conditional
            branch: a gain in ``(0, 1)`` and a shift, 1-Lipschitz for every context),
            ``"dense[...]"`` (a [`DenseLayer`][iresnet.nn.dense.DenseLayer]:
            ``sqrt(eta_1^2 + eta_2^2 Lip(h)^2)`` with the methods that bounded ``h`` in
            brackets), ``"unknown input size"`` (a spectral convolution that has not yet seen
            an input: ``inf``) or ``"unknown"``.
    """

    name: str
    bound: float
    method: str


def layer_bounds(module: nn.Module, prefix: str = "") -> list[LayerBound]:
    """The bound of every layer of ``module`` (children of an ``nn.Sequential`` in order),
    each from a provable method; their product bounds ``Lip(module)``.

    Args:
        module: a layer, or an ``nn.Sequential`` of layers.
        prefix: the name of ``module`` (for the ``name`` of the entries).

    Returns:
        A list of [`LayerBound`][iresnet.nn.lipschitz.LayerBound]s; a
            [`SpectralConv2d`][iresnet.nn.spectral.SpectralConv2d] that has not yet seen an
            input gets ``inf`` (method ``"unknown input size"``).

    Raises:
        ValueError: a spectral layer whose weight has NaN or infinite entries (the provable
            bounds of [`iresnet.nn.bounds`][iresnet.nn.bounds] refuse them).

    References:
        - Behrmann et al., "Invertible Residual Networks", arXiv:1811.00995, sec. 2.1.
        - Perugachi-Diaz et al., arXiv:2102.02694 (dense layers).

    Examples:
        >>> g = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Tanh())
        >>> [b.method for b in layer_bounds(g)]
        ['svd', 'slope']
    """
    if isinstance(module, _SpectralNormMixin):
        b = module.bound()
        # norm="penalty" rescales nothing: its bound is the raw weight's, named as such
        method = f"{b.method} (penalty)" if module.norm == "penalty" else b.method
        return [LayerBound(prefix, float(b.value), method)]
    if isinstance(module, BoundContext):
        return layer_bounds(module.g, prefix)
    if isinstance(module, ConditionalBranch):  # only the x-path acts on x
        return layer_bounds(module.x_path, f"{prefix}.x_path" if prefix else "x_path")
    if isinstance(module, DenseLayer):
        # sqrt(eta_1^2 + eta_2^2 Lip(h)^2), Lip(h) from h's own layers (i-DenseNet eq. (8)).
        inner = layer_bounds(module.network, f"{prefix}.network" if prefix else "network")
        methods = sorted({b.method for b in inner if b.method != "slope"})
        bound = module.bound_given(math.prod(b.bound for b in inner))
        return [LayerBound(prefix, bound, f"dense[{'+'.join(methods) or 'slope'}]")]
    if hasattr(module, "lipschitz_bound") and callable(module.lipschitz_bound):
        method = getattr(module, "lipschitz_method", "slope")
        return [LayerBound(prefix, float(module.lipschitz_bound()), method)]
    if isinstance(module, nn.Sequential):
        out: list[LayerBound] = []
        for name, child in module.named_children():
            out += layer_bounds(child, f"{prefix}.{name}" if prefix else name)
        return out
    if isinstance(module, nn.ELU):
        return [LayerBound(prefix, 1.0 if module.alpha <= 1 else float(module.alpha), "slope")]
    if isinstance(module, nn.LeakyReLU):
        return [LayerBound(prefix, max(1.0, abs(module.negative_slope)), "slope")]
    if isinstance(module, ONE_LIPSCHITZ_ACTIVATIONS):
        return [LayerBound(prefix, 1.0, "slope")]
    if isinstance(module, nn.Linear):
        norm = float(torch.linalg.matrix_norm(module.weight.detach().double(), ord=2))
        return [LayerBound(prefix, norm, "svd")]
    if isinstance(module, nn.Conv2d):
        if module.padding_mode != "zeros":
            # Reflect, replicate (and wide circular) padding copy entries: a tap can expand norms.
            return [LayerBound(prefix, math.inf, "unknown")]
        return [LayerBound(prefix, conv_tap_bound(module.weight), "tap")]
    return [LayerBound(prefix, math.inf, "unknown")]


def design_bound_of(module: nn.Module) -> float | None:
    """The Lipschitz bound ``module``'s constraints impose by construction, for any weights.

    Spectral layers with a hard norm (``"spectral"``, ``"certified"``, ``"frobenius"``):
    their ``coeff``; [`DenseLayer`][iresnet.nn.dense.DenseLayer]:
    ``sqrt(eta_1^2 + eta_2^2 L_h^2) <= dense_coeff * max(1, L_h)``; activations: their
    ``lipschitz_bound()`` (1 for the 1-Lipschitz ones); a
    [`ConditionalBranch`][iresnet.nn.conditional.ConditionalBranch]: its x-path's, its
    context modulations counting 1 (the bound in ``x`` for every context); ``nn.Sequential``:
    the product. None
    where a layer has no such constraint (``norm="penalty"``, plain layers). With
    ``norm="spectral"`` the power-iteration estimate of ``sigma`` can fall short of it, so this
    is the design, not a certificate: [`layer_bounds`][iresnet.nn.lipschitz.layer_bounds]
    certifies the weights in force. The model families use it to choose and check their
    Russian roulettes before any weight is trained.

    Args:
        module: a residual branch ``g`` (or one of its layers).

    Returns:
        The bound, or None.

    References:
        - Behrmann et al., "Invertible Residual Networks", arXiv:1811.00995, sec. 2.1.

    Examples:
        >>> from iresnet.nn import mlp_branch
        >>> round(design_bound_of(mlp_branch(2, (8, 8), coeff=0.9)), 6)
        0.729
        >>> design_bound_of(mlp_branch(2, (8,), norm="penalty")) is None
        True
    """
    if isinstance(module, _SpectralNormMixin):
        return float(module.coeff) if module.norm != "penalty" else None
    if isinstance(module, BoundContext):
        return design_bound_of(module.g)
    if isinstance(module, ConditionalBranch):  # only the x-path acts on x, for every context
        return design_bound_of(module.x_path)
    if isinstance(module, DenseLayer):
        inner = design_bound_of(module.network)
        return None if inner is None else module.dense_coeff * max(1.0, inner)
    if isinstance(module, nn.Sequential):
        total = 1.0
        for child in module:
            b = design_bound_of(child)
            if b is None:
                return None
            total *= b
        return total
    bounds = layer_bounds(module)
    # an activation's slope, or a context modulation (a gain in (0, 1), for every context)
    if len(bounds) == 1 and bounds[0].method in ("slope", "context"):
        return bounds[0].bound
    return None
