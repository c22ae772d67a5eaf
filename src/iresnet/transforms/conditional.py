"""A conditional elementwise affine map: per-feature scale and shift chosen by the context.

``y = x * exp(s(c)) + t(c)`` per feature (per channel on images), with ``s`` and ``t`` from a
small unconstrained network of the context. It moves and rescales each context's data before
the residual blocks, whose Lipschitz bound limits how far a block can move its input; it is the
conditional counterpart of [`ActNorm`][iresnet.transforms.actnorm.ActNorm] (Kingma & Dhariwal,
sec. 3.1). Its log-det is ``sum s(c)`` (times the pixels per channel).

References:
    - Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1 Convolutions",
      NeurIPS 2018, arXiv:1807.03039, sec. 3.1 (ActNorm).
    - Winkler et al., "Learning Likelihoods with Conditional Normalizing Flows",
      arXiv:1912.00042 (conditional affine layers).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..checks import check_input, check_size
from ..errors import DataError
from .base import Transform

__all__ = ["ConditionalAffine"]


class ConditionalAffine(Transform):
    """``y = x * exp(s(c)) + t(c)``, per feature or channel, with the log-scale bounded.

    ``s(c) = B tanh(a(c) / B)`` keeps ``|s| < B`` for every context, so the inverse
    ``x = (y - t(c)) exp(-s(c))`` is ``exp(B)``-Lipschitz whatever the context (which carries
    certified reconstruction errors through it). The last layer of the context network starts at
    zero: the map starts as the identity for every context.

    Arguments:
        features: features (vectors) or channels (images) ``C``.
        context: the context size ``k``.
        hidden_features: hidden sizes of the context network (plain linear layers, SiLU).
        log_scale_bound: ``B > 0``.

    Shapes:
        ``x``, ``y``: ``(B, C)`` or ``(B, C, H, W)``; ``c``: ``(B, k)``; ``logdet``: ``(B,)``,
        in nats.

    Raises:
        ValueError: sizes that are not positive integers, or ``log_scale_bound <= 0``.
        TypeError: from ``forward`` / ``inverse``, an input or context that is not a tensor.
        DataError: from ``forward`` / ``inverse``, inputs or contexts of the wrong shape, dtype
            or device, or no context ``c``.

    References:
        - Kingma & Dhariwal, arXiv:1807.03039, sec. 3.1 (ActNorm, its unconditional form).
        - Winkler et al., "Learning Likelihoods with Conditional Normalizing Flows",
          arXiv:1912.00042.

    Examples:
        >>> import torch
        >>> f = ConditionalAffine(2, context=1)
        >>> x, c = torch.randn(4, 2), torch.randn(4, 1)
        >>> y, logdet = f(x, c=c)  # the identity at initialisation
        >>> bool(torch.equal(y, x)), logdet.tolist()
        (True, [0.0, 0.0, 0.0, 0.0])
    """

    conditional = True

    def __init__(
        self,
        features: int,
        context: int,
        hidden_features: Sequence[int] = (64,),
        *,
        log_scale_bound: float = 5.0,
    ) -> None:
        super().__init__()
        sizes = [context, *hidden_features]
        if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in sizes) or (
            isinstance(features, bool) or not isinstance(features, int) or features < 1
        ):
            raise ValueError(
                "ConditionalAffine needs positive integer features, context and hidden_features, "
                f"got {features!r}, {context!r}, {tuple(hidden_features)!r}"
            )
        if not log_scale_bound > 0:
            raise ValueError(f"log_scale_bound must be positive, got {log_scale_bound}")
        self.features, self.context = features, context
        self.log_scale_bound = float(log_scale_bound)
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [nn.Linear(a, b), nn.SiLU()]
        last = nn.Linear(sizes[-1], 2 * features)
        with torch.no_grad():
            last.weight.zero_()
            last.bias.zero_()
        self.net = nn.Sequential(*layers, last)

    def _params(self, x: Tensor, c: Tensor | None, where: str) -> tuple[Tensor, Tensor]:
        check_input(x, where, like=self)
        check_size(x, where, 1, self.features, "features")
        if c is None:
            raise DataError(
                f"{where}: this transform is conditional; pass the contexts as c=, shape "
                f"(batch, {self.context})"
            )
        check_input(c, f"{where} context", like=self)
        if c.dim() != 2 or c.shape != (x.shape[0], self.context):
            raise DataError(
                f"{where}: expected contexts of shape ({x.shape[0]}, {self.context}), one per "
                f"sample, got {tuple(c.shape)}"
            )
        out = self.net(c)
        bound = self.log_scale_bound
        log_scale = bound * torch.tanh(out[:, : self.features] / bound)
        return log_scale, out[:, self.features :]

    def _view(self, t: Tensor, x: Tensor) -> Tensor:
        return t.reshape(t.shape[0], t.shape[1], *([1] * (x.dim() - 2)))

    def forward(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        log_scale, shift = self._params(x, c, "ConditionalAffine")
        y = x * self._view(log_scale, x).exp() + self._view(shift, x)
        return y, log_scale.sum(1) * x.shape[2:].numel()

    def inverse(self, y: Tensor, c: Tensor | None = None) -> Tensor:
        log_scale, shift = self._params(y, c, "ConditionalAffine.inverse")
        return (y - self._view(shift, y)) * self._view(-log_scale, y).exp()

    def inverse_lipschitz(self) -> float:
        """``exp(B)``: the inverse's largest factor over every context."""
        return math.exp(self.log_scale_bound)

    def extra_repr(self) -> str:
        return (
            f"features={self.features}, context={self.context}, "
            f"log_scale_bound={self.log_scale_bound}"
        )
