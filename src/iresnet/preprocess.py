"""Dequantisation and logit preprocessing of discrete images, with their log-determinants.

Notation: ``x`` holds integer levels in ``{0, ..., K-1}^D`` (``K = n_levels``, ``D`` values per
sample), ``u = (x + v) / K`` with ``v ~ U[0, 1)^D`` is the dequantised sample in ``[0, 1)^D``
and ``z = logit(alpha + (1 - 2 alpha) u)`` is what a flow models.

Relating densities to discrete probabilities: let ``p`` be a density on ``[0, 1)^D`` and define
the discrete model ``P(x)`` as the mass ``p`` puts on the cell ``[x/K, (x+1)/K)`` of ``x``.
Substituting ``u = (x + v) / K`` (Jacobian ``K^-D``) gives

    ``P(x) = E_v[ p((x + v) / K) ] / K^D``

and, by Jensen's inequality, ``log P(x) >= E_v[ log p(u) ] - D log K``. So ``-log p(u) + D log K``
averaged over dequantisation noise is an upper bound on the discrete code length ``-log P(x)``
in nats; :func:`bits_per_dim` reports it per dimension in bits. ``log p(u)`` must be the
density of ``u`` itself, i.e. a flow's ``log p(z)`` plus every preprocessing log-det (such as
the one :func:`logit_transform` returns).
"""

from __future__ import annotations

import math

import torch

from iresnet.errors import DataError

__all__ = [
    "dequantize",
    "dequantize_mid",
    "logit_transform",
    "logit_inverse",
    "bits_per_dim",
]


def _check_levels(x: torch.Tensor, n_levels: int) -> None:
    if n_levels < 2:
        raise DataError(f"n_levels must be >= 2, got {n_levels}")
    if x.dtype.is_complex or x.dtype == torch.bool:
        raise DataError(f"expected integer levels, got a {x.dtype} tensor")
    if x.numel() == 0:
        return
    lo, hi = x.min().item(), x.max().item()
    if lo < 0 or hi > n_levels - 1:
        raise DataError(f"levels must lie in 0..{n_levels - 1}, got values in [{lo}, {hi}]")
    if x.is_floating_point() and not torch.equal(x, x.round()):
        raise DataError("expected integer levels, got non-integer floating values")


def _float_dtype(x: torch.Tensor, dtype: torch.dtype | None) -> torch.dtype:
    if dtype is not None:
        return dtype
    return x.dtype if x.is_floating_point() else torch.get_default_dtype()


def dequantize(
    x: torch.Tensor,
    n_levels: int,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Uniform dequantisation ``u = (x + v) / K`` with ``v ~ U[0, 1)`` i.i.d. per entry.

    Args:
        x: integer levels in ``{0, ..., K-1}``, any shape (e.g. uint8 ``(N, C, H, W)``).
        n_levels: ``K``.
        generator: optional generator for reproducible noise (on ``x``'s device).
        dtype: float dtype of the result; default ``x``'s if floating, else torch's default.

    Returns:
        Float tensor of ``x``'s shape with values in ``[0, 1)``; ``u`` lies in the cell
        ``[x/K, (x+1)/K)`` of its level.
    """
    _check_levels(x, n_levels)
    dt = _float_dtype(x, dtype)
    v = torch.rand(x.shape, generator=generator, dtype=dt, device=x.device)
    u = (x.to(dt) + v) / n_levels
    # (K-1 + v)/K can round up to exactly 1.0 in float32; keep the promised half-open range.
    return u.clamp_(max=1.0 - torch.finfo(dt).eps / 2)


def dequantize_mid(
    x: torch.Tensor, n_levels: int, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Deterministic cell midpoints ``u = (x + 1/2) / K`` (for plotting and reconstructions).

    Same shapes and dtype rules as :func:`dequantize`.
    """
    _check_levels(x, n_levels)
    dt = _float_dtype(x, dtype)
    return (x.to(dt) + 0.5) / n_levels


def _check_alpha(alpha: float) -> None:
    if not 0.0 <= alpha < 0.5:
        raise DataError(f"alpha must lie in [0, 0.5), got {alpha}")


def logit_transform(u: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Map ``u`` in ``[0, 1)`` to logit space, with the per-sample log-det.

    ``s = alpha + (1 - 2 alpha) u`` keeps values away from 0 and 1 (``alpha = 0`` is allowed
    but gives ``-inf`` at ``u = 0``), ``z = log s - log(1 - s)``. The map is elementwise, so
    its Jacobian is diagonal with entries ``(1 - 2 alpha) / (s (1 - s))`` and

        ``logdet = sum_i [ log(1 - 2 alpha) - log s_i - log(1 - s_i) ]``

    over all non-batch dimensions. Hence ``log p_u(u) = log p_z(z) + logdet``.

    Args:
        u: ``(N, ...)`` values in ``[0, 1]``.
        alpha: boundary margin in ``[0, 0.5)``.

    Returns:
        ``z`` of ``u``'s shape and ``logdet`` of shape ``(N,)``.
    """
    _check_alpha(alpha)
    if u.dim() == 0:
        raise DataError("logit_transform needs a batch dimension, got a 0-d tensor")
    s = alpha + (1.0 - 2.0 * alpha) * u
    log_s, log_1ms = torch.log(s), torch.log1p(-s)  # log1p keeps precision for small s
    z = log_s - log_1ms
    per_entry = math.log1p(-2.0 * alpha) - log_s - log_1ms
    return z, per_entry.reshape(u.shape[0], -1).sum(dim=1)


def logit_inverse(z: torch.Tensor, alpha: float) -> torch.Tensor:
    """Inverse of :func:`logit_transform`: ``u = (sigmoid(z) - alpha) / (1 - 2 alpha)``.

    Any shape. Note that ``u`` falls outside ``[0, 1)`` wherever ``sigmoid(z)`` lies outside
    ``[alpha, 1 - alpha)``, which can happen for samples drawn from a flow.
    """
    _check_alpha(alpha)
    return (torch.sigmoid(z) - alpha) / (1.0 - 2.0 * alpha)


def bits_per_dim(log_prob_u: torch.Tensor, n_dims: int, n_levels: int) -> torch.Tensor:
    """Bits per dimension ``(-log p(u) + D log K) / (D log 2)`` of discrete data.

    Args:
        log_prob_u: log-density (nats) of the dequantised data ``u`` in ``[0, 1)^D``, any shape
            (usually ``(N,)``); it must already include every preprocessing log-det.
        n_dims: ``D``, the number of values per sample (e.g. ``C * H * W``).
        n_levels: ``K``.

    Returns:
        Tensor of ``log_prob_u``'s shape. Since ``P(x) = E_v[p(u)] / K^D`` (module docstring),
        its mean over dequantisation noise upper-bounds ``-log2 P(x) / D``. For the uniform
        density on ``[0, 1)^D`` (``log p(u) = 0``) it equals ``log2 K``.
    """
    if n_dims < 1:
        raise DataError(f"n_dims must be >= 1, got {n_dims}")
    if n_levels < 2:
        raise DataError(f"n_levels must be >= 2, got {n_levels}")
    return (-log_prob_u + n_dims * math.log(n_levels)) / (n_dims * math.log(2.0))
