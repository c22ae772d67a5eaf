"""Transforms that only move entries: squeeze, flatten and the multi-scale factor-out."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..ops import InverseDiagnostics
from .base import Shape, Transform

__all__ = ["Squeeze", "Flatten", "OnActive", "InjectivePad"]


class Squeeze(Transform):
    """Invertible down-sampling (space-to-depth): ``(B, C, H, W) -> (B, C f^2, H/f, W/f)``.

    A permutation of the entries, so ``logdet = 0`` (Real NVP, arXiv:1605.08803, sec. 3.6;
    i-ResNet, arXiv:1811.00995, sec. 5).
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

    def forward_shape(self, shape: Shape) -> Shape:
        c, h, w = shape
        f = self.factor
        return (c * f * f, h // f, w // f)

    def inverse_shape(self, shape: Shape) -> Shape:
        c, h, w = shape
        f = self.factor
        return (c // (f * f), h * f, w * f)


class Flatten(Transform):
    """Reshape ``(B, *shape) -> (B, prod(shape))``: a permutation-free relabelling, ``logdet = 0``.

    Multi-scale flows enter the flat *state* with it (see :class:`OnActive`).
    The batch is never checked against ``shape`` here; a wrong size fails in ``reshape``.

    Arguments:
        shape: the event shape of the input (restored by :meth:`inverse`).
    """

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = tuple(int(s) for s in shape)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x.flatten(1), x.new_zeros(x.shape[0])

    def inverse(self, y: Tensor) -> Tensor:
        return y.reshape(y.shape[0], *self.shape)

    def forward_shape(self, shape: Shape) -> Shape:
        return (math.prod(shape),)

    def inverse_shape(self, shape: Shape) -> Shape:
        return self.shape

    def extra_repr(self) -> str:
        return f"shape={self.shape}"


class OnActive(Transform):
    """Apply ``inner`` to the *active* leading part of a flat multi-scale state.

    Multi-scale factor-out (Real NVP, arXiv:1605.08803, sec. 3.6; i-ResNet sec. 5; Residual
    Flows app. E) sends half
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
        in_shape, out_shape: its event shapes (equal sizes; they differ for :class:`Squeeze`).

    Shapes: ``s``: ``(B, D)`` with ``D >= prod(in_shape)``; ``logdet``: ``(B,)``.
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

    def forward(self, s: Tensor) -> tuple[Tensor, Tensor]:
        n = torch.Size(self.in_shape).numel()
        y, logdet = self.inner(s[:, :n].reshape(s.shape[0], *self.in_shape))
        return torch.cat([y.flatten(1), s[:, n:]], dim=1), logdet

    def inverse(self, s: Tensor) -> Tensor:
        return self.inverse_with_diagnostics(s)[0]

    def inverse_with_diagnostics(self, s: Tensor) -> tuple[Tensor, list[InverseDiagnostics]]:
        n = math.prod(self.out_shape)
        x, diagnostics = self.inner.inverse_with_diagnostics(
            s[:, :n].reshape(s.shape[0], *self.out_shape)
        )
        return torch.cat([x.flatten(1), s[:, n:]], dim=1), diagnostics

    def extra_repr(self) -> str:
        return f"in_shape={self.in_shape}, out_shape={self.out_shape}"


class InjectivePad(Transform):
    """Zero-padding of channels ``(B, C, H, W) -> (B, P, H, W)``, ``y = [x, 0]``.

    Injective, not onto (i-ResNet, arXiv:1811.00995, sec. 4, as in i-RevNet): :meth:`inverse`
    keeps the first ``C`` channels, the exact left inverse on the image of the map. The
    embedding is an isometry (``J^T J = I``), so its volume term ``log sqrt det(J^T J)`` is 0;
    it carries no density on the padded space.

    Arguments:
        in_channels: ``C``; out_channels: ``P >= C``.

    Raises:
        ValueError: ``out_channels < in_channels``.
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

    def forward_shape(self, shape: Shape) -> Shape:
        return (self.out_channels, *shape[1:])

    def inverse_shape(self, shape: Shape) -> Shape:
        return (self.in_channels, *shape[1:])

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, out_channels={self.out_channels}"
