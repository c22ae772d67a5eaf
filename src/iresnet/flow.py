"""Normalising flows: transforms composed over a base distribution.

``Flow`` maps data ``x`` to a latent ``z`` through its transforms, so
``log p(x) = log p_base(z) + sum_i log|det J_i|`` (change of variables), and samples by
inverting the transforms on base draws.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, constraints

from .inverse import InverseDiagnostics

__all__ = ["Flow", "FlowDistribution", "check_finite"]

_LOG_2PI = math.log(2 * math.pi)


def check_finite(x: Tensor, where: str) -> None:
    """Raise ``ValueError`` naming ``where`` and the first offending sample if ``x`` holds NaN/Inf."""
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = (~finite).reshape(x.shape[0], -1).any(1) if x.dim() > 0 else ~finite
        idx = int(bad.nonzero()[0, 0]) if x.dim() > 0 else 0
        kind = "NaN" if bool(torch.isnan(x).any()) else "Inf"
        raise ValueError(f"{where}: input contains {kind} (first non-finite sample: index {idx})")


class Flow(nn.Module):
    """A normalising flow ``x -> z`` through ``transforms`` over a base distribution.

    Arguments:
        transforms: modules following the transform contract (``forward(x) -> (y, logdet)``,
            ``inverse(y) -> x``), applied in order from data to latent.
        base: a ``torch.distributions.Distribution`` over the latent with ``log_prob`` returning
            ``(B,)``; default: the standard normal ``N(0, I)`` of the latent's shape.
        event_shape: the shape of one data point; inferred from the first input if omitted.
        validate: check inputs for NaN/Inf and shape (one host synchronisation per call).

    Shapes: ``x``: ``(B, *event_shape)``; ``z``: ``(B, *latent_shape)``; ``logdet``: ``(B,)``.

    Example:
        >>> import torch, iresnet
        >>> g = torch.nn.Sequential(iresnet.SpectralLinear(2, 8, coeff=0.9), iresnet.LipSwish(),
        ...                         iresnet.SpectralLinear(8, 2, coeff=0.9))
        >>> flow = iresnet.Flow([iresnet.InvertibleResidualBlock(g, logdet=iresnet.ExactLogDet())],
        ...                     event_shape=(2,)).eval()
        >>> flow.log_prob(torch.zeros(3, 2)).shape
        torch.Size([3])
        >>> flow.sample(4).shape
        torch.Size([4, 2])
    """

    def __init__(
        self,
        transforms: Sequence[nn.Module],
        base: Distribution | None = None,
        event_shape: Sequence[int] | None = None,
        validate: bool = True,
    ) -> None:
        super().__init__()
        self.transforms = nn.ModuleList(transforms)
        self.base = base
        self.event_shape = torch.Size(event_shape) if event_shape is not None else None
        self.latent_shape: torch.Size | None = None
        self.validate = validate

    def _check(self, x: Tensor, where: str, shape: torch.Size | None) -> None:
        if not self.validate:
            return
        if shape is not None and (x.dim() != len(shape) + 1 or x.shape[1:] != shape):
            raise ValueError(
                f"{where}: expected a tensor of shape (batch, {', '.join(map(str, shape))}), "
                f"got {tuple(x.shape)}"
            )
        check_finite(x, where)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x (B, *event) -> (z (B, *latent), logdet (B,))``."""
        self._check(x, "Flow.forward", self.event_shape)
        return self._transform(x)

    def _transform(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.event_shape is None:
            self.event_shape = x.shape[1:]
        logdet = x.new_zeros(x.shape[0])
        for t in self.transforms:
            x, ld = t(x)
            logdet = logdet + ld
        self.latent_shape = x.shape[1:]
        return x, logdet

    def inverse(self, z: Tensor) -> Tensor:
        """``z (B, *latent) -> x (B, *event)`` by inverting every transform in reverse order."""
        self._check(z, "Flow.inverse", self.latent_shape)
        for t in reversed(self.transforms):
            z = t.inverse(z)
        return z

    def base_log_prob(self, z: Tensor) -> Tensor:
        """``log p_base(z)``, shape ``(B,)``."""
        if self.base is not None:
            return self.base.log_prob(z)
        return -0.5 * (z.pow(2).flatten(1).sum(1) + z[0].numel() * _LOG_2PI)

    def log_prob(self, x: Tensor) -> Tensor:
        """``log p(x) = log p_base(z) + logdet``, shape ``(B,)`` (nats)."""
        self._check(x, "Flow.log_prob", self.event_shape)
        z, logdet = self._transform(x)
        return self.base_log_prob(z) + logdet

    def _ensure_latent_shape(self) -> torch.Size:
        if self.latent_shape is None:
            if self.event_shape is None:
                raise RuntimeError("Flow.sample: unknown shapes; pass event_shape= or call the flow once")
            p = next(self.parameters(), None)
            probe = torch.zeros(1, *self.event_shape, dtype=p.dtype if p is not None else None,
                                device=p.device if p is not None else None)
            was_training = self.training
            self.eval()
            with torch.no_grad():
                for t in self.transforms:  # shapes only: no log-det needed, but transforms
                    probe, _ = t(probe)  # compute it anyway; one sample is cheap
            self.train(was_training)
            self.latent_shape = probe.shape[1:]
        return self.latent_shape

    def sample(self, n: int, temperature: float = 1.0) -> Tensor:
        """Draw ``n`` samples ``x = f^{-1}(z)``, ``z ~ base`` (scaled by ``temperature`` for the
        default normal base). Computes no log-det. Shape ``(n, *event)``."""
        if self.base is not None:
            z = self.base.sample((n,))
        else:
            shape = self._ensure_latent_shape()
            p = next(self.parameters(), None)
            z = torch.randn(n, *shape, dtype=p.dtype if p is not None else None,
                            device=p.device if p is not None else None)
            z = z * temperature
        return self.inverse(z)

    @property
    def inverse_diagnostics(self) -> list[InverseDiagnostics]:
        """Diagnostics of every residual block's last inverse solve, in transform order."""
        return [d for t in self.transforms if (d := getattr(t, "last_inverse_diagnostics", None))]

    def distribution(self) -> FlowDistribution:
        """A ``torch.distributions.Distribution`` view of this flow."""
        return FlowDistribution(self)


class FlowDistribution(Distribution):
    """``torch.distributions`` wrapper of a :class:`Flow`: ``log_prob``, ``sample``, ``rsample``.

    ``rsample`` is differentiable: the inverse carries implicit gradients.
    """

    arg_constraints: dict = {}
    support = constraints.real
    has_rsample = True

    def __init__(self, flow: Flow) -> None:
        if flow.event_shape is None:
            raise ValueError("FlowDistribution needs a flow with a known event_shape")
        self.flow = flow
        super().__init__(batch_shape=torch.Size(), event_shape=flow.event_shape, validate_args=False)

    def log_prob(self, value: Tensor) -> Tensor:
        sample_shape = value.shape[: value.dim() - len(self.event_shape)]
        flat = value.reshape(-1, *self.event_shape)
        return self.flow.log_prob(flat).reshape(sample_shape)

    def rsample(self, sample_shape: torch.Size | Sequence[int] = torch.Size()) -> Tensor:
        shape = torch.Size(sample_shape)
        x = self.flow.sample(max(1, shape.numel()))
        return x.reshape(*shape, *self.event_shape)

    def sample(self, sample_shape: torch.Size | Sequence[int] = torch.Size()) -> Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)
