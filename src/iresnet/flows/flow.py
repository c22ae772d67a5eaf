"""Normalising flows: a transform over a base distribution, seen as a torch Distribution.

``Flow`` maps data ``x`` to a latent ``z = f(x)`` through its transform, so by the change of
variables (i-ResNet eq. (3); Residual Flows eq. (2))

    log p(x) = log p_base(f(x)) + log|det J_f(x)|

in nats, and it samples by inverting the transform on draws of the base. As in zuko, calling
the module returns the distribution: ``flow().log_prob(x)``, ``flow().sample((n,))``.

References:
    - Behrmann et al., "Invertible Residual Networks", ICML 2019, arXiv:1811.00995.
    - Chen et al., "Residual Flows for Invertible Generative Modeling", NeurIPS 2019,
      arXiv:1906.02735.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.distributions import (
    Distribution,
    Independent,
    LowRankMultivariateNormal,
    MultivariateNormal,
    Normal,
    constraints,
)

from ..checks import check_finite, check_input
from ..errors import DataError
from ..transforms import (
    ActNorm,
    ComposedTransform,
    InvertibleResidualBlock,
    Standardize,
    Transform,
)
from ..transforms.base import InverseReport

__all__ = ["Flow", "FlowDistribution", "StandardNormal"]


class StandardNormal(nn.Module):
    """The base distribution ``N(0, I)`` on events of ``shape``, as a module.

    Its mean and scale are buffers, so it follows ``.to(device)`` and ``.double()`` and is saved
    in the ``state_dict``. Calling it returns the ``torch.distributions`` object.

    Arguments:
        shape: the event shape.

    Examples:
        >>> StandardNormal((2,))().log_prob(torch.zeros(2))
        tensor(-1.8379)
    """

    def __init__(self, shape: Sequence[int]) -> None:
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        self.register_buffer("loc", torch.zeros(self.shape))
        self.register_buffer("scale", torch.ones(self.shape))

    def forward(self) -> Distribution:
        """``Independent(Normal(0, 1), len(shape))`` on this module's device and dtype."""
        normal = Normal(self.loc, self.scale, validate_args=False)
        return Independent(normal, len(self.shape), validate_args=False)

    def extra_repr(self) -> str:
        return f"shape={self.shape}"


class FlowDistribution(Distribution):
    """The density ``p(x)`` of ``x = f^{-1}(z)``, ``z ~ base``, as a torch ``Distribution``.

    ``log_prob`` runs the transform forward; ``rsample`` inverts it (the fixed-point inverses
    carry implicit gradients, so samples are differentiable in the parameters);
    ``rsample_and_log_prob`` returns both. Obtained by calling a [`Flow`][iresnet.flows.flow.Flow].

    Arguments:
        transform: the map ``f`` from data to latent.
        base: the latent distribution.
        event_shape: the shape of one data point.
        validate: check ``log_prob`` inputs for NaN/Inf (the shape is always checked).

    Examples:
        >>> import iresnet
        >>> flow = iresnet.ResidualFlow(2, transforms=1, hidden_features=(8,)).eval()
        >>> d = flow()
        >>> x, log_p = d.rsample_and_log_prob((3,))
        >>> x.shape, log_p.shape, d.log_prob(torch.zeros(5, 4, 2)).shape
        (torch.Size([3, 2]), torch.Size([3]), torch.Size([5, 4]))
    """

    arg_constraints: dict = {}
    support = constraints.real
    has_rsample = True

    def __init__(
        self,
        transform: Transform,
        base: Distribution,
        event_shape: Sequence[int],
        validate: bool = True,
    ) -> None:
        self.transform = transform
        self.base = base
        self.validate = validate
        super().__init__(torch.Size(), torch.Size(event_shape), validate_args=False)

    def _flat(self, value: Tensor, where: str) -> tuple[Tensor, torch.Size]:
        first = self.transform[0] if isinstance(self.transform, ComposedTransform) else None
        check_input(
            value,
            where,
            like=self.transform,
            event_shape=self.event_shape,
            integers=bool(first is not None and first.accepts_integers),
            any_float=bool(first is not None and first.accepts_any_float),
        )
        n = len(self.event_shape)
        sample_shape = value.shape[: value.dim() - n]
        return value.reshape(-1, *self.event_shape), sample_shape

    def log_prob(self, value: Tensor) -> Tensor:
        """``log p(x)`` in nats, shape ``value.shape[:-len(event_shape)]``.

        Args:
            value: ``(*sample_shape, *event_shape)``.

        Raises:
            DataError: a wrong trailing shape, dtype or device, or NaN/Inf (with ``validate``);
                the message says how to fix it.
        """
        flat, sample_shape = self._flat(value, "log_prob")
        if self.validate:
            check_finite(flat, "log_prob")
        z, logdet = self.transform(flat)
        return (self.base.log_prob(z) + logdet).reshape(sample_shape)

    def rsample(self, sample_shape: Sequence[int] = ()) -> Tensor:
        """``x = f^{-1}(z)``, ``z ~ base``, shape ``(*sample_shape, *event_shape)``.

        Gradients reach the parameters through the inverses' implicit differentiation.
        """
        shape = torch.Size((sample_shape,) if isinstance(sample_shape, int) else sample_shape)
        z = self.base.rsample((shape.numel(),))
        if shape.numel() == 0:  # nothing to invert
            return z.new_zeros(*shape, *self.event_shape)
        x = self.transform.inverse(z)
        return x.reshape(*shape, *self.event_shape)

    def sample(self, sample_shape: Sequence[int] = ()) -> Tensor:
        """``rsample`` without a gradient, shape ``(*sample_shape, *event_shape)``."""
        with torch.no_grad():
            return self.rsample(sample_shape)

    def rsample_and_log_prob(self, sample_shape: Sequence[int] = ()) -> tuple[Tensor, Tensor]:
        """Samples and their log-densities: ``(x, log p(x))``; the density of the samples is
        evaluated by a forward pass through the transform."""
        x = self.rsample(sample_shape)
        return x, self.log_prob(x)


def _event_shape_of(transform: ComposedTransform) -> tuple[int, ...]:
    """The event shape the first layers fix: a ``Standardize``'s length, or the input size of
    a linear layer at the start of a residual branch (through shape-keeping ActNorms)."""
    for t in transform:
        if isinstance(t, Standardize):
            return (int(t.mean.numel()),)
        if isinstance(t, InvertibleResidualBlock):
            first = next(iter(t.g.children()), t.g) if isinstance(t.g, nn.Sequential) else t.g
            if isinstance(first, nn.Linear):
                return (first.in_features,)
        if not isinstance(t, ActNorm):
            break
    raise ValueError(
        "Flow: the event shape cannot be learned from the first layers (a convolution fixes no "
        "spatial size); pass event_shape=(...), the shape of one data point"
    )


class Flow(nn.Module):
    """A normalising flow: the transform ``f`` from data to latent, and the base distribution.

    Calling the flow returns its ``FlowDistribution`` (zuko's interface): ``flow()``;
    ``flow.log_prob(x)`` and ``flow.sample(n)`` are shortcuts. The transform stays reachable as
    ``flow.transform`` for inverses, certificates and diagnostics.

    Arguments:
        transforms: transforms applied in order from data to latent (or one transform).
        event_shape: the shape of one data point; None to learn it from the first layer that
            fixes it (a linear layer at the start of a residual branch, a ``Standardize``), else
            ``ValueError``. Every call is checked against it.
        base: a module returning the latent distribution when called; default
            [`StandardNormal`][iresnet.flows.flow.StandardNormal] of the latent shape
            (``transform.forward_shape``).
        validate: check inputs of ``log_prob`` for NaN/Inf (their shape is always checked) and
            of ``inverse`` for shape and NaN/Inf; one host synchronisation per call.

    Shapes:
        ``x``: ``(B, *event_shape)``; ``z``: ``(B, *latent_shape)``; log-densities ``(B,)``, in
        nats.

    Raises:
        TypeError: an item of ``transforms`` that is not a
            [`Transform`][iresnet.transforms.base.Transform].
        ValueError: no ``event_shape`` and none can be learned from the first layers.

    Examples:
        >>> import torch, iresnet
        >>> g = iresnet.nn.mlp_branch(2, (8,), coeff=0.9)
        >>> block = iresnet.InvertibleResidualBlock(g, logdet=iresnet.ExactLogDet())
        >>> flow = iresnet.Flow([block], event_shape=(2,)).eval()
        >>> flow().log_prob(torch.zeros(3, 2)).shape
        torch.Size([3])
        >>> flow.sample(4).shape
        torch.Size([4, 2])
    """

    def __init__(
        self,
        transforms: Sequence[Transform] | Transform,
        event_shape: Sequence[int] | None = None,
        base: nn.Module | None = None,
        validate: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(transforms, ComposedTransform):
            self.transform = transforms
        elif isinstance(transforms, Transform):
            self.transform = ComposedTransform(transforms)
        else:
            self.transform = ComposedTransform(*transforms)
        if event_shape is None:
            event_shape = _event_shape_of(self.transform)
        self.event_shape = torch.Size(int(s) for s in event_shape)
        self.latent_shape = torch.Size(self.transform.forward_shape(tuple(self.event_shape)))
        self.base = base if base is not None else StandardNormal(self.latent_shape)
        self.validate = validate

    def forward(self) -> FlowDistribution:
        """The distribution of the data under this flow, a
        [`FlowDistribution`][iresnet.flows.flow.FlowDistribution]."""
        return FlowDistribution(self.transform, self.base(), self.event_shape, self.validate)

    def log_prob(self, x: Tensor) -> Tensor:
        """``log p(x)`` in nats, shape ``(B,)`` for ``x`` of shape ``(B, *event_shape)``.

        Raises:
            ValueError: a wrong shape, or NaN/Inf (with ``validate``).
        """
        return self().log_prob(x)

    def sample(self, n: int, temperature: float = 1.0) -> Tensor:
        """``n`` samples ``x = f^{-1}(z)``, ``z ~ base`` with its spread scaled by
        ``temperature``; shape ``(n, *event_shape)``, no gradient.

        Raises:
            ValueError: ``n < 1``, or ``temperature != 1`` with a base that is not a normal
                distribution.
        """
        with torch.no_grad():
            return self.transform.inverse(self.sample_latent(n, temperature))

    def sample_latent(self, n: int, temperature: float = 1.0) -> Tensor:
        """``n`` draws of the base, scaled about its mean by ``temperature`` (Gaussian bases).

        Returns:
            ``(n, *latent_shape)``.

        Raises:
            ValueError: ``n`` not a positive integer, a temperature that is not a finite
                positive number, or ``temperature != 1`` with a base that is not a normal
                distribution.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"sample: n must be a positive integer, got {n!r}")
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature)) or (
            temperature <= 0
        ):
            raise ValueError(
                f"sample: temperature must be a finite positive number, got {temperature!r}"
            )
        base = self.base()
        if temperature != 1.0:
            inner = base.base_dist if isinstance(base, Independent) else base
            if not isinstance(inner, (Normal, MultivariateNormal, LowRankMultivariateNormal)):
                raise ValueError(
                    f"temperature={temperature} needs a Gaussian base distribution, got "
                    f"{type(inner).__name__}; sample at temperature 1"
                )
            z = base.sample((n,))
            return base.mean + temperature * (z - base.mean)
        return base.sample((n,))

    def inverse(self, z: Tensor) -> Tensor:
        """``x = f^{-1}(z)`` for ``z`` of shape ``(B, *latent_shape)``.

        Raises:
            ValueError: a wrong shape or NaN/Inf (with ``validate``).
        """
        return self.inverse_with_diagnostics(z)[0]

    def inverse_with_diagnostics(self, z: Tensor) -> tuple[Tensor, InverseReport]:
        """``inverse(z)`` and the report of every block's solve, data side first.

        Returns:
            ``x`` of shape ``(B, *event_shape)`` and an
                [`InverseReport`][iresnet.transforms.base.InverseReport]: a sequence of
                [`InverseDiagnostics`][iresnet.ops.fixed_point.InverseDiagnostics], one per
                residual block, and the certified reconstruction error per sample.

        Raises:
            ValueError: a wrong shape or NaN/Inf (with ``validate``).
        """
        if z.dim() != len(self.latent_shape) + 1 or z.shape[1:] != self.latent_shape:
            shape = ", ".join(map(str, self.latent_shape))
            raise DataError(
                f"inverse: expected a latent of shape (batch, {shape}), got {tuple(z.shape)}"
            )
        check_input(z, "inverse", like=self.transform)
        if self.validate:
            check_finite(z, "inverse")
        return self.transform.inverse_with_diagnostics(z)
