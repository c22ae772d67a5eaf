"""The invertible residual block ``y = x + g(x)`` (i-ResNet, arXiv:1811.00995, eq. 1 and
Theorem 1): invertible when ``Lip(g) < 1``, inverted by the Banach fixed point, its log-det
estimated by a :class:`~iresnet.ops.LogDetEstimator`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from ..nn import frozen_normalisation, lipschitz_bound_of
from ..ops import FixedPointInverse, InverseDiagnostics, LogDetEstimator, PowerSeriesLogDet
from .base import Transform

__all__ = ["InvertibleResidualBlock", "set_branch_precision", "swap_logdets"]


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


class InvertibleResidualBlock(Transform):
    """Residual block ``y = x + g(x)``, invertible when ``Lip(g) < 1`` (i-ResNet,
    arXiv:1811.00995, Theorem 1).

    Arguments:
        g: the residual branch, a samplewise ``nn.Module`` built from Lipschitz-constrained
            layers (e.g. :class:`SpectralLinear`, :class:`LipSwish`) so that ``Lip(g) < 1``.
        logdet: estimator of ``log det(I + J_g)`` (default :class:`PowerSeriesLogDet`); the
            attribute ``logdet_estimator`` may be swapped any time (e.g. exact at evaluation).
        inverse: solver of ``x + g(x) = y`` (default :class:`FixedPointInverse`); attribute
            ``inverse_solver``. Estimators and solvers keep no state, so blocks may share them.

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
        self.logdet_estimator: LogDetEstimator = (
            logdet if logdet is not None else PowerSeriesLogDet()
        )
        self.inverse_solver: FixedPointInverse = (
            inverse if inverse is not None else FixedPointInverse()
        )
        #: ``torch.bfloat16``/``torch.float16`` runs ``g`` under autocast (mixed precision)
        self.branch_dtype: torch.dtype | None = None

    def _branch(self) -> nn.Module:
        return self.g if self.branch_dtype is None else _AutocastBranch(self.g, self.branch_dtype)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        gx, logdet = self.logdet_estimator(self._branch(), x)
        return x + gx, logdet

    def inverse(self, y: Tensor) -> Tensor:
        return self.inverse_with_diagnostics(y)[0]

    def inverse_with_diagnostics(self, y: Tensor) -> tuple[Tensor, list[InverseDiagnostics]]:
        """The fixed-point inverse and its :class:`~iresnet.ops.InverseDiagnostics` (one)."""
        # In eval mode the certified L gives the a-priori Banach bound in the diagnostics; in
        # training mode the weights move every step and certifying each call would cost more.
        lipschitz = None if self.training else self.lipschitz_bound()
        with frozen_normalisation(self.g):
            # The branch runs in full precision: a bf16 branch has a precision floor far above
            # the solver's tolerance.
            x, diagnostics = self.inverse_solver.solve(
                self.g, y, lipschitz=lipschitz, where=type(self).__name__
            )
        return x, [diagnostics]

    def lipschitz_bound(self) -> float:
        """Upper bound of ``Lip(g)`` from its layers' converged norms (``inf`` if unknown)."""
        return lipschitz_bound_of(self.g)


def set_branch_precision(model: nn.Module, precision: str) -> None:
    """Mixed precision where it is safe: ``"bf16"``/``"fp16"`` runs every residual branch ``g``
    under autocast while log-dets and inverses stay in float32; ``"fp32"`` turns it off."""
    dtypes = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision not in dtypes:
        raise ValueError(f"precision must be one of {list(dtypes)}, got {precision!r}")
    for m in model.modules():
        if isinstance(m, InvertibleResidualBlock):
            m.branch_dtype = dtypes[precision]


@contextlib.contextmanager
def swap_logdets(model: nn.Module, estimator: LogDetEstimator | None) -> Iterator[None]:
    """Inside the block every residual block of ``model`` uses ``estimator`` (None: leave them
    as they are); the previous estimators are restored on exit, also after an error.

    Example:
        >>> import torch, iresnet
        >>> flow = iresnet.ResidualFlow(2, transforms=1, hidden_features=(4,), logdet="roulette")
        >>> with swap_logdets(flow, iresnet.ExactLogDet()):
        ...     exact = flow.log_prob(torch.zeros(1, 2))
        >>> type(flow.transform[1].logdet_estimator).__name__
        'RussianRouletteLogDet'
    """
    blocks = [m for m in model.modules() if isinstance(m, InvertibleResidualBlock)]
    saved = [b.logdet_estimator for b in blocks]
    if estimator is not None:
        for b in blocks:
            b.logdet_estimator = estimator
    try:
        yield
    finally:
        for b, est in zip(blocks, saved, strict=True):
            b.logdet_estimator = est
