"""Preprocessing as transforms: uniform dequantisation, the logit map and standardisation.

Each carries its own log-determinant, so the log-density of a flow that starts with them is
already the density of the data the user passed in, and no caller adds terms by hand.

Notation: ``x`` holds integer levels in ``{0, ..., K-1}^D`` (``K = n_levels``, ``D`` values per
sample), ``u = (x + v) / K`` with ``v ~ U[0, 1)^D`` is the dequantised sample in ``[0, 1)^D``
and ``z = logit(alpha + (1 - 2 alpha) u)`` is what a flow models.

Relating densities to discrete probabilities: let ``p`` be a density on ``[0, 1)^D`` and define
the discrete model ``P(x)`` as the mass ``p`` puts on the cell ``[x/K, (x+1)/K)`` of ``x``.
Substituting ``u = (x + v) / K`` (Jacobian ``K^-D``) gives

    P(x) = E_v[ p((x + v) / K) ] / K^D

and, by Jensen's inequality, ``log P(x) >= E_v[ log p(u) ] - D log K``. So ``-log p(u) + D log K``
averaged over dequantisation noise is an upper bound on the discrete code length ``-log P(x)``
in nats (Theis, van den Oord & Bethge, arXiv:1511.01844). The transform
[`Dequantize`][iresnet.transforms.preprocess.Dequantize] maps levels to ``u`` with log-det
``-D log K``, so a flow that starts with it returns ``log p(u) - D log K``, the log-density of
``x + v`` in level units, and [`bits_per_dim`][iresnet.transforms.preprocess.bits_per_dim]
turns that into bits per dimension.

References:
    - Theis, van den Oord & Bethge, "A note on the evaluation of generative models", ICLR 2016,
      arXiv:1511.01844.
    - Dinh et al., "Density estimation using Real NVP", ICLR 2017, arXiv:1605.08803 (the logit
      map, sec. 4.1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ..checks import check_input, check_size
from ..errors import DataError
from .base import Transform

__all__ = [
    "dequantize",
    "dequantize_mid",
    "logit_transform",
    "logit_inverse",
    "bits_per_dim",
    "Dequantize",
    "Logit",
    "Standardize",
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
        raise DataError(
            f"expected integer levels 0..{n_levels - 1}, got non-integer floating values; "
            f"images in [0, 1] (as `iresnet sample` writes them) are levels "
            f"torch.floor(x * {n_levels}).clamp(max={n_levels - 1})"
        )


def _check_levels_eagerly(x: torch.Tensor, n_levels: int) -> None:
    """``_check_levels`` on every eager call; skipped where ``torch.compile`` traces (a host
    read would break the graph; the trainer checked the data when it loaded them)."""
    if not torch.compiler.is_compiling():
        _check_levels(x, n_levels)


def _float_dtype(x: torch.Tensor, dtype: torch.dtype | None) -> torch.dtype:
    if dtype is not None:
        return dtype
    return x.dtype if x.is_floating_point() else torch.get_default_dtype()


def dequantize(
    x: torch.Tensor,
    n_levels: int,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    check: bool = True,
) -> torch.Tensor:
    """Uniform dequantisation ``u = (x + v) / K`` with ``v ~ U[0, 1)`` i.i.d. per entry.

    Args:
        x: integer levels in ``{0, ..., K-1}``, any shape (e.g. uint8 ``(N, C, H, W)``).
        n_levels: ``K``.
        generator: optional generator for reproducible noise (on ``x``'s device).
        dtype: float dtype of the result; default ``x``'s if floating, else torch's default.
        check: check the levels (a host synchronisation); False for data checked before.

    Returns:
        Float tensor of ``x``'s shape with values in ``[0, 1)``; ``u`` lies in the cell
            ``[x/K, (x+1)/K)`` of its level.

    Raises:
        DataError: with ``check``: ``n_levels < 2``, a boolean or complex ``x``, levels
            outside ``0..K-1``, or non-integer values.

    References:
        - Theis, van den Oord & Bethge, "A note on the evaluation of generative models",
          arXiv:1511.01844.

    Examples:
        >>> u = dequantize(torch.tensor([0, 3]), 4)
        >>> bool((u[0] < 0.25) & (u[1] >= 0.75))
        True
    """
    if check:
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

    Same shapes, dtype rules and errors as
    [`dequantize`][iresnet.transforms.preprocess.dequantize].

    Examples:
        >>> dequantize_mid(torch.tensor([0, 3]), 4).tolist()
        [0.125, 0.875]
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

        logdet = sum_i [ log(1 - 2 alpha) - log s_i - log(1 - s_i) ]

    over all non-batch dimensions. Hence ``log p_u(u) = log p_z(z) + logdet``. Real NVP
    (sec. 4.1) models ``logit(alpha + (1 - alpha) u)``; the margin here is symmetric, so both
    ends stay ``alpha`` away from 0 and 1.

    Args:
        u: ``(N, ...)`` values in ``[0, 1]``.
        alpha: boundary margin in ``[0, 0.5)``.

    Returns:
        ``z`` of ``u``'s shape and ``logdet`` of shape ``(N,)``, in nats.

    Raises:
        DataError: ``alpha`` outside ``[0, 0.5)`` or a 0-d ``u``.

    References:
        - Dinh et al., "Density estimation using Real NVP", arXiv:1605.08803, sec. 4.1.

    Examples:
        >>> z, logdet = logit_transform(torch.tensor([[0.5, 0.5]]), 0.0)
        >>> z.tolist(), [round(v, 4) for v in logdet.tolist()]  # 2 * log 4
        ([[0.0, 0.0]], [2.7726])
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
    """Inverse of [`logit_transform`][iresnet.transforms.preprocess.logit_transform].

    ``u = (sigmoid(z) - alpha) / (1 - 2 alpha)``, any shape. Note that ``u`` falls outside
    ``[0, 1)`` wherever ``sigmoid(z)`` lies outside ``[alpha, 1 - alpha)``, which can happen for
    samples drawn from a flow.

    Raises:
        DataError: ``alpha`` outside ``[0, 0.5)``.

    References:
        - Dinh et al., "Density estimation using Real NVP", arXiv:1605.08803, sec. 4.1.

    Examples:
        >>> logit_inverse(torch.tensor([0.0]), 0.05).tolist()
        [0.5]
    """
    _check_alpha(alpha)
    return (torch.sigmoid(z) - alpha) / (1.0 - 2.0 * alpha)


def bits_per_dim(log_prob: Tensor, n_dims: int) -> Tensor:
    """Bits per dimension ``-log p / (D log 2)`` of dequantised discrete data.

    Args:
        log_prob: log-density (nats) of the dequantised data ``x + v`` in level units, any
            shape (usually ``(N,)``), as a flow starting with ``Dequantize`` returns it:
            ``log p(u) - D log K`` with every preprocessing log-det included.
        n_dims: ``D``, the number of values per sample (e.g. ``C * H * W``).

    Returns:
        Tensor of ``log_prob``'s shape. Its mean over dequantisation noise upper-bounds
            ``-log2 P(x) / D`` (module docstring); the uniform density on ``[0, 1)^D`` scores
            ``log2 K``: ``(-0 + D log K) / (D log 2)``.

    Raises:
        DataError: ``n_dims < 1``.

    References:
        - Theis, van den Oord & Bethge, "A note on the evaluation of generative models",
          arXiv:1511.01844.

    Examples:
        >>> import math
        >>> bits_per_dim(torch.tensor([-3 * math.log(256)]), 3).tolist()  # uniform, K = 256
        [8.0]
    """
    if n_dims < 1:
        raise DataError(f"n_dims must be >= 1, got {n_dims}")
    return -log_prob / (n_dims * math.log(2.0))


class Dequantize(Transform):
    """Uniform dequantisation ``u = (x + v) / K``, ``v ~ U[0, 1)^D`` (a stochastic transform).

    ``forward`` draws fresh noise at every call (training and evaluation alike: the bound on
    ``log P(x)`` holds for the average over the noise) and returns the log-det ``-D log K`` of
    ``x + v -> u``, so the flow's log-density is that of ``x + v`` in level units (module
    docstring). ``inverse`` rounds down, the exact left inverse on the levels
    (``floor(K u) = x``). ``midpoints`` gives the deterministic cell centres, for
    reconstructions and pictures.

    Arguments:
        levels: ``K``, the number of quantisation levels (256 for 8-bit images).

    Shapes:
        ``x``: ``(B, *event)`` integer levels (any dtype); ``u`` of the same shape, in the
        floating dtype of this module (it follows ``.double()``); ``logdet``: ``(B,)``.

    Raises:
        ValueError: ``levels < 2``.
        DataError: at call time, a boolean or complex input, levels outside ``0..K-1`` or
            non-integer values.

    References:
        - Theis, van den Oord & Bethge, "A note on the evaluation of generative models",
          arXiv:1511.01844.

    Examples:
        >>> t = Dequantize(4)
        >>> u, logdet = t(torch.tensor([[0, 1], [2, 3]]))
        >>> t.inverse(u).tolist(), [round(v, 4) for v in logdet.tolist()]  # -2 log 4
        ([[0.0, 1.0], [2.0, 3.0]], [-2.7726, -2.7726])
    """

    accepts_integers = True
    accepts_any_float = True

    def __init__(self, levels: int) -> None:
        super().__init__()
        if levels < 2:
            raise ValueError(f"levels must be >= 2, got {levels}")
        self.levels = int(levels)
        # Carries the dtype the module was cast to (not saved: it is the constant K).
        self.register_buffer("_k", torch.tensor(float(levels)), persistent=False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        _check_levels_eagerly(x, self.levels)
        u = dequantize(x, self.levels, dtype=self._k.dtype, check=False)
        logdet = u.new_full((x.shape[0],), -x[0].numel() * math.log(self.levels))
        return u, logdet

    def midpoints(self, x: Tensor) -> Tensor:
        """Cell centres ``(x + 1/2) / K`` in this module's dtype (no noise), shape of ``x``."""
        return dequantize_mid(x, self.levels, dtype=self._k.dtype)

    def inverse(self, u: Tensor) -> Tensor:
        return torch.floor(u * self.levels).clamp_(0, self.levels - 1)

    def extra_repr(self) -> str:
        return f"levels={self.levels}"


class Logit(Transform):
    """``z = logit(alpha + (1 - 2 alpha) u)`` for ``u`` in ``[0, 1)``, with its log-det.

    The logit map of Real NVP (sec. 4.1) with a symmetric margin; see
    [`logit_transform`][iresnet.transforms.preprocess.logit_transform] for the log-det and
    [`logit_inverse`][iresnet.transforms.preprocess.logit_inverse] for the inverse.

    Arguments:
        alpha: boundary margin in ``[0, 0.5)``.

    Shapes:
        ``u``, ``z``: ``(B, *event)``; ``logdet``: ``(B,)``.

    Raises:
        DataError: ``alpha`` outside ``[0, 0.5)``; at call time, a 0-d input.

    References:
        - Dinh et al., "Density estimation using Real NVP", arXiv:1605.08803, sec. 4.1.

    Examples:
        >>> t = Logit(0.05)
        >>> z, logdet = t(torch.tensor([[0.2, 0.7]]))
        >>> [round(v, 4) for v in t.inverse(z)[0].tolist()], logdet.shape
        ([0.2, 0.7], torch.Size([1]))
    """

    def __init__(self, alpha: float) -> None:
        super().__init__()
        _check_alpha(alpha)
        self.alpha = float(alpha)

    def forward(self, u: Tensor) -> tuple[Tensor, Tensor]:
        return logit_transform(u, self.alpha)

    def inverse(self, z: Tensor) -> Tensor:
        return logit_inverse(z, self.alpha)

    def inverse_lipschitz(self) -> float:
        """``1 / (4 (1 - 2 alpha))``: the sigmoid's slope is at most 1/4."""
        return 1.0 / (4.0 * (1.0 - 2.0 * self.alpha))

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


class Standardize(Transform):
    """The fixed affine map ``z = (x - mean) / std`` per feature, with log-det ``-sum log std``.

    ``mean`` and ``std`` are buffers (saved with the model). The difference ``x - mean`` is
    taken in the wider of the input's and the module's dtypes, so float64 data far from the
    origin keep their resolution in a float32 model; the output has the module's dtype.

    Arguments:
        mean: ``d`` values.
        std: ``d`` values, every one finite and positive.

    Shapes:
        ``x``, ``z``: ``(B, d)``; ``logdet``: ``(B,)``.

    Raises:
        ValueError: lengths differ, or a ``std`` is not finite and positive.
        TypeError: ``forward`` of an input that is not a tensor.
        DataError: ``forward`` of an empty, boolean, complex or integer input, one on another
            device than the buffers, or one without ``d`` features in its last dimension.

    Examples:
        >>> t = Standardize([1.0, 2.0], [2.0, 4.0])
        >>> z, logdet = t(torch.tensor([[3.0, 2.0]]))
        >>> z.tolist(), [round(v, 4) for v in logdet.tolist()]  # -log 8
        ([[1.0, 0.0]], [-2.0794])
    """

    accepts_any_float = True

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        mean_t = torch.as_tensor(list(mean), dtype=torch.get_default_dtype())
        std_t = torch.as_tensor(list(std), dtype=torch.get_default_dtype())
        if mean_t.shape != std_t.shape or mean_t.dim() != 1:
            raise ValueError(f"mean and std need equal lengths, got {len(mean)} and {len(std)}")
        if not bool(torch.isfinite(std_t).all() and (std_t > 0).all()):
            raise ValueError("every std must be finite and positive")
        self.register_buffer("mean", mean_t)
        self.register_buffer("std", std_t)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        check_input(x, "Standardize", like=self, any_float=True)
        check_size(x, "Standardize", -1, self.mean.numel(), "features")
        wide = torch.promote_types(x.dtype, self.mean.dtype)
        z = ((x.to(wide) - self.mean.to(wide)) / self.std.to(wide)).to(self.mean.dtype)
        logdet = -torch.log(self.std).sum().expand(x.shape[0])
        return z, logdet

    def inverse(self, z: Tensor) -> Tensor:
        return z * self.std + self.mean

    def inverse_lipschitz(self) -> float:
        """``max std``."""
        return float(self.std.detach().double().max())
