"""The monotone block of Monotone Flows: ``f = (Id - g) o (Id + g)^{-1} = 2 (Id + g)^{-1} - Id``.

With ``Lip(g) <= L < 1``, ``Id + g`` and ``Id - g`` are invertible (i-ResNet Theorem 1), and
``f = 2 (Id + g)^{-1} - Id`` is the Cayley operator of ``g`` (Ahn et al., the monotone
formulation: ``f`` is monotone, and ``g`` is the Cayley operator of ``f``). It is computed
by one fixed-point solve: ``z + g(z) = x`` for ``z`` (``z <- x - g(z)``), then
``y = z - g(z) = 2 z - x``; its inverse by the mirror solve ``w - g(w) = y`` (``w <- y + g(w)``),
then ``x = 2 w - y``. Its Jacobian is ``(I - J_g(z)) (I + J_g(z))^{-1}``, so

    log|det J_f(x)| = log det(I - J_g(z)) - log det(I + J_g(z)) = -2 sum_{k odd} tr(J_g(z)^k) / k,

the even powers of the two series cancelling.

The authors' code (github.com/mlvlab/MonotoneFlows, ``monotone_resolvent``) computes
``sqrt(2) (Id + g')^{-1}(sqrt(2) x) - x``: the same map with ``g(z) = g'(sqrt(2) z) / sqrt(2)``,
which has the same Lipschitz constant, so both parametrise the same maps (checked numerically to
``1e-15``); we keep the unscaled form.

**Bounds.** Writing ``dz`` for the difference of two solutions and ``dg`` for that of ``g`` at
them (``||dg|| <= L ||dz||``): ``dx = dz + dg`` and ``dy = dz - dg``, so
``(1 - L) ||dz|| <= ||dx||, ||dy|| <= (1 + L) ||dz||``. Hence ``f`` and ``f^{-1}`` are both
``(1 + L)/(1 - L)``-Lipschitz, where the residual block ``x + g(x)`` is ``(1 + L)``- and its
inverse ``1/(1 - L)``-Lipschitz: the looser Lipschitz constraint the paper is after. And
``<dy, dx> = ||dz||^2 - ||dg||^2 >= (1 - L)/(1 + L) ||dx||^2``: ``f`` is strongly monotone,
as the Cayley operator of a maximal monotone operator is.

References:
    - Ahn, Kim, Hong, Kim, "Invertible Monotone Operators for Normalizing Flows", NeurIPS 2022,
      arXiv:2210.08176 (the monotone formulation via the Cayley operator).
    - Behrmann et al., "Invertible Residual Networks", ICML 2019, arXiv:1811.00995.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..checks import check_input
from ..nn import frozen_normalisation
from ..nn.spectral import float64_forward
from .base import InverseReport
from .residual import InvertibleResidualBlock

__all__ = ["MonotoneBlock"]


class _Negated(nn.Module):
    """``w -> -g(w)``: the mirror solve ``w - g(w) = y`` is the solver's ``w + (-g)(w) = y``;
    keeps ``g``'s parameters and closed-over tensors visible to the implicit gradient."""

    def __init__(self, g: nn.Module) -> None:
        super().__init__()
        self.g = g

    def forward(self, w: Tensor) -> Tensor:
        return -self.g(w)

    @property
    def grad_inputs(self) -> tuple[Tensor, ...]:
        return tuple(getattr(self.g, "grad_inputs", ()))


class MonotoneBlock(InvertibleResidualBlock):
    """Monotone block ``y = 2 (Id + g)^{-1}(x) - x``, the Cayley operator of ``g`` (Monotone Flows).

    With ``Lip(g) < 1`` the block is a bijection whose forward and inverse are both
    ``(1 + L)/(1 - L)``-Lipschitz and strongly monotone (see the module docstring), while a
    residual block ``x + g(x)`` with the same branch is at most ``(1 + L)``-Lipschitz. It takes
    the same branches, estimators and solvers as
    [`InvertibleResidualBlock`][iresnet.transforms.residual.InvertibleResidualBlock], and is one
    for [`certify`][iresnet.certificate.certify],
    [`swap_logdets`][iresnet.transforms.residual.swap_logdets] and
    [`set_branch_precision`][iresnet.transforms.residual.set_branch_precision]: its invertibility
    condition is the same ``Lip(g) < 1``.

    ``forward`` solves ``z + g(z) = x`` with the block's ``inverse_solver`` (the spectral layers
    frozen for the solve, after one power-iteration step in training mode), returns
    ``y = z - g(z)`` and the log-det ``log det(I - J_g(z)) - log det(I + J_g(z))`` from
    ``logdet_estimator.cayley`` (exact: two ``slogdet``s; series and roulettes: the odd terms of
    the same series, ``-2 sum_{k odd} tr(J^k)/k``). Gradients reach ``x`` and the parameters
    through ``z`` by implicit differentiation (``dz = (I + J_g)^{-1}(dx - dg)``), never by
    unrolling the solve. ``inverse`` solves ``w - g(w) = y`` and returns ``x = 2 w - y``; in eval
    mode its report certifies the error of ``x`` from the float64 residual.

    Cost: each forward runs the solve (tens of branch evaluations without a graph, one host
    synchronisation per iteration for the stopping test) before the residual block's cost, so
    the forward is not free of host synchronisation, and ``torch.compile`` breaks its graph at
    the solve; the log-det after it is the residual block's.

    A conditional branch ``g(x, c)`` makes a conditional block, as for the residual block:
    ``forward``, ``inverse`` and ``inverse_with_diagnostics`` take the contexts as ``c=``.

    Arguments:
        g: the branch, a samplewise module with ``Lip(g) < 1`` (e.g.
            [`mlp_branch`][iresnet.nn.branches.mlp_branch],
            [`conv_branch`][iresnet.nn.branches.conv_branch],
            [`dense_branch`][iresnet.nn.dense.dense_branch]).
        logdet: estimator with a ``cayley`` method (default
            [`PowerSeriesLogDet`][iresnet.ops.logdet.PowerSeriesLogDet]); attribute
            ``logdet_estimator``.
        inverse: the solver of both directions (default
            [`FixedPointInverse`][iresnet.ops.fixed_point.FixedPointInverse]); attribute
            ``inverse_solver``. Its tolerance sets the accuracy of ``forward`` too.

    Shapes:
        ``x``, ``y``: ``(B, *event)``; ``logdet``: ``(B,)``, in nats.

    Raises:
        InverseNotConvergedError: from ``forward`` or ``inverse`` when a solve misses its
            tolerance and the solver's ``on_failure="raise"`` (else a warning).
        TypeError: an estimator without a Cayley form (from ``forward``), or an input that is
            not a tensor.
        DataError: an empty, boolean, complex or integer input, one of another dtype or device
            than ``g``, a conditional block called without contexts, an unconditional one with
            them, or contexts whose batch does not match.
        ValueError: from ``forward`` with an [`ExactLogDet`][iresnet.ops.logdet.ExactLogDet],
            an input of more than its ``max_dim`` values per sample.

    References:
        - Ahn et al., arXiv:2210.08176 (the monotone formulation, the Cayley operator).

    Examples:
        >>> import torch, iresnet
        >>> g = iresnet.nn.mlp_branch(2, (16,), coeff=0.9)
        >>> block = iresnet.transforms.MonotoneBlock(g, logdet=iresnet.ExactLogDet()).eval()
        >>> x = torch.randn(5, 2)
        >>> y, logdet = block(x)
        >>> bool(torch.allclose(block.inverse(y), x, atol=1e-5)), tuple(logdet.shape)
        (True, (5,))
    """

    def forward(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_input(x, "MonotoneBlock", like=self.g)
        g = self._bound(x, c, "MonotoneBlock")
        if self.training:
            with torch.no_grad():
                g(x)  # this step's power iteration, before the map is frozen for the solve
        with frozen_normalisation(self.g):
            z = self.inverse_solver(g, x, where="MonotoneBlock (forward)")
            # The solver's implicit gradient is a hook on z; the estimator's own products
            # (vector-Jacobian products with respect to its input) must not trigger it, so it
            # differentiates with respect to a copy, through which the loss's gradient still
            # reaches z, and the hook, once.
            z = z.clone()
            gz, logdet = self.logdet_estimator.cayley(self._branch(g), z)
        return z - gz, logdet

    def inverse_with_diagnostics(
        self, y: Tensor, c: Tensor | None = None
    ) -> tuple[Tensor, InverseReport]:
        """``x = 2 w - y`` with ``w - g(w) = y`` solved by ``w <- y + g(w)``, and the report of
        the solve. In eval mode the report's error bound certifies the returned ``x``:
        ``||x - x*|| <= ||x - (2 w - y)|| + 2 ||y - w + g(w)|| / (1 - L)``, the residual and the
        rounding of ``2 w - y`` evaluated in float64 (``w -> w - g(w)`` shrinks distances by at
        most ``1 - L``)."""
        check_input(y, "MonotoneBlock.inverse", like=self.g)
        g = self._bound(y, c, "MonotoneBlock.inverse")
        lipschitz = self._inverse_lipschitz_bound(y, c)
        with frozen_normalisation(self.g):
            w, diagnostics = self.inverse_solver.solve(
                _Negated(g), y, lipschitz=lipschitz, where="MonotoneBlock.inverse"
            )
        x = 2 * w - y
        if lipschitz is not None:
            diagnostics.a_posteriori_bound = self._mirror_bound(g, w, x, y, lipschitz)
        return x, InverseReport([diagnostics], diagnostics.a_posteriori_bound)

    def _mirror_bound(
        self, g: nn.Module, w: Tensor, x: Tensor, y: Tensor, lipschitz: float
    ) -> Tensor | None:
        """The certified error of ``x`` (see ``inverse_with_diagnostics``); None where ``g``
        cannot be evaluated in float64 or ``L >= 1``."""
        if not lipschitz < 1:
            return None
        g64 = float64_forward(g, w.detach())
        if g64 is None:
            return None
        w64, y64, x64 = w.detach().double(), y.detach().double(), x.detach().double()
        residual = (y64 - w64 + g64).flatten(1).norm(dim=1)
        rounding = (x64 - (2 * w64 - y64)).flatten(1).norm(dim=1)
        scale = y64.flatten(1).norm(dim=1) + w64.flatten(1).norm(dim=1) + g64.flatten(1).norm(dim=1)
        return rounding + 2 * (residual + 1e-9 * scale) / (1.0 - lipschitz) + 1e-9 * scale

    def forward_lipschitz(self) -> float:
        """``(1 + L)/(1 - L)``, an upper bound of ``Lip(f)`` from the certified ``L >= Lip(g)``
        (see the module docstring); ``inf`` where ``L >= 1`` or unknown."""
        try:
            lip = self.lipschitz_bound()
        except RuntimeError:  # a convolution that has not seen an input: no known norm
            return math.inf
        return (1.0 + lip) / (1.0 - lip) if lip < 1 else math.inf

    def inverse_lipschitz(self) -> float:
        """``(1 + L)/(1 - L)``: the inverse is the Cayley operator of ``-g``, with the same
        bound as the forward; ``inf`` where ``L >= 1`` or unknown."""
        return self.forward_lipschitz()
