"""The transform contract and its one composition loop.

Every invertible piece of a flow or of an invertible network is a ``Transform``: an
``nn.Module`` with ``forward(x) -> (y, logdet)``, ``logdet = log|det dy/dx|`` of shape
``(batch,)``, and ``inverse(y) -> x`` (the convention of nflows and FrEIA: the forward direction
maps data to latent). Transforms whose inverse is solved numerically report what the solver did
through ``Transform.inverse_with_diagnostics``, from the call itself. A conditional transform
(``conditional = True``) takes a context ``c`` of shape ``(B, k)`` as the keyword ``c`` of all
three, and its guarantees hold for every context.

A flow's log-density follows by the change of variables ``log p(x) = log p_z(f(x)) +
log|det df/dx|`` (i-ResNet eq. (3); Residual Flows eq. (2)), with the log-dets of composed
transforms summed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import overload

import torch
from torch import Tensor, nn

from ..checks import check_tensor
from ..ops import InverseDiagnostics
from ..words import count

__all__ = ["Transform", "ComposedTransform", "InverseReport"]

Shape = tuple[int, ...]


@dataclass
class InverseReport(Sequence[InverseDiagnostics]):
    """What an inverse call did: every numerical solve's diagnostics, in data-to-latent order
    (the report is a sequence of them), and the certified reconstruction error of the call.

    Attributes:
        diagnostics: one [`InverseDiagnostics`][iresnet.ops.fixed_point.InverseDiagnostics] per
            fixed-point solve.
        error_bound: ``(B,)`` float64, a certified upper bound of ``||x - f^{-1}(y)||_2`` per
            sample for the returned ``x`` (in exact arithmetic): each solve's a-posteriori bound
            ``L/(1-L) ||G(x) - x||`` carried through the later inverses by their Lipschitz
            constants, ``e <- Lip(f_k^{-1}) e + e_k``. None where a solve has no certified
            ``L`` (training mode), ``inf`` through an inverse without a Lipschitz bound.
    """

    diagnostics: list[InverseDiagnostics] = field(default_factory=list)
    error_bound: Tensor | None = None

    @overload
    def __getitem__(self, index: int) -> InverseDiagnostics: ...

    @overload
    def __getitem__(self, index: slice) -> list[InverseDiagnostics]: ...

    def __getitem__(self, index: int | slice) -> InverseDiagnostics | list[InverseDiagnostics]:
        return self.diagnostics[index]

    def __len__(self) -> int:
        return len(self.diagnostics)

    @property
    def all_converged(self) -> bool:
        """Whether every solve met its tolerance for every sample."""
        return all(d.all_converged for d in self.diagnostics)

    def summary(self) -> str:
        """One line: solves, iterations, convergence and the certified error."""
        its = [int(d.iterations.max()) for d in self.diagnostics]
        text = (
            f"{count(len(self), 'solve')}, at most {count(max(its, default=0), 'iteration')}, "
            f"{'all converged' if self.all_converged else 'NOT all converged'}"
        )
        if self.error_bound is not None:
            text += f", certified reconstruction error <= {float(self.error_bound.max()):.2e}"
        return text


def _compose_error(lip: float, incoming: Tensor | None, own: Tensor | None) -> Tensor | None:
    """``Lip * incoming + own``, with ``0 * inf = 0`` (no error in, none carried)."""
    if incoming is None or own is None:
        return None
    carried = torch.where(incoming == 0, torch.zeros_like(incoming), lip * incoming)
    return carried + own.to(carried.device)


class Transform(nn.Module):
    """Base class of invertible maps ``y = f(x)`` with their log-determinant.

    Subclasses implement ``forward`` and ``inverse``, and ``forward_shape`` / ``inverse_shape``
    when they change the event shape; those whose inverse is solved numerically override
    ``inverse_with_diagnostics``. Inputs carry a leading batch dimension: ``x`` is
    ``(B, *event)``.

    Shapes:
        ``x``: ``(B, *event)``; ``y``: ``(B, *forward_shape(event))``; ``logdet``: ``(B,)``, in
        nats.

    Raises:
        NotImplementedError: ``forward`` or ``inverse`` of a subclass that does not implement
            it.

    References:
        - Behrmann et al., "Invertible Residual Networks", arXiv:1811.00995 (the change of
          variables the log-det serves).
        - Chen et al., "Residual Flows for Invertible Generative Modeling", arXiv:1906.02735.

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

    accepts_integers: bool = False
    """Whether integer inputs are welcome (they become floats inside, e.g. by dequantisation)."""

    accepts_any_float: bool = False
    """Whether floating inputs of any precision are welcome (converted to the module's dtype)."""

    conditional: bool = False
    """Whether the map depends on a context: then ``forward(x, c=c)``, ``inverse(y, c=c)`` and
    ``inverse_with_diagnostics(y, c=c)`` take the contexts ``c (B, k)``, one per sample."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x (B, *event) -> (y (B, *event'), logdet (B,))`` with ``logdet = log|det dy/dx|``."""
        raise NotImplementedError

    def inverse(self, y: Tensor) -> Tensor:
        """``y (B, *event') -> x (B, *event)``."""
        raise NotImplementedError

    def inverse_with_diagnostics(
        self, y: Tensor, c: Tensor | None = None
    ) -> tuple[Tensor, InverseReport]:
        """``inverse(y)`` (``inverse(y, c=c)`` for a conditional transform) and the report of
        the numerical solves it ran (in order).

        Returns:
            ``x`` and an [`InverseReport`][iresnet.transforms.base.InverseReport]: empty, with a
                zero error bound, for transforms with a closed-form inverse.
        """
        x = self.inverse(y) if c is None else self.inverse(y, c=c)  # type: ignore[call-arg]
        return x, InverseReport([], torch.zeros(y.shape[0], dtype=torch.float64, device=y.device))

    def inverse_lipschitz(self) -> float:
        """An upper bound of ``Lip(f^{-1})`` in the Euclidean norm of one sample (``inf`` where
        none is known); used to carry reconstruction errors through a composition."""
        return math.inf

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
    ``inverse`` applies the inverses in reverse order. The context ``c`` given to ``forward``,
    ``inverse`` or ``inverse_with_diagnostics`` goes to every conditional part (the others do not
    see it); the composition is conditional when one of its parts is.

    Arguments:
        *transforms: the transforms ``f_1, ..., f_n``, data side first.

    Shapes:
        ``x``: ``(B, *event)``; ``y``: ``(B, *forward_shape(event))``; ``logdet``: ``(B,)``.

    Raises:
        TypeError: an item that is not a [`Transform`][iresnet.transforms.base.Transform];
            an input to ``forward`` or ``inverse`` that is not a tensor.
        ValueError: in ``forward``, a part whose log-det is not of shape ``(B,)`` (a broken
            transform contract).

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

    @property
    def conditional(self) -> bool:  # type: ignore[override]
        return any(t.conditional for t in self)

    def forward(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_tensor(x, "ComposedTransform.forward")
        logdet: Tensor | None = None
        batch = x.shape[0]
        for t in self:
            x, ld = t(x, c=c) if t.conditional else t(x)
            if ld.shape != (batch,):
                raise ValueError(
                    f"{type(t).__name__} broke the transform contract: its log-det has shape "
                    f"{tuple(ld.shape)}, expected ({batch},), one value per sample"
                )
            logdet = ld if logdet is None else logdet + ld
        if logdet is None:  # no transforms: the identity
            logdet = torch.zeros(x.shape[0], dtype=_float(x), device=x.device)
        # Blocks with spectral convolutions work channels-last (``iresnet.nn.conv_layout``);
        # the chain hands back the default layout (``.view``, safetensors, NumPy want it).
        return x.contiguous(), logdet

    def inverse(self, y: Tensor, c: Tensor | None = None) -> Tensor:
        check_tensor(y, "ComposedTransform.inverse")
        for t in reversed(list(self)):
            y = t.inverse(y, c=c) if t.conditional else t.inverse(y)
        return y.contiguous()

    def inverse_with_diagnostics(
        self, y: Tensor, c: Tensor | None = None
    ) -> tuple[Tensor, InverseReport]:
        """Inverse in reverse order; the diagnostics listed in forward (data-to-latent) order
        and the certified error composed through every inverse."""
        check_tensor(y, "ComposedTransform.inverse_with_diagnostics")
        diagnostics: list[InverseDiagnostics] = []
        error: Tensor | None = torch.zeros(y.shape[0], dtype=torch.float64, device=y.device)
        for t in reversed(list(self)):
            if t.conditional:
                y, report = t.inverse_with_diagnostics(y, c=c)
            else:
                y, report = t.inverse_with_diagnostics(y)
            diagnostics[:0] = report.diagnostics
            if error is not None and report.error_bound is not None:  # (training: no bound)
                error = _compose_error(t.inverse_lipschitz(), error, report.error_bound)
            else:
                error = None
        return y.contiguous(), InverseReport(diagnostics, error)

    def inverse_lipschitz(self) -> float:
        """The product of the parts' bounds."""
        return math.prod(t.inverse_lipschitz() for t in self)

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
