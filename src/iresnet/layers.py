"""Invertible transforms: residual blocks and the flow pieces around them.

Contract (shared with :class:`iresnet.Flow`): ``forward(x) -> (y, logdet)`` with ``logdet`` of
shape ``(batch,)`` equal to ``log|det dy/dx|``, and ``inverse(y) -> x``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .inverse import FixedPointInverse, InverseDiagnostics
from .lipschitz import frozen_normalisation, lipschitz_bound_of
from .logdet import LogDetEstimator, PowerSeriesLogDet

__all__ = ["InvertibleResidualBlock", "ActNorm", "Squeeze", "Flatten", "OnActive"]


class _AutocastBranch(nn.Module):
    """Runs ``g`` under autocast (bf16/fp16) and returns float32, so the log-det series, its
    accumulation and the fixed-point inverse stay in float32 while the matmuls run cheaper."""

    def __init__(self, g: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.g, self.dtype = g, dtype

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(x.device.type, dtype=self.dtype):
            out = self.g(x)
        return out.to(x.dtype)


class InvertibleResidualBlock(nn.Module):
    """Residual block ``y = x + g(x)``, invertible when ``Lip(g) < 1`` (i-ResNet, Thm. 1).

    Arguments:
        g: the residual branch, a samplewise ``nn.Module`` built from Lipschitz-constrained
            layers (e.g. :class:`SpectralLinear`, :class:`LipSwish`) so that ``Lip(g) < 1``.
        logdet: estimator of ``log det(I + J_g)`` (default :class:`PowerSeriesLogDet`); the
            attribute ``logdet_estimator`` may be swapped any time (e.g. exact at evaluation).
        inverse: solver of ``x + g(x) = y`` (default :class:`FixedPointInverse`); attribute
            ``inverse_solver``.

    Shapes: ``x``, ``y``: ``(B, *event)``; ``logdet``: ``(B,)``.

    Example:
        >>> import torch, iresnet
        >>> g = torch.nn.Sequential(iresnet.SpectralLinear(2, 16, coeff=0.9), iresnet.LipSwish(),
        ...                         iresnet.SpectralLinear(16, 2, coeff=0.9))
        >>> block = iresnet.InvertibleResidualBlock(g, logdet=iresnet.ExactLogDet()).eval()
        >>> x = torch.randn(5, 2)
        >>> y, logdet = block(x)
        >>> bool(torch.allclose(block.inverse(y), x, atol=1e-5)), tuple(logdet.shape)
        (True, (5,))
    """

    def __init__(
        self,
        g: nn.Module,
        logdet: LogDetEstimator | None = None,
        inverse: FixedPointInverse | None = None,
    ) -> None:
        super().__init__()
        self.g = g
        self.logdet_estimator: LogDetEstimator = logdet if logdet is not None else PowerSeriesLogDet()
        self.inverse_solver: FixedPointInverse = inverse if inverse is not None else FixedPointInverse()
        #: ``torch.bfloat16``/``torch.float16`` runs ``g`` under autocast (mixed precision)
        self.branch_dtype: torch.dtype | None = None

    def _branch(self) -> nn.Module:
        return self.g if self.branch_dtype is None else _AutocastBranch(self.g, self.branch_dtype)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        gx, logdet = self.logdet_estimator(self._branch(), x)
        return x + gx, logdet

    def inverse(self, y: Tensor) -> Tensor:
        # In eval mode the certified L gives the a-priori Banach bound in the diagnostics; in
        # training mode the weights move every step and certifying each call would cost more.
        lipschitz = None if self.training else self.lipschitz_bound()
        with frozen_normalisation(self.g):
            # Always float32: a bf16 branch has a precision floor far above the solver's atol.
            return self.inverse_solver(self.g, y, lipschitz=lipschitz, where=type(self).__name__)

    @property
    def last_inverse_diagnostics(self) -> InverseDiagnostics | None:
        return self.inverse_solver.last_diagnostics

    def lipschitz_bound(self) -> float:
        """Upper bound of ``Lip(g)`` from its layers' converged norms (``inf`` if unknown)."""
        return lipschitz_bound_of(self.g)


class ActNorm(nn.Module):
    """Per-channel affine map ``y = (x + b) * exp(s)`` (Glow, Kingma & Dhariwal 2018).

    Data-dependent initialisation on the first training batch: ``b = -mean``, ``s = -log std``
    per channel, so activations start standardised. A channel with (near-)zero spread keeps
    ``s = 0`` instead of dividing by zero. The ``initialized`` buffer is saved with the weights,
    so a loaded model is never re-initialised.

    Arguments:
        num_features: channels ``C``.
        eps: spread below which a channel is treated as constant.

    Shapes: ``(B, C)`` or ``(B, C, H, W)``; ``logdet = H * W * sum(s)``, shape ``(B,)``.
    """

    def __init__(self, num_features: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.log_scale = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("initialized", torch.tensor(False))
        self.eps = eps

    def _view(self, t: Tensor, x: Tensor) -> Tensor:
        return t.view(1, -1, *([1] * (x.dim() - 2)))

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Set ``b``, ``s`` from a batch ``x`` (called automatically on the first training call)."""
        dims = [0, *range(2, x.dim())]
        mean = x.mean(dim=dims)
        std = x.std(dim=dims, unbiased=False) if x.numel() > x.shape[1] else torch.ones_like(mean)
        safe = std > self.eps
        self.bias.copy_(-mean)
        self.log_scale.copy_(torch.where(safe, -torch.log(std.clamp_min(self.eps)), torch.zeros_like(std)))
        self.initialized.fill_(True)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.training and not bool(self.initialized):
            self.initialize(x)
        y = (x + self._view(self.bias, x)) * self._view(self.log_scale, x).exp()
        spatial = x[0, 0].numel()
        logdet = (self.log_scale.sum() * spatial).expand(x.shape[0])
        return y, logdet

    def inverse(self, y: Tensor) -> Tensor:
        return y * self._view(-self.log_scale, y).exp() - self._view(self.bias, y)


class Squeeze(nn.Module):
    """Invertible down-sampling (space-to-depth): ``(B, C, H, W) -> (B, C f^2, H/f, W/f)``.

    A permutation of the entries, so ``logdet = 0`` (i-ResNet sec. 5, as in Real NVP).
    """

    def __init__(self, factor: int = 2) -> None:
        super().__init__()
        if factor < 1:
            raise ValueError(f"factor must be positive, got {factor}")
        self.factor = factor

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.dim() != 4 or x.shape[-1] % self.factor or x.shape[-2] % self.factor:
            raise ValueError(
                f"Squeeze(factor={self.factor}) needs (B, C, H, W) with H and W divisible by "
                f"{self.factor}, got shape {tuple(x.shape)}"
            )
        return F.pixel_unshuffle(x, self.factor), x.new_zeros(x.shape[0])

    def inverse(self, y: Tensor) -> Tensor:
        return F.pixel_shuffle(y, self.factor)


class Flatten(nn.Module):
    """Reshape ``(B, *shape) -> (B, prod(shape))``: a permutation-free relabelling, ``logdet = 0``.

    Multi-scale flows enter the flat *state* with it (see :class:`OnActive`).

    Arguments:
        shape: the event shape of the input (restored by :meth:`inverse`).
    """

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = tuple(int(s) for s in shape)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x.flatten(1), x.new_zeros(x.shape[0])

    def inverse(self, y: Tensor) -> Tensor:
        return y.reshape(y.shape[0], *self.shape)

    def extra_repr(self) -> str:
        return f"shape={self.shape}"


class OnActive(nn.Module):
    """Apply ``inner`` to the *active* leading part of a flat multi-scale state.

    Multi-scale factor-out (Real NVP sec. 3.6; i-ResNet sec. 5; Residual Flows app. E) sends half
    of the channels straight to the latent after each scale. We keep one flat state
    ``s = [a | z_done]`` of shape ``(B, D)``: the first ``prod(in_shape)`` entries are the active
    tensor ``a`` (channel-major), the rest are latents already factored out. Because ``a`` is
    stored channel-major, factoring out its last channels is the identity on ``s``: only the
    boundary moves, so the next transform is wrapped with a smaller ``in_shape``. Then

        ``forward(s) = [inner(a) | z_done]``,  ``logdet = logdet_inner(a)``

    (the Jacobian is block-diagonal with an identity block), and ``inverse`` applies
    ``inner.inverse`` to the leading ``prod(out_shape)`` entries.

    Arguments:
        inner: a transform on ``(B, *in_shape)`` returning ``(B, *out_shape)``.
        in_shape, out_shape: its event shapes (equal sizes; they differ for :class:`Squeeze`).

    Shapes: ``s``: ``(B, D)`` with ``D >= prod(in_shape)``; ``logdet``: ``(B,)``.
    """

    def __init__(
        self, inner: nn.Module, in_shape: tuple[int, ...], out_shape: tuple[int, ...]
    ) -> None:
        super().__init__()
        self.inner = inner
        self.in_shape = tuple(int(s) for s in in_shape)
        self.out_shape = tuple(int(s) for s in out_shape)
        if torch.Size(self.in_shape).numel() != torch.Size(self.out_shape).numel():
            raise ValueError(
                f"OnActive: in_shape {self.in_shape} and out_shape {self.out_shape} differ in size"
            )

    def forward(self, s: Tensor) -> tuple[Tensor, Tensor]:
        n = torch.Size(self.in_shape).numel()
        y, logdet = self.inner(s[:, :n].reshape(s.shape[0], *self.in_shape))
        return torch.cat([y.flatten(1), s[:, n:]], dim=1), logdet

    def inverse(self, s: Tensor) -> Tensor:
        n = torch.Size(self.out_shape).numel()
        x = self.inner.inverse(s[:, :n].reshape(s.shape[0], *self.out_shape))
        return torch.cat([x.flatten(1), s[:, n:]], dim=1)

    @property
    def last_inverse_diagnostics(self) -> InverseDiagnostics | None:
        """The wrapped block's diagnostics (so :attr:`Flow.inverse_diagnostics` sees it)."""
        return getattr(self.inner, "last_inverse_diagnostics", None)

    def extra_repr(self) -> str:
        return f"in_shape={self.in_shape}, out_shape={self.out_shape}"



def set_branch_precision(model: nn.Module, precision: str) -> None:
    """Mixed precision where it is safe: ``"bf16"``/``"fp16"`` runs every residual branch ``g``
    under autocast while log-dets and inverses stay in float32; ``"fp32"`` turns it off."""
    dtypes = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision not in dtypes:
        raise ValueError(f"precision must be one of {list(dtypes)}, got {precision!r}")
    for m in model.modules():
        if isinstance(m, InvertibleResidualBlock):
            m.branch_dtype = dtypes[precision]
