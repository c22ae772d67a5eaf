"""The transform contract and its one composition loop.

Every invertible piece of a flow or of an invertible network is a ``Transform``: an
``nn.Module`` with ``forward(x) -> (y, logdet)``, ``logdet = log|det dy/dx|`` of shape
``(batch,)``, and ``inverse(y) -> x`` (the convention of nflows and FrEIA: the forward direction
maps data to latent). Transforms whose inverse is solved numerically report what the solver did
through ``Transform.inverse_with_diagnostics``, from the call itself.

A flow's log-density follows by the change of variables ``log p(x) = log p_z(f(x)) +
log|det df/dx|`` (i-ResNet eq. (3); Residual Flows eq. (2)), with the log-dets of composed
transforms summed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import overload

import torch
from torch import Tensor, nn

from ..ops import InverseDiagnostics

__all__ = ["Transform", "ComposedTransform"]

Shape = tuple[int, ...]


class Transform(nn.Module):
    """Base class of invertible maps ``y = f(x)`` with their log-determinant.

    Subclasses implement ``forward`` and ``inverse``, and ``forward_shape`` / ``inverse_shape``
    when they change the event shape; those whose inverse is solved numerically override
    ``inverse_with_diagnostics``. Inputs carry a leading batch dimension: ``x`` is
    ``(B, *event)``.

    Shapes:
        ``x``: ``(B, *event)``; ``y``: ``(B, *forward_shape(event))``; ``logdet``: ``(B,)``, in
        nats.

    Examples:
        >>> import math, torch
        >>> class Double(Transform):
        ...     def forward(self, x):
        ...         return 2 * x, x.new_full((x.shape[0],), x[0].numel() * math.log(2))
        ...     def inverse(self, y):
        ...         return y / 2
        >>> y, logdet = Double()(torch.ones(3, 2))
        >>> Double().inverse(y).tolist(), [round(v, 4) for v in logdet.tolist()]
        ([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]], [1.3863, 1.3863, 1.3863])
    """

    bijective: bool = True
    """``False`` for maps that are injective but not onto (zero-padding): ``inverse`` is then a
    left inverse and ``logdet`` the volume term ``log sqrt det(J^T J)`` of the embedding."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x (B, *event) -> (y (B, *event'), logdet (B,))`` with ``logdet = log|det dy/dx|``."""
        raise NotImplementedError

    def inverse(self, y: Tensor) -> Tensor:
        """``y (B, *event') -> x (B, *event)``."""
        raise NotImplementedError

    def inverse_with_diagnostics(self, y: Tensor) -> tuple[Tensor, list[InverseDiagnostics]]:
        """``inverse(y)`` and the diagnostics of any numerical solve it ran (in order).

        Returns:
            ``x`` and a list of
                [`InverseDiagnostics`][iresnet.ops.fixed_point.InverseDiagnostics] (empty for
                transforms with a closed-form inverse).
        """
        return self.inverse(y), []

    def forward_shape(self, shape: Shape) -> Shape:
        """The event shape of ``y`` for an input event shape ``shape``."""
        return tuple(shape)

    def inverse_shape(self, shape: Shape) -> Shape:
        """The event shape of ``x`` for an output event shape ``shape``."""
        return tuple(shape)


class ComposedTransform(Transform):
    """``f = f_n o ... o f_1``: the transforms applied in order, their log-dets summed.

    The one loop over transforms that every flow and the classifiers' invertible trunks use.
    Indexing gives a transform; slicing gives a ``ComposedTransform`` of the same modules.
    ``inverse`` applies the inverses in reverse order.

    Arguments:
        *transforms: the transforms ``f_1, ..., f_n``, data side first.

    Shapes:
        ``x``: ``(B, *event)``; ``y``: ``(B, *forward_shape(event))``; ``logdet``: ``(B,)``.

    Raises:
        TypeError: an item that is not a [`Transform`][iresnet.transforms.base.Transform].

    Examples:
        >>> import torch, iresnet
        >>> f = ComposedTransform(iresnet.ActNorm(3), iresnet.ActNorm(3))
        >>> y, logdet = f(torch.randn(4, 3))
        >>> tuple(logdet.shape), len(f), type(f[1:]).__name__
        ((4,), 2, 'ComposedTransform')
    """

    def __init__(self, *transforms: Transform) -> None:
        super().__init__()
        for i, t in enumerate(transforms):
            if not isinstance(t, Transform):
                raise TypeError(
                    f"ComposedTransform takes Transform modules; item {i} is "
                    f"{type(t).__name__} (wrap it in a Transform with forward(x) -> (y, logdet) "
                    "and inverse(y))"
                )
            self.add_module(str(i), t)

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Transform]:
        return iter(self._modules.values())  # type: ignore[arg-type]

    @overload
    def __getitem__(self, index: int) -> Transform: ...

    @overload
    def __getitem__(self, index: slice) -> ComposedTransform: ...

    def __getitem__(self, index: int | slice) -> Transform | ComposedTransform:
        items = list(self)
        if isinstance(index, slice):
            return ComposedTransform(*items[index])
        return items[index]

    @property
    def bijective(self) -> bool:  # type: ignore[override]
        return all(t.bijective for t in self)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        logdet = torch.zeros(x.shape[0], dtype=_float(x), device=x.device)
        for t in self:
            x, ld = t(x)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, y: Tensor) -> Tensor:
        for t in reversed(list(self)):
            y = t.inverse(y)
        return y

    def inverse_with_diagnostics(self, y: Tensor) -> tuple[Tensor, list[InverseDiagnostics]]:
        """Inverse in reverse order; the diagnostics listed in forward (data-to-latent) order."""
        diagnostics: list[InverseDiagnostics] = []
        for t in reversed(list(self)):
            y, d = t.inverse_with_diagnostics(y)
            diagnostics[:0] = d
        return y, diagnostics

    def forward_shape(self, shape: Shape) -> Shape:
        for t in self:
            shape = t.forward_shape(shape)
        return tuple(shape)

    def inverse_shape(self, shape: Shape) -> Shape:
        for t in reversed(list(self)):
            shape = t.inverse_shape(shape)
        return tuple(shape)


def _float(x: Tensor) -> torch.dtype:
    return x.dtype if x.is_floating_point() else torch.get_default_dtype()
