"""The dense Lipschitz branch of Invertible DenseNets.

A dense layer keeps its input and appends new features, ``x -> [eta_1 x, eta_2 h(x)]`` with
``h`` a Lipschitz-bounded layer followed by a 1-Lipschitz activation. For any ``x, y``,
``||D(x) - D(y)||^2 = eta_1^2 ||x - y||^2 + eta_2^2 ||h(x) - h(y)||^2
<= (eta_1^2 + eta_2^2 Lip(h)^2) ||x - y||^2``, so
``Lip(D) <= sqrt(eta_1^2 + eta_2^2 Lip(h)^2)`` (i-DenseNet sec. 3.1, eq. (6)-(8)). The learned
weights are normalised to ``eta_1^2 + eta_2^2 = dense_coeff^2``, so with ``Lip(h) <= 1`` every
dense layer is ``dense_coeff``-Lipschitz, and a branch of ``depth`` dense layers and a final
``coeff``-bounded layer back to the input width has ``Lip(g) <= coeff * dense_coeff^depth < 1``.
The certificate uses the sharper ``sqrt(eta_1^2 + eta_2^2 Lip(h)^2)`` with the weights in force
and ``Lip(h)`` from ``h``'s own certified layer bounds
([`layer_bounds`][iresnet.nn.lipschitz.layer_bounds]).

References:
    - Perugachi-Diaz, Tomczak, Bhulai, "Invertible DenseNets with Concatenated LipSwish",
      NeurIPS 2021, arXiv:2102.02694, sec. 3.1.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .activations import activation_factory, expansion_of
from .branches import Activation, _check_norm, _check_sizes, conv_layer, linear_layer

__all__ = ["DenseLayer", "dense_branch"]


class DenseLayer(nn.Module):
    """``D(x) = [eta_1 x, eta_2 h(x)]`` (concatenated along dim 1), ``Lip(D) <= dense_coeff``
    when ``Lip(h) <= 1``.

    ``(eta_1, eta_2) = dense_coeff * a / ||a||`` with ``a = softplus(k)`` and ``k`` two learned
    numbers (``learnable=True``; a buffer of zeros, i.e. equal weights, otherwise), so the
    weights stay positive and ``eta_1^2 + eta_2^2 = dense_coeff^2`` whatever ``k`` is
    (i-DenseNet sec. 3.1, "learnable concatenation"). See the module docstring for the bound.

    Arguments:
        network: ``h``, e.g. ``nn.Sequential(SpectralConv2d, CLipSwish)``; a chain of layers
            with ``jvp`` methods lets the exact log-det use forward mode.
        dense_coeff: ``sqrt(eta_1^2 + eta_2^2)``, in ``(0, 1]``.
        learnable: learn the split between ``eta_1`` and ``eta_2``.

    Shapes:
        ``(B, n, *rest) -> (B, n + m, *rest)`` where ``h`` maps ``n`` channels to ``m``.

    Raises:
        ValueError: ``dense_coeff`` outside ``(0, 1]``.

    References:
        - Perugachi-Diaz et al., arXiv:2102.02694, sec. 3.1, eq. (6)-(8).

    Examples:
        >>> layer = DenseLayer(nn.Sequential(nn.Linear(2, 3), nn.Tanh()), dense_coeff=0.9)
        >>> layer(torch.zeros(4, 2)).shape
        torch.Size([4, 5])
        >>> round(float(layer.etas().detach().norm()), 6)
        0.9
    """

    def __init__(self, network: nn.Module, *, dense_coeff: float = 0.98, learnable: bool = True):
        super().__init__()
        if not 0.0 < dense_coeff <= 1.0:
            raise ValueError(f"dense_coeff must lie in (0, 1], got {dense_coeff}")
        self.network = network
        self.dense_coeff = float(dense_coeff)
        if learnable:
            self.raw_eta = nn.Parameter(torch.zeros(2))
        else:
            self.register_buffer("raw_eta", torch.zeros(2))

    def etas(self) -> Tensor:
        """``(eta_1, eta_2)``, a tensor of 2 with a gradient; its norm is ``dense_coeff``."""
        a = F.softplus(self.raw_eta)
        return self.dense_coeff * a / a.norm()

    def forward(self, x: Tensor) -> Tensor:
        eta = self.etas().to(x.dtype)
        return torch.cat([eta[0] * x, eta[1] * self.network(x)], dim=1)

    def jvp(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Forward-mode derivative ``(D(x), J_D(x) t)`` for tangents ``t`` of shape
        ``(d, *x.shape)``; needs ``network`` to be an ``nn.Sequential`` of layers with ``jvp``.

        Raises:
            TypeError: ``network`` is not such a chain.
        """
        if not isinstance(self.network, nn.Sequential) or not all(
            callable(getattr(m, "jvp", None)) for m in self.network
        ):
            raise TypeError("DenseLayer.jvp needs an nn.Sequential network of layers with jvp")
        eta = self.etas().to(x.dtype)
        h, th = x, t
        for layer in self.network:
            h, th = layer.jvp(h, th)
        return (
            torch.cat([eta[0] * x, eta[1] * h], dim=1),
            torch.cat([eta[0] * t, eta[1] * th], dim=2),
        )

    def bound_given(self, network_bound: float) -> float:
        """``sqrt(eta_1^2 + eta_2^2 L^2)`` for ``L >= Lip(h)``, in float64: an upper bound of
        ``Lip(D)`` (module docstring), with the weights in force now."""
        with torch.no_grad():
            eta = self.etas().double()
        if math.isinf(network_bound):
            return math.inf
        return float(torch.sqrt(eta[0] ** 2 + eta[1] ** 2 * network_bound**2))

    def float64_forward(self, x: Tensor, inner: Callable[[nn.Module, Tensor], Tensor | None]):
        """``D(x)`` in float64, with ``inner(module, x)`` evaluating ``h`` in float64 (None where
        it cannot)."""
        h = inner(self.network, x)
        if h is None:
            return None
        with torch.no_grad():
            eta = self.etas().double()
        return torch.cat([eta[0] * x, eta[1] * h], dim=1)


def dense_branch(
    features: int,
    growth: int = 32,
    depth: int = 3,
    *,
    conv: bool = False,
    kernel_size: int = 3,
    activation: Activation = "clipswish",
    norm: str = "spectral",
    coeff: float = 0.98,
    dense_coeff: float = 0.98,
    learnable: bool = True,
    n_power_iterations: int = 1,
) -> nn.Sequential:
    """The i-DenseNet branch: ``depth`` dense layers, then a layer back to ``features``.

    Dense layer ``i`` is ``D_i(x) = [eta_1 x, eta_2 act(W_i x)]`` with ``W_i`` a
    ``coeff``-bounded linear map (or ``kernel_size`` "same" convolution with ``conv=True``) from
    the current width to ``growth / expansion`` outputs, so ``act`` (CLipSwish doubles them)
    produces ``growth`` new features; the last layer is a ``coeff``-bounded linear map (a 1x1
    convolution) from ``features + depth * growth`` back to ``features`` (i-DenseNet sec. 3.1 and
    its image model: 3x3 convolutions in the dense layers, a 1x1 at the end). Hence
    ``Lip(g) <= coeff * dense_coeff^depth``.

    Args:
        features: the input and output size (channels with ``conv=True``).
        growth: features each dense layer adds (divisible by the activation's expansion).
        depth: dense layers.
        conv: convolutions on ``(B, C, H, W)`` instead of linear maps on ``(B, F)``.
        kernel_size: the dense layers' odd kernel size (``conv=True``).
        activation: ``"clipswish"`` (the paper's), ``"lipswish"``, ``"elu"`` or a factory.
        norm: the layers' norm, see [`linear_layer`][iresnet.nn.branches.linear_layer].
        coeff: the Lipschitz coefficient of every linear map / convolution.
        dense_coeff: ``sqrt(eta_1^2 + eta_2^2)`` of every dense layer.
        learnable: learn each dense layer's ``eta_1 : eta_2``.
        n_power_iterations: power-iteration steps per training forward.

    Returns:
        An ``nn.Sequential`` of [`DenseLayer`][iresnet.nn.dense.DenseLayer]s and a last layer,
        ``(B, features, ...) -> (B, features, ...)``.

    Raises:
        ValueError: sizes that are not positive integers, ``growth`` not divisible by the
            activation's expansion, an unknown ``activation`` or ``norm``, ``dense_coeff``
            outside ``(0, 1]``.

    References:
        - Perugachi-Diaz et al., arXiv:2102.02694, sec. 3.1-3.2.

    Examples:
        >>> g = dense_branch(2, growth=8, depth=2, coeff=0.9, dense_coeff=0.9)
        >>> g(torch.zeros(5, 2)).shape
        torch.Size([5, 2])
        >>> from iresnet.nn import lipschitz_bound_of
        >>> lipschitz_bound_of(g.eval()) <= 0.9 * 0.9**2 + 1e-6
        True
    """
    _check_sizes("features", [features])
    _check_sizes("growth", [growth])
    _check_sizes("depth", [depth])
    _check_norm(norm)
    act = activation_factory(activation)
    k = expansion_of(act())
    if growth % k:
        raise ValueError(f"growth must be divisible by {k} for this activation, got {growth}")
    options = {"norm": norm, "coeff": coeff, "n_power_iterations": n_power_iterations}

    def layer(n_in: int, n_out: int, kernel: int) -> nn.Module:
        if conv:
            return conv_layer(n_in, n_out, kernel, **options)  # type: ignore[arg-type]
        return linear_layer(n_in, n_out, **options)  # type: ignore[arg-type]

    layers: list[nn.Module] = []
    width = features
    for _ in range(depth):
        h = nn.Sequential(layer(width, growth // k, kernel_size), act())
        layers.append(DenseLayer(h, dense_coeff=dense_coeff, learnable=learnable))
        width += growth
    layers.append(layer(width, features, 1))
    return nn.Sequential(*layers)
