"""Conditional residual branches ``g(x, c)`` whose Lipschitz bound in ``x`` holds for every ``c``.

The branch is the chain of Lipschitz-constrained layers of an unconditional branch (its *x-path*:
spectral linear maps or convolutions with 1-Lipschitz activations), with a *context modulation*
after every hidden linear map: the pre-activation ``h`` becomes ``gain(c) * h + shift(c)``, per
feature (per channel on images), where ``shift(c)`` and ``gain(c)`` come from their own,
unconstrained network of the context. The shift does not depend on ``x``, and
``gain(c) = sigmoid(a(c))`` lies in ``(0, 1)``, so each modulation is, for a fixed ``c``, a
diagonal map of norm below 1 plus a constant: ``Lip_x(g(., c)) <= prod_i ||W_i||_2`` for every
``c``, the same bound as the x-path alone (i-ResNet sec. 2.1), and ``x + g(x, c)`` is invertible
in ``x`` for every context (i-ResNet Theorem 1). The context never touches the normalised weights.

For a given context the branch is an ordinary samplewise map of ``x``:
[`bind_context`][iresnet.nn.conditional.bind_context] turns it into a module ``x -> g(x, c)``
that the log-det estimators, the Jacobian and the fixed-point solver take unchanged.

References:
    - Behrmann et al., "Invertible Residual Networks", ICML 2019, arXiv:1811.00995.
    - Perez et al., "FiLM: Visual Reasoning with a General Conditioning Layer", AAAI 2018,
      arXiv:1709.07871 (feature-wise gain and shift from a context).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..checks import check_input
from ..errors import DataError
from .branches import Activation, _chain, _check_sizes, _conv_kernels, conv_layer, linear_layer
from .spectral import float64_forward

__all__ = [
    "BoundContext",
    "ConditionalBranch",
    "ContextModulation",
    "bind_context",
    "conditional_conv_branch",
    "conditional_mlp_branch",
]


class ContextModulation(nn.Module):
    """The slot of the x-path where the context enters: ``h -> gain * h + shift``.

    Holds no parameters: the gain and shift of each call come from the context network of the
    enclosing [`ConditionalBranch`][iresnet.nn.conditional.ConditionalBranch]. For every
    context, ``gain`` lies in ``(0, 1)`` (a sigmoid) and ``shift`` does not depend on ``h``, so
    the map is 1-Lipschitz in ``h``: its ``lipschitz_bound()`` is 1, certified for all contexts.

    Arguments:
        features: the number of features (channels) modulated.
        gain: whether a context-dependent gain is applied (else only the shift).

    Shapes:
        ``h``: ``(B, features, *spatial)``; ``shift``, ``gain``: ``(B, features)``.

    References:
        - Perez et al., "FiLM: Visual Reasoning with a General Conditioning Layer",
          arXiv:1709.07871.
    """

    lipschitz_method = "context"
    """How the certificate bounds it: by construction, for every context."""

    def __init__(self, features: int, gain: bool = True) -> None:
        super().__init__()
        self.features = int(features)
        self.gain = bool(gain)

    def forward(self, h: Tensor, shift: Tensor, gain: Tensor | None) -> Tensor:
        """``gain * h + shift``, broadcast over the spatial dimensions of ``h``."""
        view = (h.shape[0], self.features, *([1] * (h.dim() - 2)))
        out = h if gain is None else h * gain.reshape(view)
        return out + shift.reshape(view)

    def lipschitz_bound(self) -> float:
        """1: ``0 < gain < 1`` and a shift, for every context."""
        return 1.0

    def extra_repr(self) -> str:
        return f"features={self.features}, gain={self.gain}"


class ConditionalBranch(nn.Module):
    """A residual branch ``g(x, c)``: a Lipschitz-constrained x-path modulated by a context.

    ``x_path`` is an ``nn.Sequential`` of the x-side layers with
    [`ContextModulation`][iresnet.nn.conditional.ContextModulation] slots; ``context_net`` maps
    the context ``c`` to every slot's shift (and pre-sigmoid gain), in slot order. Only the
    x-path acts on ``x``, so ``Lip_x(g(., c)) <= lipschitz_bound_of(x_path)`` for every ``c``
    (the slots contribute 1); the certificate
    ([`layer_bounds`][iresnet.nn.lipschitz.layer_bounds]) lists the slots with method
    ``"context"``.

    Arguments:
        x_path: the x-side layers, with ``ContextModulation`` slots between them.
        context: the context size ``k``.
        context_features: hidden sizes of the context network (plain linear layers, SiLU).
        gain_init: the initial gain of every slot, in ``(0, 1)`` (the last layer of the
            context network starts at zero weights, so at first every context gets the same
            gain and a zero shift).

    Shapes:
        ``x``: ``(B, *event)``; ``c``: ``(B, k)``; ``g(x, c)``: the shape of ``x``.

    Raises:
        ValueError: no ``ContextModulation`` slot, ``context < 1`` or ``gain_init`` outside
            ``(0, 1)``.
        TypeError: from ``forward``, a context that is not a tensor.
        DataError: from ``forward``, a context of the wrong shape, dtype or device.

    References:
        - Perez et al., "FiLM: Visual Reasoning with a General Conditioning Layer",
          arXiv:1709.07871 (feature-wise gain and shift).
        - Behrmann et al., "Invertible Residual Networks", arXiv:1811.00995 (``Lip(g) < 1``).

    Examples:
        >>> g = conditional_mlp_branch(2, 3, (16,), coeff=0.9)
        >>> g(torch.zeros(5, 2), torch.randn(5, 3)).shape
        torch.Size([5, 2])
    """

    def __init__(
        self,
        x_path: nn.Sequential,
        context: int,
        context_features: Sequence[int] = (64,),
        *,
        gain_init: float = 0.95,
    ) -> None:
        super().__init__()
        slots = [m for m in x_path if isinstance(m, ContextModulation)]
        if not slots:
            raise ValueError("ConditionalBranch: the x-path has no ContextModulation slot")
        if isinstance(context, bool) or not isinstance(context, int) or context < 1:
            raise ValueError(f"context must be a positive integer, got {context!r}")
        _check_sizes("context_features", context_features)
        if not 0 < gain_init < 1:
            raise ValueError(f"gain_init must lie in (0, 1), got {gain_init}")
        self.x_path = x_path
        self.context = context
        self._sizes = [(m.features, m.gain) for m in slots]
        n_out = sum(f * (2 if gain else 1) for f, gain in self._sizes)
        sizes = [context, *context_features]
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [nn.Linear(a, b), nn.SiLU()]
        last = nn.Linear(sizes[-1], n_out)
        with torch.no_grad():
            last.weight.zero_()
            last.bias.zero_()
            offset = 0
            for f, gain in self._sizes:
                if gain:  # [shift | raw gain]: the gain starts at gain_init for every context
                    last.bias[offset + f : offset + 2 * f] = math.log(gain_init / (1 - gain_init))
                offset += f * (2 if gain else 1)
        self.context_net = nn.Sequential(*layers, last)

    def modulations(self, c: Tensor) -> list[tuple[Tensor, Tensor | None]]:
        """Every slot's ``(shift, gain)`` for the contexts ``c (B, k)``; gains in ``(0, 1)``."""
        check_input(c, "context", like=self.context_net, event_shape=(self.context,))
        if c.dim() != 2:
            raise DataError(
                f"ConditionalBranch: expected a context of shape (batch, {self.context}), "
                f"got {tuple(c.shape)}"
            )
        out = self.context_net(c)
        mods: list[tuple[Tensor, Tensor | None]] = []
        offset = 0
        for f, gain in self._sizes:
            shift = out[:, offset : offset + f]
            g = torch.sigmoid(out[:, offset + f : offset + 2 * f]) if gain else None
            mods.append((shift, g))
            offset += f * (2 if gain else 1)
        return mods

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        """``g(x, c)`` of the shape of ``x``."""
        return self._run(x, self.modulations(c), float64=False)

    def forward_float64(self, x: Tensor, c: Tensor | None = None) -> Tensor | None:
        """``g(x, c)`` evaluated in float64 along the x-path (the modulations computed in the
        module's dtype, then cast exactly); None without a context, or where an x-path layer
        is not known (see [`float64_forward`][iresnet.nn.spectral.float64_forward])."""
        if c is None:
            return None
        with torch.no_grad():
            mods = [(s.double(), None if g is None else g.double()) for s, g in self.modulations(c)]
        return self._run(x.double(), mods, float64=True)

    def _run(self, x: Tensor, mods: list[tuple[Tensor, Tensor | None]], float64: bool) -> Tensor:
        slot = iter(mods)
        h: Tensor | None = x
        for layer in self.x_path:
            if isinstance(layer, ContextModulation):
                shift, gain = next(slot)
                h = layer(h, shift, gain)
            elif float64:
                h = float64_forward(layer, h)
                if h is None:
                    return None  # type: ignore[return-value]
            else:
                h = layer(h)
        return h  # type: ignore[return-value]


class BoundContext(nn.Module):
    """A conditional branch at fixed contexts: the samplewise map ``x -> g(x, c)``.

    What the log-det estimators, the Jacobian and the fixed-point solver receive for a
    conditional block: ``g`` stays a submodule, so ``parameters()`` (the gradients of the
    log-det and the implicit gradient of the inverse) and the spectral layers (frozen during a
    solve) are those of the branch; ``c`` is held as given, so gradients reach it too.

    Arguments:
        g: the conditional branch.
        c: ``(B, k)``, one context per sample of the inputs it will see.
    """

    def __init__(self, g: ConditionalBranch, c: Tensor) -> None:
        super().__init__()
        self.g = g
        self.c = c

    def forward(self, x: Tensor) -> Tensor:
        """``g(x, c)``."""
        return self.g(x, self.c)

    def forward_float64(self, x: Tensor) -> Tensor | None:
        """``g(x, c)`` in float64 (see ``ConditionalBranch.forward_float64``)."""
        return self.g.forward_float64(x, self.c)

    @property
    def grad_inputs(self) -> tuple[Tensor, ...]:
        """The contexts: inputs besides ``x`` whose gradients the estimators and solvers must
        carry (the memory-efficient log-det and the implicit inverse gradient reach them)."""
        return (self.c,)


def bind_context(g: ConditionalBranch, c: Tensor) -> BoundContext:
    """``x -> g(x, c)`` as a module, for the estimators and solvers that take a map of ``x``.

    Args:
        g: the conditional branch.
        c: ``(B, k)``, the contexts of the batch.

    Returns:
        A [`BoundContext`][iresnet.nn.conditional.BoundContext].

    Examples:
        >>> g = conditional_mlp_branch(2, 1, (8,))
        >>> bind_context(g, torch.ones(4, 1))(torch.zeros(4, 2)).shape
        torch.Size([4, 2])
    """
    return BoundContext(g, c)


def conditional_mlp_branch(
    features: int,
    context: int,
    hidden_features: Sequence[int] = (64, 64),
    *,
    context_features: Sequence[int] = (64,),
    gain: bool = True,
    activation: Activation = "lipswish",
    norm: str = "spectral",
    coeff: float = 0.97,
    n_power_iterations: int = 1,
) -> ConditionalBranch:
    """The conditional MLP branch ``g(x, c): features -> hidden_features -> features``.

    The layers of [`mlp_branch`][iresnet.nn.branches.mlp_branch] with a
    [`ContextModulation`][iresnet.nn.conditional.ContextModulation] after every hidden linear
    map (before its activation), so ``Lip_x(g(., c)) <= coeff^(len(hidden_features) + 1)`` for
    every context ``c``.

    Args:
        features: input and output size.
        context: the context size ``k``.
        hidden_features: sizes of the hidden layers.
        context_features: hidden sizes of the context network.
        gain: a context-dependent gain in ``(0, 1)`` besides the shift.
        activation: ``"lipswish"``, ``"elu"`` or a factory of 1-Lipschitz modules.
        norm: the x-path layers' norm, see [`linear_layer`][iresnet.nn.branches.linear_layer].
        coeff: the Lipschitz coefficient of every x-path layer.
        n_power_iterations: power-iteration steps per training forward.

    Returns:
        A [`ConditionalBranch`][iresnet.nn.conditional.ConditionalBranch],
        ``(B, features), (B, k) -> (B, features)``.

    Raises:
        ValueError: an unknown ``activation`` or ``norm``, or sizes that are not positive
            integers.

    References:
        - Perez et al., "FiLM: Visual Reasoning with a General Conditioning Layer",
          arXiv:1709.07871 (feature-wise gain and shift).
        - Behrmann et al., "Invertible Residual Networks", arXiv:1811.00995 (``Lip(g) < 1``).

    Examples:
        >>> from iresnet.nn import lipschitz_bound_of
        >>> g = conditional_mlp_branch(2, 3, (16, 16), coeff=0.9)
        >>> lipschitz_bound_of(g.eval()) <= 0.9**3 + 1e-6  # for every context
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
        modulation=lambda width: ContextModulation(width, gain),
    )
    return ConditionalBranch(nn.Sequential(*layers), context, context_features)


def conditional_conv_branch(
    channels: int,
    context: int,
    hidden_channels: Sequence[int] = (32, 32),
    *,
    context_features: Sequence[int] = (64,),
    gain: bool = True,
    preact: bool = False,
    activation: Activation = "lipswish",
    norm: str = "spectral",
    coeff: float = 0.97,
    n_power_iterations: int = 1,
) -> ConditionalBranch:
    """The conditional convolutional branch ``g(x, c): (B, C, H, W), (B, k) -> (B, C, H, W)``.

    The convolutions of [`conv_branch`][iresnet.nn.branches.conv_branch] (``3x3, 1x1, ...,
    3x3``) with a per-channel [`ContextModulation`][iresnet.nn.conditional.ContextModulation]
    after every hidden convolution, so ``Lip_x(g(., c)) <= coeff^(len(hidden_channels) + 1)``
    for every context.

    Args:
        channels: input and output channels.
        context: the context size ``k``.
        hidden_channels: channels between the convolutions.
        context_features: hidden sizes of the context network.
        gain: a context-dependent gain in ``(0, 1)`` besides the shift.
        preact: an activation before the first convolution.
        activation: ``"lipswish"``, ``"elu"`` or a factory of 1-Lipschitz modules.
        norm: the convolutions' norm.
        coeff: the Lipschitz coefficient of every convolution.
        n_power_iterations: power-iteration steps per training forward.

    Returns:
        A [`ConditionalBranch`][iresnet.nn.conditional.ConditionalBranch].

    Raises:
        ValueError: an unknown ``activation`` or ``norm``, or sizes that are not positive
            integers.

    References:
        - Perez et al., "FiLM: Visual Reasoning with a General Conditioning Layer",
          arXiv:1709.07871 (feature-wise gain and shift).
        - Behrmann et al., "Invertible Residual Networks", arXiv:1811.00995 (``Lip(g) < 1``).

    Examples:
        >>> g = conditional_conv_branch(2, 3, (8,))
        >>> g(torch.zeros(4, 2, 5, 5), torch.randn(4, 3)).shape
        torch.Size([4, 2, 5, 5])
    """
    sizes = [channels, *hidden_channels, channels]
    layers = _chain(
        sizes,
        _conv_kernels(len(sizes) - 1, None),
        activation,
        lambda a, b, k: conv_layer(
            a, b, k, norm=norm, coeff=coeff, n_power_iterations=n_power_iterations
        ),
        names=("channels", "hidden_channels"),
        preact=preact,
        modulation=lambda width: ContextModulation(width, gain),
    )
    return ConditionalBranch(nn.Sequential(*layers), context, context_features)
