"""Normalising flows: a transform over a base distribution, seen as a torch Distribution.

``Flow`` maps data ``x`` to a latent ``z = f(x)`` through its transform, so by the change of
variables (i-ResNet eq. (3); Residual Flows eq. (2))

    log p(x) = log p_base(f(x)) + log|det J_f(x)|

in nats, and it samples by inverting the transform on draws of the base. As in zuko, calling
the module returns the distribution: ``flow().log_prob(x)``, ``flow().sample((n,))``; a
conditional flow (``context=k``) returns the distribution of ``x`` given the context:
``flow(c).log_prob(x)``, ``flow(c).rsample((n,))``.

References:
    - Behrmann et al., "Invertible Residual Networks", ICML 2019, arXiv:1811.00995.
    - Chen et al., "Residual Flows for Invertible Generative Modeling", NeurIPS 2019,
      arXiv:1906.02735.
"""

from __future__ import annotations

import math
import operator
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

__all__ = ["ContextStandardize", "DiagonalNormal", "Flow", "FlowDistribution", "StandardNormal"]


def _event_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """``shape`` as a tuple of positive ints, or a ``ValueError`` that says what was given."""
    try:
        dims = tuple(operator.index(n) for n in shape if not isinstance(n, bool))
    except TypeError:
        dims = ()
    if not dims or len(dims) != len(shape) or min(dims) < 1:
        raise ValueError(
            "a base distribution needs an event shape of positive ints, e.g. (2,) or "
            f"(1, 28, 28); got {shape!r}"
        )
    return dims


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
        self.shape = _event_shape(shape)
        self.register_buffer("loc", torch.zeros(self.shape))
        self.register_buffer("scale", torch.ones(self.shape))

    def forward(self) -> Distribution:
        """``Independent(Normal(0, 1), len(shape))`` on this module's device and dtype."""
        normal = Normal(self.loc, self.scale, validate_args=False)
        return Independent(normal, len(self.shape), validate_args=False)

    def extra_repr(self) -> str:
        return f"shape={self.shape}"


class DiagonalNormal(nn.Module):
    """A learned diagonal Gaussian base ``N(mu, diag(sigma^2))`` on events of ``shape``: one
    mean and one log-scale per latent dimension, both starting at ``N(0, I)``.

    Glow's learned prior (Kingma & Dhariwal 2018, arXiv:1807.03039; the ``learntop`` option of
    its code, and normflows' ``GlowBase``): for images it learns, per pixel and channel, where
    the latent sits and how wide it is, which a per-channel ActNorm cannot. The log-density
    stays exact; it adds ``2 * prod(shape)`` parameters.

    Arguments:
        shape: the event shape.

    Examples:
        >>> base = DiagonalNormal((2,))
        >>> base().log_prob(torch.zeros(2))
        tensor(-1.8379, grad_fn=<SumBackward1>)
        >>> sum(p.numel() for p in base.parameters())
        4
    """

    def __init__(self, shape: Sequence[int]) -> None:
        super().__init__()
        self.shape = _event_shape(shape)
        self.loc = nn.Parameter(torch.zeros(self.shape))
        self.log_scale = nn.Parameter(torch.zeros(self.shape))

    def forward(self) -> Distribution:
        """``Independent(Normal(loc, exp(log_scale)), len(shape))``."""
        normal = Normal(self.loc, self.log_scale.exp(), validate_args=False)
        return Independent(normal, len(self.shape), validate_args=False)

    def extra_repr(self) -> str:
        return f"shape={self.shape}"


class ContextStandardize(nn.Module):
    """``c -> (c - mean) / std`` for contexts ``(..., k)``, with fixed buffers (saved, moved
    with the flow); contexts enter a conditional flow in their own units.

    Arguments:
        mean: ``k`` values.
        std: ``k`` positive values.

    Raises:
        ValueError: lengths that differ, or a ``std`` that is not positive and finite.

    Examples:
        >>> ContextStandardize([1.0], [2.0])(torch.tensor([[3.0]])).tolist()
        [[1.0]]
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        m = torch.as_tensor(mean, dtype=torch.get_default_dtype()).reshape(-1)
        sd = torch.as_tensor(std, dtype=torch.get_default_dtype()).reshape(-1)
        if m.shape != sd.shape or not bool(torch.isfinite(sd).all() and (sd > 0).all()):
            raise ValueError("context_standardize needs (mean, std) of one length, std > 0")
        self.register_buffer("mean", m)
        self.register_buffer("std", sd)

    def forward(self, c: Tensor) -> Tensor:
        """``(c - mean) / std``, same shape."""
        return (c - self.mean) / self.std


class FlowDistribution(Distribution):
    """The density ``p(x)`` of ``x = f^{-1}(z)``, ``z ~ base``, as a torch ``Distribution``.

    ``log_prob`` runs the transform forward; ``rsample`` inverts it (the fixed-point inverses
    carry implicit gradients, ``dx*/dtheta`` through ``(I + J_g)^{-1}``, so samples are
    differentiable in the parameters and the context); ``rsample_and_log_prob`` returns both.
    Obtained by calling a [`Flow`][iresnet.flows.flow.Flow].

    Given contexts ``c`` of shape ``(*batch, k)``, the distribution has ``batch_shape = batch``
    (zuko's convention): ``log_prob(x)`` takes ``x`` of shape ``(*sample, *batch, *event)``
    (broadcast against ``batch``), and ``rsample(sample_shape)`` returns
    ``(*sample_shape, *batch, *event)``.

    Arguments:
        transform: the map ``f`` from data to latent.
        base: the latent distribution.
        event_shape: the shape of one data point.
        validate: check ``log_prob`` inputs (and contexts) for NaN/Inf (the shape is always
            checked).
        context: the contexts ``c``, ``(*batch, k)``, for a conditional transform; None else.

    Shapes:
        ``log_prob``: ``(*sample, *batch, *event) -> (*sample, *batch)``, in nats;
        ``rsample(sample_shape)``: ``(*sample_shape, *batch, *event)``.

    Raises:
        TypeError: ``log_prob`` of a value that is not a tensor.
        DataError: ``log_prob`` of a value of the wrong trailing shape, dtype or device, with
            NaN/Inf (with ``validate``), or whose batch shape does not broadcast with the
            contexts'.

    References:
        - Behrmann et al., "Invertible Residual Networks", arXiv:1811.00995.
        - Chen et al., "Residual Flows for Invertible Generative Modeling", arXiv:1906.02735.

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
        context: Tensor | None = None,
    ) -> None:
        self.transform = transform
        self.base = base
        self.validate = validate
        self.context = context
        batch = torch.Size() if context is None else context.shape[:-1]
        super().__init__(batch, torch.Size(event_shape), validate_args=False)

    def _contexts(self, shape: torch.Size) -> Tensor | None:
        """The contexts broadcast to the leading shape ``shape`` and flattened to ``(N, k)``."""
        if self.context is None:
            return None
        k = self.context.shape[-1]
        return self.context.expand(*shape, k).reshape(-1, k)

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
            TypeError: ``value`` is not a tensor.
            DataError: a wrong trailing shape, dtype or device, NaN/Inf (with ``validate``), or
                a batch shape that does not broadcast with the contexts'; the message says how
                to fix it.
        """
        if isinstance(value, Tensor) and value.shape == self.event_shape:  # one event
            return self.log_prob(value.unsqueeze(0)).reshape(self.batch_shape)
        flat, sample_shape = self._flat(value, "log_prob")
        if self.validate:
            check_finite(flat, "log_prob")
        if self.context is None:
            z, logdet = self.transform(flat)
            return (self.base.log_prob(z) + logdet).reshape(sample_shape)
        try:
            shape = torch.broadcast_shapes(sample_shape, self.batch_shape)
        except RuntimeError:
            raise DataError(
                f"log_prob: values of batch shape {tuple(sample_shape)} do not broadcast with "
                f"the contexts' batch shape {tuple(self.batch_shape)}"
            ) from None
        flat = value.expand(*shape, *self.event_shape).reshape(-1, *self.event_shape)
        z, logdet = self.transform(flat, c=self._contexts(shape))
        return (self.base.log_prob(z) + logdet).reshape(shape)

    def rsample(self, sample_shape: Sequence[int] = ()) -> Tensor:
        """``x = f^{-1}(z)``, ``z ~ base``, shape ``(*sample_shape, *event_shape)``.

        Gradients reach the parameters through the inverses' implicit differentiation.

        Raises:
            ValueError: a negative or non-integer size in ``sample_shape``.
        """
        if isinstance(sample_shape, int):  # `sample(5)` as torch's own distributions do not
            sample_shape = (sample_shape,)
        if any(not isinstance(n, int) or n < 0 for n in sample_shape):
            raise ValueError(
                f"sample_shape must hold non-negative integers, got {tuple(sample_shape)!r}"
            )
        shape = torch.Size(sample_shape) + self.batch_shape
        z = self.base.rsample((shape.numel(),))
        if shape.numel() == 0:  # nothing to invert
            return z.new_zeros(*shape, *self.event_shape)
        if self.context is None:
            x = self.transform.inverse(z)
        else:
            x = self.transform.inverse(z, c=self._contexts(shape))
        return x.reshape(*shape, *self.event_shape)

    def sample(self, sample_shape: Sequence[int] = ()) -> Tensor:
        """``rsample`` without a gradient, shape ``(*sample_shape, *event_shape)``."""
        with torch.no_grad():
            return self.rsample(sample_shape)

    def rsample_and_log_prob(self, sample_shape: Sequence[int] = ()) -> tuple[Tensor, Tensor]:
        """Samples and their log-densities: ``(x, log p(x))`` of shapes
        ``(*sample_shape, *batch_shape, *event_shape)`` and ``(*sample_shape, *batch_shape)``;
        the density of the samples is evaluated by a forward pass through the transform (so it
        carries gradients through both the samples and the log-dets)."""
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

    Calling the flow returns its ``FlowDistribution`` (zuko's interface): ``flow()``, or
    ``flow(c)`` for a conditional flow, the distribution of ``x`` given the contexts ``c``;
    ``flow.log_prob(x, c)`` and ``flow.sample(n, c=c)`` are shortcuts. The transform stays
    reachable as ``flow.transform`` for inverses, certificates and diagnostics.

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
        context: the context size ``k`` of a conditional transform (0: unconditional).
        context_standardize: ``(mean, std)`` of the contexts: every context ``c`` given to the
            flow becomes ``(c - mean) / std`` before it reaches the transforms (fixed buffers,
            saved with the flow), so contexts are passed in their own units.

    Shapes:
        ``x``: ``(B, *event_shape)``; ``z``: ``(B, *latent_shape)``; log-densities ``(B,)``, in
        nats.

    Raises:
        TypeError: an item of ``transforms`` that is not a
            [`Transform`][iresnet.transforms.base.Transform].
        ValueError: no ``event_shape`` and none can be learned from the first layers; a
            ``context`` that is not a non-negative integer; a conditional transform with
            ``context=0``, or ``context > 0`` with none; ``context_standardize`` without a
            context, with the wrong number of values, or with a ``std`` that is not finite and
            positive.

    References:
        - Behrmann et al., "Invertible Residual Networks", arXiv:1811.00995.
        - Chen et al., "Residual Flows for Invertible Generative Modeling", arXiv:1906.02735.

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
        context: int = 0,
        context_standardize: tuple[Sequence[float], Sequence[float]] | None = None,
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
        if isinstance(context, bool) or not isinstance(context, int) or context < 0:
            raise ValueError(f"context must be a non-negative integer, got {context!r}")
        if self.transform.conditional != (context > 0):
            raise ValueError(
                f"context={context} but the transforms are "
                f"{'' if self.transform.conditional else 'not '}conditional: pass the context "
                "size k of the conditional transforms (0 for none)"
            )
        self.context = context
        self.context_standardize: ContextStandardize | None = None
        if context_standardize is not None:
            if context == 0:
                raise ValueError("context_standardize needs a conditional flow (context > 0)")
            self.context_standardize = ContextStandardize(*context_standardize)
            if self.context_standardize.mean.numel() != context:
                raise ValueError(f"context_standardize needs (mean, std) with {context} values")

    def check_context(self, c: Tensor | None, where: str) -> Tensor | None:
        """``c`` checked against this flow, returned as the transforms take it: ``(*batch, k)``
        floats on the flow's dtype and device (finite, with ``validate``), standardised with
        ``context_standardize`` where the flow has one; None for an unconditional flow.

        Raises:
            TypeError: ``c`` is given but is not a tensor.
            DataError: a missing context, one given to an unconditional flow, or one of the
                wrong shape, dtype or device, or with NaN/Inf; the message says what was
                expected.
        """
        if self.context == 0:
            if c is not None:
                raise DataError(f"{where}: this flow is not conditional (context=0); pass no c")
            return None
        if c is None:
            raise DataError(
                f"{where}: this flow is conditional; pass contexts c of shape (..., {self.context})"
            )
        if not isinstance(c, Tensor):
            raise TypeError(f"{where}: expected the contexts as a torch.Tensor, got {type(c)}")
        if c.dim() == 0 or c.shape[-1] != self.context:
            k = self.context
            hint = "; a 0-d tensor has no context axis: pass c.reshape(1)" if c.dim() == 0 else ""
            raise DataError(
                f"{where}: expected contexts of shape (B, {k}) or ({k},), got "
                f"{tuple(c.shape)}{hint if k == 1 else ''}"
            )
        check_input(
            c if c.dim() > 1 else c.unsqueeze(0),
            f"{where} context",
            like=self.transform,
            event_shape=(self.context,),
        )
        if self.validate:
            check_finite(c.reshape(1, -1), f"{where} context")
        if self.context_standardize is not None:
            c = self.context_standardize(c)
        return c

    def forward(self, c: Tensor | None = None) -> FlowDistribution:
        """The distribution of the data under this flow (given the contexts ``c``, shape
        ``(*batch, k)``, for a conditional flow), a
        [`FlowDistribution`][iresnet.flows.flow.FlowDistribution].

        Raises:
            TypeError: see [`check_context`][iresnet.flows.flow.Flow.check_context].
            DataError: see [`check_context`][iresnet.flows.flow.Flow.check_context].
        """
        return self._distribution(c, "flow(c)")

    def _distribution(self, c: Tensor | None, where: str) -> FlowDistribution:
        c = self.check_context(c, where)
        return FlowDistribution(
            self.transform, self.base(), self.event_shape, self.validate, context=c
        )

    def log_prob(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        """``log p(x)`` (``log p(x | c)`` for a conditional flow) in nats, shape ``(B,)`` for
        ``x`` of shape ``(B, *event_shape)`` and ``c`` of shape ``(B, k)``.

        Raises:
            TypeError: ``x`` or ``c`` is not a tensor.
            DataError: ``x`` or ``c`` of the wrong shape, dtype or device, or with NaN/Inf
                (with ``validate``); a context missing, or given to an unconditional flow.
        """
        return self._distribution(c, "log_prob").log_prob(x)

    def _sample_contexts(self, n: int, c: Tensor | None) -> Tensor | None:
        c = self.check_context(c, "sample")
        if c is None:
            return None
        if c.dim() == 1:
            return c.expand(n, self.context)
        if c.shape != (n, self.context):
            raise DataError(
                f"sample: expected one context ({self.context},) or one per sample "
                f"({n}, {self.context}), got {tuple(c.shape)}"
            )
        return c

    def sample(self, n: int, temperature: float | Tensor = 1.0, c: Tensor | None = None) -> Tensor:
        """``n`` samples ``x = f^{-1}(z)``, ``z ~ base`` with its spread scaled by
        ``temperature``; shape ``(n, *event_shape)``, no gradient. A conditional flow takes
        the context ``c``: one ``(k,)`` for all samples, or one per sample ``(n, k)``.

        Raises:
            ValueError: ``n < 1``, or ``temperature != 1`` with a base that is not a normal
                distribution.
            TypeError: ``c`` is given but is not a tensor, or a tensor that is not 0-d is
                passed as the temperature (a context goes by name: ``sample(n, c=c)``).
            DataError: a context missing, given to an unconditional flow, or of the wrong
                shape, dtype or device.
        """
        if isinstance(temperature, Tensor) and temperature.dim() != 0:
            hint = (
                "; if it is the context, pass the context by name, flow.sample(n, c=c), or "
                "sample the conditional distribution, flow(c).sample((n,))"
                if self.context
                else ""
            )
            raise TypeError(
                "sample: temperature must be a number (or a 0-d tensor), got a tensor of shape "
                f"{tuple(temperature.shape)}{hint}"
            )
        with torch.no_grad():
            z = self.sample_latent(n, temperature)
            cs = self._sample_contexts(n, c)
            return self.transform.inverse(z) if cs is None else self.transform.inverse(z, c=cs)

    def sample_latent(self, n: int, temperature: float | Tensor = 1.0) -> Tensor:
        """``n`` draws of the base, scaled about its mean by ``temperature`` (Gaussian bases).

        Returns:
            ``(n, *latent_shape)``.

        Raises:
            ValueError: ``n`` not a positive integer, a temperature that is not a finite
                positive number, or ``temperature != 1`` with a base that is not a normal
                distribution.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            hint = (
                "; pass a number of samples (flow.sample(3), which takes temperature=), or use "
                f"flow().sample({tuple(n)!r}) for a sample shape as torch.distributions take it"
                if isinstance(n, (tuple, list, torch.Size))
                else ""
            )
            raise ValueError(f"sample: n must be a positive integer, got {n!r}{hint}")
        if isinstance(temperature, Tensor) and temperature.dim() == 0:
            temperature = float(temperature)  # a 0-d tensor is a number
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

    def inverse(self, z: Tensor, c: Tensor | None = None) -> Tensor:
        """``x = f^{-1}(z)`` for ``z`` of shape ``(B, *latent_shape)`` (at the contexts ``c``,
        ``(B, k)``, for a conditional flow).

        Raises:
            DataError: ``z`` or ``c`` of the wrong shape, dtype or device, or with NaN/Inf
                (with ``validate``); a context missing, or given to an unconditional flow.
            TypeError: ``c`` is given but is not a tensor.
            InverseNotConvergedError: a block's solve missed its tolerance and its solver has
                ``on_failure="raise"``.
        """
        return self.inverse_with_diagnostics(z, c)[0]

    def inverse_with_diagnostics(
        self, z: Tensor, c: Tensor | None = None
    ) -> tuple[Tensor, InverseReport]:
        """``inverse(z)`` (at the contexts ``c``) and the report of every block's solve, data
        side first.

        Returns:
            ``x`` of shape ``(B, *event_shape)`` and an
                [`InverseReport`][iresnet.transforms.base.InverseReport]: a sequence of
                [`InverseDiagnostics`][iresnet.ops.fixed_point.InverseDiagnostics], one per
                residual block, and the certified reconstruction error per sample.

        Raises:
            DataError: ``z`` or ``c`` of the wrong shape, dtype or device, or with NaN/Inf
                (with ``validate``); a context missing, or given to an unconditional flow.
            TypeError: ``c`` is given but is not a tensor.
            InverseNotConvergedError: a block's solve missed its tolerance and its solver has
                ``on_failure="raise"``.
        """
        check_input(z, "inverse", like=self.transform)  # first: a non-tensor is a TypeError
        if z.dim() != len(self.latent_shape) + 1 or z.shape[1:] != self.latent_shape:
            shape = ", ".join(map(str, self.latent_shape))
            raise DataError(
                f"inverse: expected a latent of shape (batch, {shape}), got {tuple(z.shape)}"
            )
        if self.validate:
            check_finite(z, "inverse")
        c = self.check_context(c, "inverse")
        if c is None:
            return self.transform.inverse_with_diagnostics(z)
        if c.shape != (z.shape[0], self.context):
            raise DataError(
                f"inverse: expected contexts of shape ({z.shape[0]}, {self.context}), got "
                f"{tuple(c.shape)}"
            )
        return self.transform.inverse_with_diagnostics(z, c=c)
