"""Transforms that only move entries: squeeze, flatten and the multi-scale factor-out."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import InverseReport, Shape, Transform

__all__ = ["Squeeze", "Flatten", "OnActive", "InjectivePad"]


class Squeeze(Transform):
    """Invertible down-sampling (space-to-depth): ``(B, C, H, W) -> (B, C f^2, H/f, W/f)``.

    Real NVP's squeezing operation (sec. 3.6), also i-ResNet's invertible down-sampling between
    scales (app. C.3). A permutation of the entries, so ``logdet = 0``.

    Arguments:
        factor: ``f``; ``H`` and ``W`` must be divisible by it.

    Shapes:
        ``x``: ``(B, C, H, W)``; ``y``: ``(B, C f^2, H/f, W/f)``; ``logdet``: ``(B,)`` zeros.

    Raises:
        ValueError: ``factor < 1``; at call time, an input that is not 4-D or whose ``H``, ``W``
            are not divisible by ``f``.

    References:
        - Dinh et al., "Density estimation using Real NVP", ICLR 2017, arXiv:1605.08803,
          sec. 3.6.

    Examples:
        >>> import torch
        >>> y, logdet = Squeeze()(torch.zeros(1, 3, 4, 4))
        >>> y.shape, logdet.tolist()
        (torch.Size([1, 12, 2, 2]), [0.0])
    """

    def __init__(self, factor: int = 2) -> None:
        super().__init__()
        if factor < 1:
            raise ValueError(f"factor must be positive, got {factor}")
        self.factor = factor

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.dim() != 4 or x.shape[-1] % self.factor or x.shape[-2] % self.factor:
            raise ValueError(
                f"Squeeze(factor={self.factor}) needs (B, C, H, W) with H and W divisible by "
                f"{self.factor}, got shape {tuple(x.shape)}"
            )
        return F.pixel_unshuffle(x, self.factor), x.new_zeros(x.shape[0])

    def inverse(self, y: Tensor) -> Tensor:
        return F.pixel_shuffle(y, self.factor)

    def inverse_lipschitz(self) -> float:
        """1: a permutation of the entries."""
        return 1.0

    def forward_shape(self, shape: Shape) -> Shape:
        c, h, w = shape
        f = self.factor
        return (c * f * f, h // f, w // f)

    def inverse_shape(self, shape: Shape) -> Shape:
        c, h, w = shape
        f = self.factor
        return (c // (f * f), h * f, w * f)


class Flatten(Transform):
    """Reshape ``(B, *shape) -> (B, prod(shape))``: a relabelling of the entries, ``logdet = 0``.

    Multi-scale flows enter the flat *state* with it (see
    [`OnActive`][iresnet.transforms.reshape.OnActive]). The input is never checked against
    ``shape`` here; a wrong size fails in ``reshape``.

    Arguments:
        shape: the event shape of the input (restored by ``inverse``).

    Shapes:
        ``x``: ``(B, *shape)``; ``y``: ``(B, prod(shape))``; ``logdet``: ``(B,)`` zeros.
    """

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = tuple(int(s) for s in shape)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x.flatten(1), x.new_zeros(x.shape[0])

    def inverse(self, y: Tensor) -> Tensor:
        return y.reshape(y.shape[0], *self.shape)

    def inverse_lipschitz(self) -> float:
        """1: a relabelling of the entries."""
        return 1.0

    def forward_shape(self, shape: Shape) -> Shape:
        return (math.prod(shape),)

    def inverse_shape(self, shape: Shape) -> Shape:
        return self.shape

    def extra_repr(self) -> str:
        return f"shape={self.shape}"


class OnActive(Transform):
    """Apply ``inner`` to the *active* leading part of a flat multi-scale state.

    Multi-scale factor-out (Real NVP sec. 3.6, eq. (13)-(16); Residual Flows app. E) sends half
    of the channels straight to the latent after each scale. We keep one flat state
    ``s = [a | z_done]`` of shape ``(B, D)``: the first ``prod(in_shape)`` entries are the active
    tensor ``a`` (channel-major), the rest are latents already factored out. Because ``a`` is
    stored channel-major, factoring out its last channels is the identity on ``s``: only the
    boundary moves, so the next transform is wrapped with a smaller ``in_shape``. Then

        ``forward(s) = [inner(a) | z_done]``,  ``logdet = logdet_inner(a)``

    (the Jacobian is block-diagonal with an identity block), and ``inverse`` applies
    ``inner.inverse`` to the leading ``prod(out_shape)`` entries.

    Arguments:
        inner: a transform on ``(B, *in_shape)`` returning ``(B, *out_shape)``.
        in_shape: its input event shape.
        out_shape: its output event shape (of the same size; the shapes differ for
            [`Squeeze`][iresnet.transforms.reshape.Squeeze]).

    Shapes:
        ``s``: ``(B, D)`` with ``D >= prod(in_shape)``, in and out; ``logdet``: ``(B,)``.

    Raises:
        ValueError: ``in_shape`` and ``out_shape`` of different sizes.

    References:
        - Dinh et al., arXiv:1605.08803, sec. 3.6.
        - Chen et al., arXiv:1906.02735, app. E.

    Examples:
        >>> import torch
        >>> t = OnActive(Squeeze(), (1, 2, 2), (4, 1, 1))
        >>> s = torch.arange(6.0).reshape(1, 6)  # 4 active entries, 2 factored out
        >>> t(s)[0].tolist(), t.inverse(t(s)[0]).tolist()
        ([[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]], [[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]])
    """

    def __init__(
        self, inner: Transform, in_shape: tuple[int, ...], out_shape: tuple[int, ...]
    ) -> None:
        super().__init__()
        self.inner = inner
        self.in_shape = tuple(int(s) for s in in_shape)
        self.out_shape = tuple(int(s) for s in out_shape)
        if torch.Size(self.in_shape).numel() != torch.Size(self.out_shape).numel():
            raise ValueError(
                f"OnActive: in_shape {self.in_shape} and out_shape {self.out_shape} differ in size"
            )

    @property
    def conditional(self) -> bool:  # type: ignore[override]
        """Whether the inner transform takes a context (passed through as ``c=``)."""
        return self.inner.conditional

    def forward(self, s: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        n = torch.Size(self.in_shape).numel()
        a = s[:, :n].reshape(s.shape[0], *self.in_shape)
        y, logdet = self.inner(a, c=c) if self.conditional else self.inner(a)
        return torch.cat([y.flatten(1), s[:, n:]], dim=1), logdet

    def inverse(self, s: Tensor, c: Tensor | None = None) -> Tensor:
        return self.inverse_with_diagnostics(s, c=c)[0]

    def inverse_with_diagnostics(
        self, s: Tensor, c: Tensor | None = None
    ) -> tuple[Tensor, InverseReport]:
        n = math.prod(self.out_shape)
        a = s[:, :n].reshape(s.shape[0], *self.out_shape)
        if self.conditional:
            x, report = self.inner.inverse_with_diagnostics(a, c=c)
        else:
            x, report = self.inner.inverse_with_diagnostics(a)
        return torch.cat([x.flatten(1), s[:, n:]], dim=1), report

    def inverse_lipschitz(self) -> float:
        """The inner inverse's bound, at least 1 (the latents already factored out pass)."""
        return max(1.0, self.inner.inverse_lipschitz())

    def extra_repr(self) -> str:
        return f"in_shape={self.in_shape}, out_shape={self.out_shape}"


class InjectivePad(Transform):
    """Zero-padding of channels ``(B, C, H, W) -> (B, P, H, W)``, ``y = [x, 0]``.

    Injective, not onto: the injective padding of i-RevNet, at the entry of the invertible
    classifiers (i-ResNet's classification experiments, sec. 5.1). ``inverse`` keeps the first
    ``C`` channels, the exact left inverse on the image of the map. The embedding is an isometry
    (``J^T J = I``), so its volume term ``log sqrt det(J^T J)`` is 0; it carries no density on
    the padded space (``bijective = False``).

    Arguments:
        in_channels: ``C``.
        out_channels: ``P >= C``.

    Shapes:
        ``x``: ``(B, C, H, W)``; ``y``: ``(B, P, H, W)``; ``logdet``: ``(B,)`` zeros.

    Raises:
        ValueError: ``out_channels < in_channels``.

    References:
        - Jacobsen et al., "i-RevNet: Deep Invertible Networks", ICLR 2018, arXiv:1802.07088.

    Examples:
        >>> import torch
        >>> pad = InjectivePad(1, 3)
        >>> y, _ = pad(torch.ones(2, 1, 2, 2))
        >>> y.shape, bool(torch.equal(pad.inverse(y), torch.ones(2, 1, 2, 2)))
        (torch.Size([2, 3, 2, 2]), True)
    """

    bijective = False

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(f"cannot pad {in_channels} channels down to {out_channels}")
        self.in_channels, self.out_channels = in_channels, out_channels

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        extra = self.out_channels - self.in_channels
        if extra > 0:
            x = torch.cat([x, x.new_zeros(x.shape[0], extra, *x.shape[2:])], dim=1)
        return x, x.new_zeros(x.shape[0])

    def inverse(self, y: Tensor) -> Tensor:
        return y[:, : self.in_channels]

    def inverse_lipschitz(self) -> float:
        """1: dropping channels is a projection."""
        return 1.0

    def forward_shape(self, shape: Shape) -> Shape:
        return (self.out_channels, *shape[1:])

    def inverse_shape(self, shape: Shape) -> Shape:
        return (self.in_channels, *shape[1:])

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, out_channels={self.out_channels}"
