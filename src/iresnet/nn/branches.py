"""Residual branches ``g`` built from keyword arguments: MLPs on vectors, CNNs on images.

Each branch is an ``nn.Sequential`` of Lipschitz-bounded linear maps with 1-Lipschitz
activations between them, so ``Lip(g) <= prod_i ||W_i||_2 <= coeff^n`` for ``n`` linear maps
(i-ResNet sec. 2.1, where ``g = W_3 phi(W_2 phi(W_1))``). The layers offer ``jvp``, so the exact
log-det of small blocks takes the forward-mode Jacobian
([`jacobian`][iresnet.ops.jacobian.jacobian]).

References:
    - Behrmann et al., "Invertible Residual Networks", ICML 2019, arXiv:1811.00995.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from .activations import activation_factory, expansion_of
from .spectral import SpectralConv2d, SpectralLinear

__all__ = ["BRANCH_NORMS", "linear_layer", "conv_layer", "mlp_branch", "conv_branch"]

BRANCH_NORMS = ("spectral", "certified", "frobenius", "penalty", "none")
"""``norm`` of a branch: the layer norms of ``iresnet.nn.NORMS``, or ``"none"`` for plain
``nn.Linear`` / ``nn.Conv2d`` layers (the unconstrained "vanilla" network)."""

Activation = str | Callable[[], nn.Module]


def _check_sizes(name: str, sizes: Sequence[int]) -> None:
    if isinstance(sizes, (int, str)) or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in sizes
    ):
        raise ValueError(f"{name} must be a sequence of positive integers, got {sizes!r}")


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
    """A [`SpectralLinear`][iresnet.nn.spectral.SpectralLinear], or a plain ``nn.Linear``.

    Args:
        in_features: input size.
        out_features: output size.
        norm: one of [`BRANCH_NORMS`][iresnet.nn.branches.BRANCH_NORMS]: ``"spectral"``
            (``||W_hat||_2 <= coeff`` up to the power-iteration estimate), ``"certified"``
            (``||W_hat||_2 <= coeff`` by a provable bound), ``"frobenius"``, ``"penalty"`` or
            ``"none"`` (a plain
            ``nn.Linear``, no bound).
        coeff: the Lipschitz coefficient ``c``, in ``(0, 1]``.
        n_power_iterations: power-iteration steps per training forward.

    Returns:
        The layer, ``(*, in_features) -> (*, out_features)``.

    Raises:
        ValueError: an unknown ``norm`` (or a bad ``coeff`` / ``n_power_iterations``).

    References:
        - Miyato et al., "Spectral Normalization for Generative Adversarial Networks",
          arXiv:1802.05957.
        - Behrmann et al., arXiv:1811.00995, sec. 2 (the coefficient ``c < 1``).

    Examples:
        >>> type(linear_layer(3, 5, norm="none")).__name__
        'Linear'
    """
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
    """A "same"-padded spectrally normalised convolution, or a plain ``nn.Conv2d``.

    A [`SpectralConv2d`][iresnet.nn.spectral.SpectralConv2d] normalised on its input shape. The
    padding is ``kernel_size // 2``, which keeps ``H`` and ``W`` for odd kernel sizes.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: an odd kernel size.
        norm: as [`linear_layer`][iresnet.nn.branches.linear_layer]; ``"none"`` gives a plain
            ``nn.Conv2d``.
        coeff: the Lipschitz coefficient ``c``, in ``(0, 1]``.
        n_power_iterations: power-iteration steps per training forward.

    Returns:
        The layer, ``(B, in_channels, H, W) -> (B, out_channels, H, W)``.

    Raises:
        ValueError: an unknown ``norm`` (or a bad ``coeff`` / ``n_power_iterations``).

    References:
        - Miyato et al., "Spectral Normalization for Generative Adversarial Networks",
          arXiv:1802.05957.
        - Gouk et al., "Regularisation of Neural Networks by Enforcing Lipschitz Continuity",
          arXiv:1804.04368 (power iteration through the convolution itself).
        - Behrmann et al., arXiv:1811.00995, sec. 2.

    Examples:
        >>> import torch
        >>> conv_layer(2, 4, 3)(torch.zeros(1, 2, 5, 5)).shape
        torch.Size([1, 4, 5, 5])
    """
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
    """The MLP branch ``g: features -> hidden_features[0] -> ... -> features``.

    ``len(hidden_features) + 1`` linear layers from
    [`linear_layer`][iresnet.nn.branches.linear_layer] with an activation between consecutive
    ones (none before the first or after the last), so ``Lip(g) <= coeff^(len + 1)`` with
    1-Lipschitz activations.

    Args:
        features: input and output size.
        hidden_features: sizes of the hidden layers.
        activation: ``"lipswish"``, ``"elu"``, ``"clipswish"``, ``"cpila"`` (with the last two
            each hidden layer feeds twice its width to the next; they concatenate along dim 1,
            so inputs are ``(B, features)``) or a factory of modules.
        norm: the layers' norm, see [`linear_layer`][iresnet.nn.branches.linear_layer].
        coeff: the Lipschitz coefficient of every layer.
        n_power_iterations: power-iteration steps per training forward of every layer.

    Returns:
        An ``nn.Sequential``, ``(*, features) -> (*, features)``.

    Raises:
        ValueError: an unknown ``activation`` or ``norm``, or sizes that are not positive
            integers.

    References:
        - Behrmann et al., "Invertible Residual Networks", arXiv:1811.00995, sec. 2.
        - Chen et al., "Residual Flows for Invertible Generative Modeling", arXiv:1906.02735.

    Examples:
        >>> g = mlp_branch(2, (16, 16), coeff=0.9)
        >>> from iresnet.nn import lipschitz_bound_of
        >>> lipschitz_bound_of(g.eval()) <= 0.9**3 + 1e-6
        True
    """
    layers = _chain(
        [features, *hidden_features, features],
        None,
        activation,
        lambda a, b, _: linear_layer(
            a, b, norm=norm, coeff=coeff, n_power_iterations=n_power_iterations
        ),
        names=("features", "hidden_features"),
    )
    return nn.Sequential(*layers)


def _chain(
    sizes: Sequence[int],
    kernels: Sequence[int] | None,
    activation: Activation,
    layer: Callable[[int, int, int], nn.Module],
    *,
    names: tuple[str, str],
    preact: bool = False,
    modulation: Callable[[int], nn.Module] | None = None,
) -> list[nn.Module]:
    """The layers of a branch: ``layer(width_in, width_out, kernel)`` for consecutive
    ``sizes``, an activation between them (and first with ``preact``), each activation after
    ``modulation(width)`` where given (a conditional branch's context gate), and every layer
    after a width-changing activation (CLipSwish doubles it) sized for it."""
    _check_sizes(names[0], [sizes[0]])
    _check_sizes(names[1], sizes[1:-1])
    act = activation_factory(activation)
    layers: list[nn.Module] = [act()] if preact else []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        if i > 0:
            if modulation is not None:
                layers.append(modulation(a))
            layers.append(act())
        if layers:
            a *= expansion_of(layers[-1])  # CLipSwish doubles the width
        layers.append(layer(a, b, kernels[i] if kernels is not None else 1))
    return layers


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

    ``[act ->] conv3x3 -> act -> conv1x1 -> ... -> act -> conv3x3``: the bottleneck branch of both
    papers, 3x3 convolutions at both ends and 1x1 between them (i-ResNet sec. 2.1 and app. C.3:
    ``3x3, 1x1, 3x3`` with ELU between them; Residual Flows app. E:
    ``LipSwish -> 3x3 -> LipSwish -> 1x1 -> LipSwish -> 3x3``). Every convolution comes from
    [`conv_layer`][iresnet.nn.branches.conv_layer], so ``Lip(g) <= coeff^(len + 1)``.

    Args:
        channels: input and output channels ``c``.
        hidden_channels: channels between the convolutions (``len + 1`` convolutions in all).
        kernel_sizes: one odd size per convolution; default ``3, 1, ..., 1, 3``.
        preact: an activation before the first convolution (both papers' code use it on every
            block but the first of a network).
        activation: ``"lipswish"``, ``"elu"``, ``"clipswish"``, ``"cpila"`` (with the last two
            the next convolution takes twice the channels) or a factory of modules.
        norm: the convolutions' norm, see [`linear_layer`][iresnet.nn.branches.linear_layer].
        coeff: the Lipschitz coefficient of every convolution.
        n_power_iterations: power-iteration steps per training forward of every convolution.

    Returns:
        An ``nn.Sequential``, ``(B, channels, H, W) -> (B, channels, H, W)``.

    Raises:
        ValueError: ``kernel_sizes`` of the wrong length, an unknown ``activation`` or
            ``norm``, or sizes that are not positive integers.

    References:
        - Behrmann et al., "Invertible Residual Networks", arXiv:1811.00995, sec. 2.
        - Chen et al., "Residual Flows for Invertible Generative Modeling", arXiv:1906.02735.

    Examples:
        >>> import torch
        >>> g = conv_branch(3, (8,), preact=True)
        >>> [type(m).__name__ for m in g]
        ['LipSwish', 'SpectralConv2d', 'LipSwish', 'SpectralConv2d']
        >>> g(torch.zeros(2, 3, 4, 4)).shape
        torch.Size([2, 3, 4, 4])
    """
    sizes = [channels, *hidden_channels, channels]
    kernels = _conv_kernels(len(sizes) - 1, kernel_sizes)
    layers = _chain(
        sizes,
        kernels,
        activation,
        lambda a, b, k: conv_layer(
            a, b, k, norm=norm, coeff=coeff, n_power_iterations=n_power_iterations
        ),
        names=("channels", "hidden_channels"),
        preact=preact,
    )
    return nn.Sequential(*layers)


def _conv_kernels(n: int, kernel_sizes: Sequence[int] | None) -> list[int]:
    """``n`` kernel sizes: the given ones, else ``3, 1, ..., 1, 3`` (i-ResNet's branch)."""
    kernels = list(kernel_sizes) if kernel_sizes is not None else [3, *([1] * (n - 2)), 3][-n:]
    if len(kernels) != n:
        raise ValueError(f"kernel_sizes needs {n} entries (one per convolution), got {kernels}")
    return kernels
