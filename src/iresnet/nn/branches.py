"""Residual branches ``g`` built from keyword arguments: MLPs on vectors, CNNs on images.

Each branch is an ``nn.Sequential`` of Lipschitz-bounded linear maps with 1-Lipschitz
activations between them, so ``Lip(g) <= prod_i ||W_i||_2 <= coeff^n`` (i-ResNet,
arXiv:1811.00995, sec. 2 and 3.2). The layers offer ``jvp``, so the exact log-det of small
blocks takes the forward-mode Jacobian (:func:`iresnet.ops.jacobian`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from .activations import activation_factory
from .spectral import SpectralConv2d, SpectralLinear

__all__ = ["BRANCH_NORMS", "linear_layer", "conv_layer", "mlp_branch", "conv_branch"]

#: ``norm`` of a branch: the layer norms of :data:`iresnet.nn.spectral.NORMS`, or ``"none"`` for
#: plain ``nn.Linear`` / ``nn.Conv2d`` layers (the unconstrained "vanilla" network).
BRANCH_NORMS = ("spectral", "frobenius", "penalty", "none")

Activation = str | Callable[[], nn.Module]


def _check_norm(norm: str) -> None:
    if norm not in BRANCH_NORMS:
        raise ValueError(f"norm must be one of {BRANCH_NORMS}, got {norm!r}")


def linear_layer(
    in_features: int,
    out_features: int,
    *,
    norm: str = "spectral",
    coeff: float = 0.97,
    n_power_iterations: int = 1,
) -> nn.Module:
    """A :class:`~iresnet.SpectralLinear` with ``||W_hat||_2 <= coeff``, or a plain
    ``nn.Linear`` for ``norm="none"``. Shapes: ``(*, in_features) -> (*, out_features)``."""
    _check_norm(norm)
    if norm == "none":
        return nn.Linear(in_features, out_features)
    return SpectralLinear(
        in_features, out_features, coeff=coeff, n_power_iterations=n_power_iterations, norm=norm
    )


def conv_layer(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    *,
    norm: str = "spectral",
    coeff: float = 0.97,
    n_power_iterations: int = 1,
) -> nn.Module:
    """A "same"-padded (odd ``kernel_size``) :class:`~iresnet.SpectralConv2d`, normalised on its
    input shape, or a plain ``nn.Conv2d`` for ``norm="none"``.
    Shapes: ``(B, in_channels, H, W) -> (B, out_channels, H, W)``."""
    _check_norm(norm)
    pad = kernel_size // 2
    if norm == "none":
        return nn.Conv2d(in_channels, out_channels, kernel_size, padding=pad)
    return SpectralConv2d(
        in_channels,
        out_channels,
        kernel_size,
        padding=pad,
        coeff=coeff,
        n_power_iterations=n_power_iterations,
        norm=norm,
    )


def mlp_branch(
    features: int,
    hidden_features: Sequence[int] = (64, 64),
    *,
    activation: Activation = "lipswish",
    norm: str = "spectral",
    coeff: float = 0.97,
    n_power_iterations: int = 1,
) -> nn.Sequential:
    """``g: features -> hidden_features[0] -> ... -> features``, activations between layers.

    Arguments:
        features: input and output size.
        hidden_features: sizes of the hidden layers (``len + 1`` linear layers in all).
        activation: ``"lipswish"``, ``"elu"`` or a factory of modules.
        norm, coeff, n_power_iterations: see :func:`linear_layer`.

    Shapes: ``(*, features) -> (*, features)``.

    Example:
        >>> g = mlp_branch(2, (16, 16), coeff=0.9)
        >>> from iresnet.nn import lipschitz_bound_of
        >>> lipschitz_bound_of(g.eval()) <= 0.9**3 + 1e-6
        True
    """
    act = activation_factory(activation)
    sizes = [features, *hidden_features, features]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        if i > 0:
            layers.append(act())
        layers.append(
            linear_layer(a, b, norm=norm, coeff=coeff, n_power_iterations=n_power_iterations)
        )
    return nn.Sequential(*layers)


def conv_branch(
    channels: int,
    hidden_channels: Sequence[int] = (32, 32),
    *,
    kernel_sizes: Sequence[int] | None = None,
    preact: bool = False,
    activation: Activation = "lipswish",
    norm: str = "spectral",
    coeff: float = 0.97,
    n_power_iterations: int = 1,
) -> nn.Sequential:
    """The convolutional branch ``g: (B, c, H, W) -> (B, c, H, W)``.

    ``[act ->] conv3x3 -> act -> conv1x1 -> ... -> act -> conv3x3``.

    The bottleneck branch of both papers (i-ResNet, arXiv:1811.00995, sec. 4-5; Residual Flows,
    arXiv:1906.02735, app. E): 3x3 convolutions at both ends, 1x1 between them.

    Arguments:
        channels: input and output channels ``c``.
        hidden_channels: channels between the convolutions (``len + 1`` convolutions).
        kernel_sizes: one odd size per convolution; default ``3, 1, ..., 1, 3``.
        preact: an activation before the first convolution (both papers' code use it on every
            block but the first of a network).
        activation, norm, coeff, n_power_iterations: as :func:`mlp_branch`.

    Raises:
        ValueError: ``kernel_sizes`` of the wrong length.
    """
    act = activation_factory(activation)
    sizes = [channels, *hidden_channels, channels]
    n = len(sizes) - 1
    kernels = list(kernel_sizes) if kernel_sizes is not None else [3, *([1] * (n - 2)), 3][-n:]
    if len(kernels) != n:
        raise ValueError(f"kernel_sizes needs {n} entries (one per convolution), got {kernels}")
    layers: list[nn.Module] = [act()] if preact else []
    for i, (k, c_in, c_out) in enumerate(zip(kernels, sizes[:-1], sizes[1:], strict=True)):
        if i > 0:
            layers.append(act())
        layers.append(
            conv_layer(
                c_in, c_out, k, norm=norm, coeff=coeff, n_power_iterations=n_power_iterations
            )
        )
    return nn.Sequential(*layers)
