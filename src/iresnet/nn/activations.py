"""Smooth 1-Lipschitz activations.

The log-det series and the Neumann gradient need ``g`` twice differentiable with bounded
derivatives; ReLU's kink gives ``J_g`` a discontinuity and its second derivative is zero almost
everywhere, which starves the gradient of the log-det (Residual Flows, arXiv:1906.02735,
sec. 4).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LipSwish", "LipELU", "ONE_LIPSCHITZ_ACTIVATIONS", "ACTIVATIONS", "activation_factory"]


class LipSwish(nn.Module):
    """LipSwish (Residual Flows, arXiv:1906.02735, eq. 10): ``f(x) = x * sigmoid(beta x) / 1.1``.

    ``beta = softplus(b)`` with ``b`` learned, one per module. The Swish derivative is bounded by
    about 1.0998 for every ``beta >= 0``, so dividing by 1.1 makes ``f`` 1-Lipschitz.

    Arguments:
        init_beta: initial ``beta`` (> 0); the raw
            parameter is ``softplus^{-1}(init_beta)``.

    Shapes: any; elementwise.
    """

    def __init__(self, init_beta: float = 1.0) -> None:
        super().__init__()
        if init_beta <= 0:
            raise ValueError(f"init_beta must be positive, got {init_beta}")
        raw = math.log(math.expm1(init_beta))
        self.raw_beta = nn.Parameter(torch.tensor(raw))

    @property
    def beta(self) -> Tensor:
        return F.softplus(self.raw_beta)

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(self.beta * x) / 1.1

    def jvp(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(f(x), f'(x) t)`` with ``f' = (s + beta x s (1 - s)) / 1.1``, ``s = sigmoid(beta x)``;
        ``t`` has a leading tangent dimension."""
        beta = self.beta
        s = torch.sigmoid(beta * x)
        y = x * s / 1.1
        dy = (s + beta * x * s * (1 - s)) / 1.1
        return y, dy * t

    def lipschitz_bound(self) -> float:
        return 1.0


class LipELU(nn.ELU):
    """ELU with ``alpha <= 1``: derivative in ``(0, 1]``, hence 1-Lipschitz and smooth enough.

    The i-ResNet density models use it (i-ResNet, arXiv:1811.00995, sec. 5). ``alpha > 1`` is
    refused.

    Example:
        >>> LipELU()(torch.tensor([-1.0, 2.0]))
        tensor([-0.6321,  2.0000])
    """

    def __init__(self, alpha: float = 1.0) -> None:
        if not 0 < alpha <= 1:
            raise ValueError(f"LipELU needs 0 < alpha <= 1 to stay 1-Lipschitz, got {alpha}")
        super().__init__(alpha=alpha)

    def jvp(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(elu(x), elu'(x) t)``; ``elu' = 1`` for ``x > 0``, ``alpha e^x`` otherwise."""
        y = super().forward(x)
        dy = torch.where(x > 0, torch.ones_like(x), y + self.alpha)
        return y, dy * t

    def lipschitz_bound(self) -> float:
        return 1.0


# Activations from torch that are 1-Lipschitz as they are, for the certificate.
ONE_LIPSCHITZ_ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.Tanh,
    nn.Identity,
    nn.Softplus,
)


#: Activation names the model families and the config accept.
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"lipswish": LipSwish, "elu": LipELU}


def activation_factory(spec: str | Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    """A zero-argument factory of activation modules from a name or a factory.

    Args:
        spec: a name in :data:`ACTIVATIONS` (``"lipswish"``, ``"elu"``) or a callable returning
            a fresh module (e.g. ``functools.partial(LipSwish, 10.0)``; a module of unknown
            Lipschitz constant makes the certificate ``inf``).

    Raises:
        ValueError: an unknown name.
    """
    if callable(spec):
        return spec
    if spec not in ACTIVATIONS:
        raise ValueError(
            f"activation must be one of {sorted(ACTIVATIONS)} or a callable, got {spec!r}"
        )
    return ACTIVATIONS[spec]
