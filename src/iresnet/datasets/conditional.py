"""Conditional 2-D toy densities ``p(x | c)`` with closed forms, so the gap to the truth is
measured per context.

- ``rotated-8gaussians``: the context is an angle ``c = theta ~ U(0, pi/4)`` (one period of the
  mixture's symmetry, so every configuration of the modes appears once) and
  ``x = Rot(theta) y`` with ``y`` drawn from ``8gaussians`` (see
  [`iresnet.datasets.toy`][iresnet.datasets.toy]);
  ``log p(x | theta) = log p_8g(Rot(-theta) x)`` (a rotation keeps volumes).
- ``moving-gaussian``: ``c ~ U(-2, 2)``,
  ``x | c ~ N(m(c), diag(s(c)^2))`` with ``m(c) = (2 sin c, c)`` and
  ``s(c) = (0.25 e^(c/2), 0.25 e^(-c/2))``: the mean travels along a curve and the two scales
  trade places, each from 0.09 to 0.68.

Every draw comes from ``torch`` on one ``torch.Generator``, so a seed fixes the data.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ..errors import DataError
from .toy import sample_count, sample_toy, toy_log_density

__all__ = [
    "CONDITIONAL_TOYS",
    "conditional_log_density",
    "conditional_toy_split",
    "kl_contexts",
    "sample_conditional",
]

CONDITIONAL_TOYS: tuple[str, ...] = ("rotated-8gaussians", "moving-gaussian")
"""The conditional toy names (see the module docstring)."""

_F64 = torch.float64
_LOG_2PI = math.log(2.0 * math.pi)


def _check_name(name: str) -> None:
    if name not in CONDITIONAL_TOYS:
        raise DataError(
            f"unknown conditional toy {name!r}; valid names are: {', '.join(CONDITIONAL_TOYS)}"
        )


def _rotate(x: Tensor, theta: Tensor) -> Tensor:
    c, s = torch.cos(theta), torch.sin(theta)
    return torch.stack([c * x[:, 0] - s * x[:, 1], s * x[:, 0] + c * x[:, 1]], dim=1)


def _moving_params(c: Tensor) -> tuple[Tensor, Tensor]:
    mean = torch.stack([2.0 * torch.sin(c), c], dim=1)
    scale = 0.25 * torch.stack([torch.exp(c / 2), torch.exp(-c / 2)], dim=1)
    return mean, scale


def _draw_contexts(name: str, n: int, g: torch.Generator | None) -> Tensor:
    u = torch.rand(n, generator=g, dtype=_F64)
    return (math.pi / 4) * u if name == "rotated-8gaussians" else 4.0 * u - 2.0


def sample_conditional(name: str, c: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One draw of ``x | c`` per context.

    Args:
        name: one of [`CONDITIONAL_TOYS`][iresnet.datasets.conditional.CONDITIONAL_TOYS].
        c: ``(n, 1)`` contexts.
        generator: the source of randomness (the global one when None).

    Returns:
        ``(n, 2)`` float64.

    Raises:
        DataError: an unknown name or contexts that are not ``(n, 1)``.

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> sample_conditional("moving-gaussian", torch.zeros(3, 1), g).shape
        torch.Size([3, 2])
    """
    _check_name(name)
    if not isinstance(c, Tensor) or c.dim() != 2 or c.shape[1] != 1:
        shape = tuple(c.shape) if isinstance(c, Tensor) else type(c).__name__
        raise DataError(f"{name}: expected contexts of shape (n, 1), got {shape}")
    theta = c[:, 0].to(_F64)
    n = theta.shape[0]
    if name == "rotated-8gaussians":
        return _rotate(sample_toy("8gaussians", n, generator=generator, dtype=_F64), theta)
    mean, scale = _moving_params(theta)
    return mean + scale * torch.randn(n, 2, generator=generator, dtype=_F64)


def conditional_log_density(name: str) -> Callable[[Tensor, Tensor], Tensor]:
    """The exact ``log p(x | c)`` in nats: ``(m, 2), (m, 1) -> (m,)``.

    Raises:
        DataError: an unknown name.

    Examples:
        >>> log_p = conditional_log_density("rotated-8gaussians")
        >>> x = torch.tensor([[0.0, 2 * math.sqrt(2)]], dtype=torch.float64)  # a centre at 90 deg
        >>> round(float(log_p(x, torch.tensor([[math.pi / 4]]))), 4)  # log(1 / (2 pi))
        -1.8379
    """
    _check_name(name)

    def log_density(x: Tensor, c: Tensor) -> Tensor:
        if x.dim() != 2 or x.shape[1] != 2 or c.shape != (x.shape[0], 1):
            raise DataError(
                f"{name}: expected points (m, 2) and contexts (m, 1), got {tuple(x.shape)} and "
                f"{tuple(c.shape)}"
            )
        theta = c[:, 0].to(x.dtype)
        if name == "rotated-8gaussians":
            base = toy_log_density("8gaussians")
            assert base is not None
            return base(_rotate(x, -theta))
        mean, scale = _moving_params(theta)
        z = (x - mean) / scale
        return (-0.5 * z.pow(2) - torch.log(scale) - 0.5 * _LOG_2PI).sum(1)

    return log_density


def kl_contexts(name: str) -> Tensor:
    """The contexts at which the gap to the truth is reported, ``(m, 1)`` float64: eight
    evenly spaced over the context's range.

    Examples:
        >>> kl_contexts("moving-gaussian")[:, 0].tolist()[:2]
        [-1.75, -1.25]
    """
    _check_name(name)
    u = (torch.arange(8, dtype=_F64) + 0.5) / 8
    c = (math.pi / 4) * u if name == "rotated-8gaussians" else 4.0 * u - 2.0
    return c[:, None]


def conditional_toy_split(
    name: str, n_train: int, n_test: int, seed: int = 0, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Fixed-seed ``(train_x, train_c, test_x, test_c)``, of shapes ``(n, 2)`` and ``(n, 1)``.

    As [`toy_split`][iresnet.datasets.toy.toy_split]: two generators seeded from ``seed``, so
    the test set depends only on ``(name, n_test, seed)``.

    Raises:
        DataError: an unknown name, or a size that is not a non-negative integer.

    Examples:
        >>> x, c, tx, tc = conditional_toy_split("rotated-8gaussians", 10, 4)
        >>> x.shape, c.shape, bool((c >= 0).all() and (c < math.pi / 4).all())
        (torch.Size([10, 2]), torch.Size([10, 1]), True)
    """
    _check_name(name)
    sizes = sample_count(n_train), sample_count(n_test)
    seeds = torch.randint(0, 2**62, (2,), generator=torch.Generator().manual_seed(seed))
    out = []
    for s, n in zip(seeds.tolist(), sizes, strict=True):
        g = torch.Generator().manual_seed(int(s))
        c = _draw_contexts(name, n, g)[:, None]
        out += [sample_conditional(name, c, g).to(dtype), c.to(dtype)]
    return out[0], out[1], out[2], out[3]
