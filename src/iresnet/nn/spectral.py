"""Spectral normalisation and Lipschitz bounds of linear maps.

A residual block ``y = x + g(x)`` is invertible when ``Lip(g) < 1`` (i-ResNet, Theorem 1). With
1-Lipschitz activations between them, ``Lip(g) <= prod_i ||W_i||_2``, so it suffices that every
linear map of ``g`` has operator norm below 1 (i-ResNet sec. 2.1; Miyato et al. eq. (7)). Each
weight is rescaled to

    W_hat = W / max(1, sigma / c)

(i-ResNet eq. (2)), where ``sigma`` estimates ``||W||_2`` by power iteration with persistent
vectors (Miyato et al. app. A, eq. (18)-(19)). For a convolution the power iteration runs on the
convolution itself, with ``conv2d`` and ``conv_transpose2d`` as the map and its adjoint, as
i-ResNet sec. 2.1 does following Gouk et al.

The math is in plain functions ([`power_iteration`][iresnet.nn.spectral.power_iteration],
[`linear_operator_norm`][iresnet.nn.spectral.linear_operator_norm]); the layers
[`SpectralLinear`][iresnet.nn.spectral.SpectralLinear] and
[`SpectralConv2d`][iresnet.nn.spectral.SpectralConv2d] call them.

References:
    - Behrmann et al., "Invertible Residual Networks", ICML 2019, arXiv:1811.00995.
    - Miyato et al., "Spectral Normalization for Generative Adversarial Networks", ICLR 2018,
      arXiv:1802.05957.
    - Gouk et al., "Regularisation of Neural Networks by Enforcing Lipschitz Continuity",
      arXiv:1804.04368.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_input, check_size
from ..errors import DataError
from .activations import Adjoint, Pairs, Pullback
from .attributes import temporarily_set
from .bounds import Bound, conv2d_exact_norm, conv2d_operator_bound, linear_operator_bound

__all__ = [
    "power_iteration",
    "linear_operator_norm",
    "SpectralLinear",
    "SpectralConv2d",
    "frozen_normalisation",
    "spectral_penalty",
    "float64_forward",
    "conv_layout",
]

_EPS = 1e-12
_CHANNELS_LAST = True  # A/B switch for benchmarks (off: every layout as given)


def _normalize(t: Tensor) -> Tensor:
    # linalg.vector_norm directly: Tensor.norm goes through a Python wrapper to the same call
    return t / torch.linalg.vector_norm(t).clamp_min(_EPS)


def conv_layout(t: Tensor) -> Tensor:
    """``t`` in the memory layout the convolutions of this module run fastest in: a 4-D CPU
    tensor in channels-last order (``torch.channels_last``; no copy if it is already), anything
    else unchanged. Same values and shape; only the strides differ.

    oneDNN's CPU convolutions work on channels-last data: given the default layout, every call
    reorders its input, its kernel and its result (forward and backward), and element-wise work
    between them follows whichever layout it is handed. A residual block with spectral
    convolutions keeps its input channels-last, and a chain of transforms hands its result
    back in the default layout (``ComposedTransform``). The step it saves is measured in
    ``benchmarks/step_vs_normflows.py`` (the convolutional rows). On other devices the layout
    is left to the caller.

    Examples:
        >>> x = torch.zeros(2, 3, 4, 4)
        >>> conv_layout(x).is_contiguous(memory_format=torch.channels_last)
        True
        >>> conv_layout(torch.zeros(2, 3)).is_contiguous()
        True
    """
    if _CHANNELS_LAST and t.dim() == 4 and t.device.type == "cpu":
        return t.contiguous(memory_format=torch.channels_last)
    return t


def _full_precision(t: Tensor) -> torch.autocast:
    """Autocast off on ``t``'s device: the spectral norm's products (power iteration, ``sigma``)
    run in the weight's own precision. Under ``train.precision=bf16`` they ran in bfloat16, so
    a fresh convolution stored bfloat16 singular vectors (which a later float32 call refused)
    and ``sigma`` carried bfloat16's rounding into the normalisation."""
    return torch.autocast(t.device.type, enabled=False)


def _pixel_rows(t: Tensor) -> Tensor:
    """A channels-last ``(B, C, H, W)`` map as its ``(B * H * W, C)`` rows (a view)."""
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])


def _from_pixel_rows(rows: Tensor, like: Tensor) -> Tensor:
    """``(B * H * W, C')`` rows back to a channels-last ``(B, C', H, W)`` map, ``like``'s
    batch and size (a view)."""
    b, _, h, w = like.shape
    return rows.view(b, h, w, -1).permute(0, 3, 1, 2)


def _maps(t: Tensor) -> Tensor:
    """Tangents ``(*lead, C, H, W)`` (``lead`` the probes, then the batch if there is one) as
    one batch of maps, ``(prod(lead), C, H, W)``."""
    return t.reshape(-1, *t.shape[-3:])


def _unmaps(maps: Tensor, like: Tensor) -> Tensor:
    """``(prod(lead), C', H', W')`` maps back to ``like``'s leading dimensions,
    ``(*lead, C', H', W')``."""
    return maps.reshape(*like.shape[:-3], *maps.shape[1:])


def _check_conv_input(x: Tensor, layer: nn.Module, in_channels: int) -> None:
    """One clear error unless ``x`` is a ``(B, C_in, H, W)`` batch or one ``(C_in, H, W)`` map
    (as ``torch.nn.Conv2d`` takes them)."""
    check_input(x, "SpectralConv2d", like=layer)
    if x.dim() not in (3, 4):
        raise DataError(
            f"SpectralConv2d: expected a (B, C, H, W) batch or one (C, H, W) map, got a tensor "
            f"of shape {tuple(x.shape)}"
        )
    check_size(x, "SpectralConv2d", -3, in_channels, "input channels")


def _expand_batch(matrix: Tensor, batch: int) -> Tensor:
    """``matrix`` as a ``(batch, *matrix.shape)`` view (no copy), for ``torch.bmm``."""
    return matrix.unsqueeze(0).expand(batch, *matrix.shape)


def power_iteration(
    forward: Callable[[Tensor], Tensor],
    adjoint: Callable[[Tensor], Tensor],
    v: Tensor,
    n_iterations: int,
    *,
    tol: float | None = None,
    form: str = "uv",
) -> tuple[Tensor, Tensor, Tensor, int]:
    """Normalised power iteration for the top singular pair of a linear map ``A``.

    The ``"uv"`` form alternates ``v <- A^T u / ||A^T u||`` and ``u <- A v / ||A v||`` and reads
    ``sigma = u^T A v`` (Miyato et al., app. A, eq. (18)-(19)). Both vectors are normalised at
    every step, so the iteration cannot overflow however large ``A`` is (it is scale-invariant);
    ``sigma`` is at most ``||A||_2`` and converges to it from below (for a start not orthogonal
    to the top singular vector). ``A`` is given as two functions, so it may be any linear map, a
    convolution on a fixed input shape included (i-ResNet sec. 2.1).

    Args:
        forward: ``v -> A v``.
        adjoint: ``u -> A^T u``.
        v: starting right vector, of any shape ``forward`` accepts; need not be normalised.
        n_iterations: iterations to run, or the cap when ``tol`` is given.
        tol: stop once the relative change of ``sigma`` between iterations is at most ``tol``.
        form: ``"uv"`` (alternating ``u``/``v`` updates, ``sigma = u^T A v``) or ``"gram"``
            (power iteration on ``A^T A``: ``v <- A^T A v / ||A^T A v||``,
            ``sigma = ||A v|| = sqrt(v^T A^T A v)``). Same limit; the forms differ in what
            they carry.

    Returns:
        ``(u, v, sigma, iterations)``: ``u`` (shape of ``A v``) and ``v`` (shape of the start)
            unit vectors, ``sigma`` a 0-d tensor, ``iterations`` the number run.

    Raises:
        ValueError: an unknown ``form``.

    References:
        - Miyato et al., arXiv:1802.05957, sec. 2.2 and app. A, eq. (18)-(19).

    Examples:
        >>> A = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
        >>> u, v, sigma, n = power_iteration(lambda v: A @ v, lambda u: A.T @ u,
        ...                                  torch.ones(2), 100, tol=1e-9)
        >>> round(float(sigma), 4)
        3.0
    """
    if form not in ("uv", "gram"):
        raise ValueError(f"form must be 'uv' or 'gram', got {form!r}")
    v = _normalize(v)
    if form == "gram":
        sigma = forward(v).norm()
        done = 0
        for done in range(1, n_iterations + 1):  # noqa: B007 - `done` is returned
            v = _normalize(adjoint(forward(v)))
            new_sigma = forward(v).norm()  # sqrt(v^T A^T A v) for unit v
            converged = tol is not None and abs(new_sigma - sigma) <= tol * new_sigma.abs()
            sigma = new_sigma
            if converged:
                break
        return _normalize(forward(v)), v, sigma, done
    av = forward(v)
    u = _normalize(av)
    done = 0
    if tol is None:  # a fixed number of steps: sigma is read once, at the end
        for done in range(1, n_iterations + 1):  # noqa: B007 - `done` is returned
            v = _normalize(adjoint(u))
            av = forward(v)
            u = _normalize(av)
        return u, v, (u * av).sum(), done
    sigma = (u * av).sum()
    for done in range(1, n_iterations + 1):  # noqa: B007 - `done` is returned
        v = _normalize(adjoint(u))
        av = forward(v)
        u = _normalize(av)
        new_sigma = (u * av).sum()
        converged = abs(new_sigma - sigma) <= tol * new_sigma.abs()
        sigma = new_sigma
        if converged:
            break
    return u, v, sigma, done


def linear_operator_norm(
    forward: Callable[[Tensor], Tensor],
    adjoint: Callable[[Tensor], Tensor],
    v: Tensor,
    *,
    tol: float = 1e-7,
    max_iter: int = 5000,
) -> float:
    """Converged power-iteration estimate of ``||A||_2`` (no gradient).

    Runs [`power_iteration`][iresnet.nn.spectral.power_iteration] from ``v`` until the relative
    change of ``sigma`` is at most ``tol``. The result is an estimate from below, not a bound:
    with two nearly equal top singular values it can stop short of ``||A||_2``.

    Args:
        forward: ``v -> A v``.
        adjoint: ``u -> A^T u``.
        v: starting vector, of any shape ``forward`` accepts (its dtype sets the precision).
        tol: relative tolerance on the change of ``sigma``.
        max_iter: iteration cap.

    Returns:
        The estimate of ``||A||_2`` as a Python float.

    References:
        - Miyato et al., arXiv:1802.05957, app. A (the power iteration).

    Examples:
        >>> A = torch.diag(torch.tensor([2.0, 0.5], dtype=torch.float64))
        >>> v = torch.ones(2, dtype=torch.float64)
        >>> round(linear_operator_norm(lambda v: A @ v, lambda u: A.T @ u, v), 6)
        2.0
    """
    with torch.no_grad():
        _, _, sigma, _ = power_iteration(forward, adjoint, v, max_iter, tol=tol)
    return float(sigma)


@dataclass(frozen=True)
class _EvalState:
    """What eval mode computed, and for which weight: the top singular pair ``(u, v)``."""

    weight: Tensor
    coeff: float
    u: Tensor
    v: Tensor


def _same_values(snapshot: Tensor | None, t: Tensor) -> bool:
    """Whether ``snapshot`` holds exactly ``t``'s values (and dtype, device, shape)."""
    return (
        snapshot is not None
        and snapshot.dtype == t.dtype
        and snapshot.device == t.device
        and snapshot.shape == t.shape
        and bool(torch.equal(snapshot, t))
    )


NORMS = ("spectral", "certified", "frobenius", "penalty")
"""How a layer bounds its weight: by the power-iteration estimate of ``||W||_2`` (``spectral``,
cheap; the applied norm can exceed ``coeff`` by what the estimate misses), by a provable upper
bound of ``||W||_2`` (``certified``: the exact SVD of a linear layer, the exact norm of a
convolution's circular embedding; ``||W_hat||_2 <= coeff`` by construction, dearer), by the
cheaper and looser ``||W||_F`` (``frobenius``), or not at all while still estimating ``||W||_2``
for a penalty term (``penalty``; no guarantee)."""

EXACT_NORM_MAX_DIM = 1024
"""Linear layers up to this many rows or columns use an exact SVD for their eval-mode norm and
certificate instead of converged power iteration (see ``_exact_norm``)."""


class _SpectralNormMixin:
    """Shared state and logic of the spectrally normalised layers.

    Subclasses provide ``_operator(weight) -> (forward, adjoint)`` and ``_initial_v()``.

    Training mode: each call runs ``n_power_iterations`` steps from the persistent vectors
    (buffers ``u``, ``v``), then rescales the weight with a gradient through ``sigma`` (as in
    Miyato et al.'s spectral normalisation). No step runs inside ``frozen_normalisation``, so
    the map stays fixed while its inverse is solved. Eval mode: iterate to convergence once (from
    the persistent vectors, without writing them), cache ``sigma``, and recompute only when the
    weight changes (its version counter moves on every in-place update, e.g. an optimiser step or
    ``load_state_dict``).
    """

    coeff: Tensor
    u: Tensor
    v: Tensor
    sigma: Tensor
    n_power_iterations: int
    eval_tol: float
    weight: nn.Parameter
    training: bool

    def _init_spectral(
        self, coeff: float, n_power_iterations: int, eval_tol: float, norm: str
    ) -> None:
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        self.norm = norm
        if not (isinstance(coeff, (int, float)) and 0.0 < coeff <= 1.0):
            raise ValueError(f"coeff must lie in (0, 1], got {coeff!r}")
        if not isinstance(n_power_iterations, int) or n_power_iterations < 1:
            raise ValueError(
                f"n_power_iterations must be a positive integer, got {n_power_iterations!r}"
            )
        if not eval_tol > 0:
            raise ValueError(f"eval_tol must be positive, got {eval_tol!r}")
        self.n_power_iterations = n_power_iterations
        self.eval_tol = eval_tol
        self._frozen = False
        # Eval mode: the weight (and coeff) the converged vectors belong to; compared by value.
        self._eval_state: _EvalState | None = None
        self._norm_cache: tuple[tuple, Tensor, float] | None = None
        self._bound_cache: tuple[tuple, Tensor, Bound] | None = None
        self._certified_cache: tuple[tuple, Tensor, Tensor] | None = None
        # Settings that are never trained are buffers, so DDP and optimisers leave them alone.
        self.register_buffer("coeff", torch.tensor(float(coeff)))  # type: ignore[attr-defined]
        self.register_buffer("sigma", torch.ones(()))  # type: ignore[attr-defined]

    def _operator(
        self, weight: Tensor
    ) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
        raise NotImplementedError

    def _power_vectors(self, n_iterations: int, tol: float | None) -> tuple[Tensor, Tensor]:
        """Power iteration from the persistent ``v``; the buffers are not written."""
        with torch.no_grad():
            w = self.weight.detach()
            # Dividing by max|W| keeps every intermediate O(1): no overflow in float32.
            scale = w.abs().max().clamp_min(_EPS)
            fwd, adj = self._operator(w / scale)
            u, v, _, _ = power_iteration(fwd, adj, self.v, n_iterations, tol=tol)
        return u, v

    def _update_vectors(self, n_iterations: int, tol: float | None) -> None:
        u, v = self._power_vectors(n_iterations, tol)
        with torch.no_grad():
            self.u.copy_(u)
            self.v.copy_(v)

    def _step_vectors(self) -> tuple[Tensor, Tensor, Tensor]:
        """A training call's power iteration: ``n_power_iterations`` steps of ``v <- A^T u /
        ||A^T u||``, ``u <- A v / ||A v||`` from the persistent ``u`` (Miyato et al., app. A,
        eq. (18)-(19)), written to the buffers.

        Returns:
            ``(u, v, sigma)``: new tensors (not the buffers, which the next training call
            overwrites), and ``sigma = u^T A v = ||A v||`` from the last step's own product
            (a 0-d tensor, no graph).
        """
        with torch.no_grad():
            w = self.weight.detach()
            # Dividing by max|W| keeps every intermediate O(1): no overflow in float32.
            scale = w.abs().max().clamp_min(_EPS)
            fwd, adj = self._operator(w / scale)
            u = self.u
            for _ in range(self.n_power_iterations):
                v = _normalize(adj(u))
                av = fwd(v)
                norm = torch.linalg.vector_norm(av)
                u = av / norm.clamp_min(_EPS)
            self.u.copy_(u)
            self.v.copy_(v)
            return u, v, norm * scale

    def _sigma_with_grad(self) -> Tensor:
        fwd, _ = self._operator(self.weight)
        # Clones: the next training call updates u, v in place, and this sigma's backward
        # must still see the vectors it was computed with (two forwards before one backward).
        return (self.u.clone() * fwd(self.v.clone())).sum()

    def _sigma_weight_grad(self, u: Tensor, v: Tensor, weight: Tensor) -> Tensor:
        """``d (u^T A v) / d weight`` for the layer's linear map ``A`` (no graph)."""
        raise NotImplementedError

    def _normalized_weight_pullback(self) -> tuple[Tensor, Pullback] | None:
        """``W_hat`` as [`normalized_weight`][iresnet.nn.spectral.SpectralLinear.normalized_weight]
        computes it (same power-iteration step, same values), without a graph, and its
        [`Pullback`][iresnet.nn.activations.Pullback] to the weight; None unless
        ``norm="spectral"``.

        ``W_hat = W / d`` with ``d = max(1, sigma / coeff)`` and ``sigma = u^T W v`` (``u``,
        ``v`` fixed), so ``dL/dW = G / d - [sigma / coeff >= 1] (<G, W> / (d^2 coeff)) u v^T``
        for ``G = dL/dW_hat`` (the clamp passes the gradient where its input reaches 1, as
        ``torch.clamp`` does)."""
        if self.norm != "spectral":
            return None
        with torch.no_grad():
            w = self.weight.detach()
            if self.training and not self._frozen:
                u, v, sigma = self._step_vectors()
            else:
                if self.training:  # copies: the next training call updates the buffers
                    u, v = self.u.clone(), self.v.clone()
                else:
                    u, v = self._eval_vectors()
                fwd, _ = self._operator(w)
                sigma = (u * fwd(v)).sum()
            self.sigma.copy_(sigma)
            ratio = sigma / self.coeff
            d = torch.clamp(ratio, min=1.0)
            w_hat = w / d
            through = (ratio >= 1).to(w.dtype) / (d * d * self.coeff)

        def pullback(grad: Tensor) -> Tensor:
            with torch.no_grad():
                coef = (grad * w).sum().mul_(through).neg_()
                return (grad / d).add_(self._sigma_weight_grad(u, v, w).mul_(coef))

        return w_hat, Pullback(self.weight, pullback)

    def _adjoint_weight(self, graph: bool = False) -> tuple[Tensor, Tensor | Pullback]:
        """``(W_hat, what carries its gradient)``: the closed-form pullback where ``norm``
        has one (and not ``graph``), else the normalised weight with its graph for both."""
        closed = None if graph else self._normalized_weight_pullback()
        if closed is None:
            w_hat = self.normalized_weight()  # type: ignore[attr-defined]
            return w_hat, w_hat
        return closed

    def _frobenius_factor(self) -> float:
        return 1.0

    def frobenius_bound(self, weight: Tensor) -> Tensor:
        """A cheap upper bound of the operator norm of ``weight``: ``||W||_F``.

        ``||W||_2 <= ||W||_F`` for a matrix. A convolution is a sum of ``k_h k_w`` shifted,
        zero-padded copies of its taps, so its norm is at most the sum of the taps' norms, hence
        at most ``sqrt(k_h k_w) ||W||_F`` (Cauchy-Schwarz); the factor is applied here.

        Args:
            weight: the layer's weight, ``(out, in)`` or ``(C_out, C_in, k_h, k_w)``.

        Returns:
            A 0-d tensor, with a gradient if ``weight`` has one.
        """
        return weight.norm() * self._frobenius_factor()

    def spectral_penalty(self) -> Tensor:
        """``sigma^2 = (u^T W v)^2`` with its gradient, from the persistent power-iteration vectors.

        The spectral-norm regulariser of Yoshida & Miyato (arXiv:1705.10941) adds
        ``lambda * sum ||W||_2^2`` to the loss; [`spectral_penalty`][iresnet.nn.spectral_penalty]
        sums these terms over a model.

        Returns:
            A 0-d tensor.
        """
        return self._sigma_with_grad() ** 2

    def normalized_weight(self) -> Tensor:
        """The weight used by the forward pass: ``W / max(1, sigma / coeff)`` (i-ResNet eq. (2)).

        ``norm="frobenius"`` divides by ``max(1, ||W||_F / coeff)`` (times the convolution
        factor, see [`frobenius_bound`][iresnet.nn.spectral.SpectralLinear.frobenius_bound])
        instead; ``norm="penalty"`` returns ``W`` unchanged. In training mode a ``"spectral"``
        layer first runs ``n_power_iterations`` steps (none inside
        [`frozen_normalisation`][iresnet.nn.frozen_normalisation]) and ``sigma`` carries a
        gradient; in eval mode ``sigma`` is computed once per weight value and cached.

        Returns:
            A tensor of the weight's shape.
        """
        if self.norm == "frobenius":
            return self.weight / torch.clamp(
                self.frobenius_bound(self.weight) / self.coeff, min=1.0
            )
        if self.norm == "certified":
            sigma = self._certified_sigma()
            with torch.no_grad():
                self.sigma.copy_(sigma)
            return self.weight / torch.clamp(sigma / self.coeff, min=1.0)
        if self.norm == "penalty":  # power iteration runs (for the penalty); no rescaling
            if self.training and not self._frozen:
                self._step_vectors()
            return self.weight
        if self.training:
            if not self._frozen:
                self._step_vectors()
            sigma = self._sigma_with_grad()
            with torch.no_grad():
                self.sigma.copy_(sigma)
        else:
            # The buffer is written when the pair is recomputed, not on every call: an eval
            # forward of unchanged weights mutates nothing (torch.func's jacrev and vmap
            # refuse a function that writes a captured buffer).
            u, v = self._eval_vectors()
            fwd, _ = self._operator(self.weight)
            # ||W||_2 = u^T W v at the top singular pair, and d sigma / dW = u v^T there: the
            # eval-mode gradient carries the dependence of sigma on W as training mode does.
            sigma = (u * fwd(v)).sum()
        return self.weight / torch.clamp(sigma / self.coeff, min=1.0)

    def _eval_vectors(self) -> tuple[Tensor, Tensor]:
        """The top singular pair of the weight's current values (computed once per value).

        Recomputed whenever the weight's values, dtype or device, ``coeff`` or the input size
        differ from those it was computed for, however they changed (an optimiser step,
        ``load_state_dict``, a write through ``.data``, ``copy_`` under ``no_grad``, ``.to()``).
        """
        w = self.weight.detach()
        state = self._eval_state
        fresh = (
            state is not None
            and state.v.shape == self.v.shape
            and state.coeff == float(self.coeff)
            and _same_values(state.weight, w)
        )
        if not fresh:
            u, v = self._top_singular_vectors()
            state = _EvalState(w.clone(), float(self.coeff), u, v)
            self._eval_state = state
            with torch.no_grad():
                fwd, _ = self._operator(w)
                self.sigma.copy_((u * fwd(v)).sum())
        assert state is not None
        return state.u, state.v

    def _top_singular_vectors(self) -> tuple[Tensor, Tensor]:
        """``(u, v)`` with ``u^T W v = ||W||_2``: converged power iteration from the persistent
        ``v`` (not written: evaluating never changes how training continues)."""
        return self._power_vectors(10_000, self.eval_tol)

    def _exact_norm(self, weight: Tensor) -> Tensor | None:
        """``||weight||_2`` computed exactly where that is cheap, else None (power iteration).

        Power iteration only converges towards the top singular value: started near the second
        of two close ones (as the persistent ``v`` is after they swap order in training), it
        meets any tolerance on the change of ``sigma`` long before it turns, and under-estimates.
        """
        return None

    def operator_norm(self, *, tol: float = 1e-9, max_iter: int = 20_000) -> float:
        """An estimate of the Lipschitz constant ``||W_hat||_2`` this layer has *now*.

        For a certificate use [`bound`][iresnet.nn.spectral.SpectralLinear.bound], which is
        never below the true value; for convolutions this converged power iteration can be.

        It is computed from the weight in force (the one
        [`normalized_weight`][iresnet.nn.spectral.SpectralLinear.normalized_weight] uses in the
        current mode), so it cannot go stale between optimiser steps: an exact SVD for linear
        layers up to 1024 wide, the Frobenius bound for ``norm="frobenius"``, else converged
        float64 power iteration (an estimate from below, see
        [`linear_operator_norm`][iresnet.nn.spectral.linear_operator_norm]). Cached until the
        weight, the buffers or the mode change.

        Args:
            tol: relative tolerance of the power iteration.
            max_iter: iteration cap of the power iteration.

        Returns:
            The norm as a Python float.
        """
        # Cached while the weight in force keeps its values: every inverse in eval mode asks
        # for it (the a-priori Banach bound), and a converged float64 power iteration on a conv
        # operator costs far more than the solve itself. No power-iteration step runs here.
        with torch.no_grad(), frozen_normalisation(self):  # type: ignore[arg-type]
            w_hat = self.normalized_weight().detach().double()
        key = (self.training, self.norm, tol, max_iter, tuple(self.v.shape))
        cached = self._norm_cache
        if cached is not None and cached[0] == key and _same_values(cached[1], w_hat):
            return cached[2]
        with torch.no_grad():
            exact = self._exact_norm(w_hat)
            if self.norm == "frobenius":  # the certificate uses the bound in force
                value = float(self.frobenius_bound(w_hat))
            elif exact is not None:
                value = float(exact)
            else:
                fwd, adj = self._operator(w_hat)
                value = linear_operator_norm(
                    fwd, adj, self.v.detach().double(), tol=tol, max_iter=max_iter
                )
        self._norm_cache = (key, w_hat, value)
        return value

    def _certified_sigma(self) -> Tensor:
        """A provable upper bound of ``||W||_2`` in the weight's dtype, with its gradient when
        autograd needs one; otherwise computed once per weight value (an inverse's many calls
        cost one bound)."""
        w = self.weight
        # Rounding W / sigma entrywise perturbs the map by at most eps (1 + sqrt(numel)) of its
        # norm (a conv's perturbation is bounded by its taps' Frobenius norms): dividing by that
        # much more keeps the applied norm within coeff in the weight's own dtype.
        margin = 1.0 + torch.finfo(w.dtype).eps * (1.0 + math.sqrt(w.numel()))
        # One bound whether autograd is on or off: the forward map and the map its inverse
        # solves must be the same (the tighter explicit norm is for certificates only).
        if torch.is_grad_enabled() and w.requires_grad:
            return (self._normalising_bound(w).value * margin).to(w.dtype)
        key = (tuple(self.v.shape),)
        cached = self._certified_cache
        if cached is not None and cached[0] == key and _same_values(cached[1], w.detach()):
            return cached[2]
        with torch.no_grad():
            value = (self._normalising_bound(w.detach()).value * margin).to(w.dtype)
        self._certified_cache = (key, w.detach().clone(), value)
        return value

    def _provable_bound(self, weight: Tensor) -> Bound:
        """The tightest provable upper bound of the operator norm of ``weight`` (float64), for
        certificates; by default the normalising one."""
        return self._normalising_bound(weight)

    def _normalising_bound(self, weight: Tensor) -> Bound:
        """A provable, differentiable upper bound of the operator norm of ``weight`` (float64)
        that does not depend on whether autograd is on: ``norm="certified"`` divides by it."""
        raise NotImplementedError

    def bound(self) -> Bound:
        """A provable upper bound of ``||W_hat||_2`` for the weight in force, and its method.

        In float64, from the weight in force in the current mode
        ([`normalized_weight`][iresnet.nn.spectral.SpectralLinear.normalized_weight]; no
        power-iteration step runs): the exact SVD for linear layers
        (the Gram-iteration bound above 1024 wide), for convolutions the exact norm of their
        circular embedding on the input size (an upper bound of the zero-padded, strided map;
        see [`conv2d_operator_bound`][iresnet.nn.bounds.conv2d_operator_bound]), and the
        Frobenius bound in force for ``norm="frobenius"``. Cached while the weight in force
        keeps its values.

        Returns:
            A [`Bound`][iresnet.nn.bounds.Bound] with a 0-d float64 value; ``inf`` (method
            ``"unknown input size"``) for a convolution that has not seen an input yet, whose
            norm depends on the size it will see.
        """
        if self.v.numel() == 0:
            return Bound(torch.tensor(math.inf, dtype=torch.float64), "unknown input size")
        with torch.no_grad(), frozen_normalisation(self):  # type: ignore[arg-type]
            w_hat = self.normalized_weight().detach().double()
        key = (self.training, self.norm, tuple(self.v.shape))
        cached = self._bound_cache
        if cached is not None and cached[0] == key and _same_values(cached[1], w_hat):
            return cached[2]
        with torch.no_grad():
            if self.norm == "frobenius":  # the bound in force is itself provable
                result = Bound(self.frobenius_bound(w_hat), "frobenius")
            else:
                result = self._provable_bound(w_hat)
        self._bound_cache = (key, w_hat, result)
        return result

    def forward_float64(self, x: Tensor) -> Tensor:
        """The map this layer applies now, evaluated in float64 (no gradient, no power-iteration
        step): the weight in force is cast exactly, so only float64 rounding remains."""
        with torch.no_grad(), frozen_normalisation(self):  # type: ignore[arg-type]
            w = self.normalized_weight().detach().double()
        bias = self.bias.detach().double() if self.bias is not None else None  # type: ignore[attr-defined]
        return self._apply_weight(x.double(), w, bias)

    def _apply_weight(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        raise NotImplementedError

    def lipschitz_bound(self) -> float:
        """The layer's certified Lipschitz constant: ``float(bound())`` (the bias does not
        change it). Never an estimate: see [`bound`][iresnet.nn.spectral.SpectralLinear.bound]."""
        return float(self.bound().value)


class SpectralLinear(_SpectralNormMixin, nn.Linear):
    """Linear layer with spectral normalisation, ``||W_hat||_2 <= coeff``.

    ``y = W_hat x + b`` with ``W_hat = W / max(1, sigma / coeff)`` (i-ResNet eq. (2)). In training
    mode ``sigma = u^T W v`` comes from ``n_power_iterations`` steps of power iteration on ``W``
    from the persistent buffers ``u`` (``out_features``) and ``v`` (``in_features``), with a
    gradient through ``sigma`` (Miyato et al., app. A, Algorithm 1). In eval mode ``sigma`` is the
    exact ``||W||_2`` (an SVD, for layers up to 1024 wide; converged power iteration above),
    computed once and cached until the weight changes; evaluating never writes ``u``, ``v``.

    Arguments:
        in_features: input size, as in ``torch.nn.Linear``.
        out_features: output size.
        bias: learn an additive bias.
        coeff: the target Lipschitz constant ``c``, in ``(0, 1]``.
        n_power_iterations: power-iteration steps per training forward (>= 1).
        eval_tol: relative tolerance of the converged power iteration in eval mode.
        norm: ``"spectral"`` (the default), ``"certified"`` (divide by a provable upper bound
            of ``||W||_2``, see ``iresnet.nn.spectral.NORMS``), ``"frobenius"`` (divide
            by the cheaper, looser ``||W||_F``; no power iteration) or ``"penalty"`` (no
            rescaling and no guarantee: power iteration still runs so that
            [`spectral_penalty`][iresnet.nn.spectral_penalty] can penalise ``||W||_2^2``).

    Shapes:
        Input ``(*, in_features)``, output ``(*, out_features)``.

    Raises:
        ValueError: an unknown ``norm``, ``coeff`` outside ``(0, 1]``, ``n_power_iterations < 1``
            or ``eval_tol <= 0``.
        TypeError: at call time, an input that is not a tensor.
        DataError: at call time, an empty, boolean, complex or integer input, one of another
            dtype or device than the layer, or one without ``in_features`` in its last
            dimension.

    References:
        - Behrmann et al., arXiv:1811.00995, sec. 2.1, eq. (2).
        - Miyato et al., arXiv:1802.05957, sec. 2.1-2.2, app. A.

    Examples:
        >>> layer = SpectralLinear(4, 4, coeff=0.9).eval()
        >>> layer.operator_norm() <= 0.9 * (1 + 1e-6)
        True
        >>> layer(torch.zeros(3, 4)).shape
        torch.Size([3, 4])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        coeff: float = 0.97,
        n_power_iterations: int = 1,
        eval_tol: float = 1e-7,
        norm: str = "spectral",
    ) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self._init_spectral(coeff, n_power_iterations, eval_tol, norm)
        self.register_buffer("u", _normalize(torch.randn(out_features)))
        self.register_buffer("v", _normalize(torch.randn(in_features)))

    def _operator(
        self, weight: Tensor
    ) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
        def fwd(v: Tensor) -> Tensor:
            with _full_precision(weight):
                return weight @ v

        def adj(u: Tensor) -> Tensor:
            with _full_precision(weight):
                return weight.t() @ u

        return fwd, adj

    def _exact_norm(self, weight: Tensor) -> Tensor | None:
        # A dense matrix: its SVD is exact and, up to 1024 wide, costs at most milliseconds.
        if min(weight.shape) > EXACT_NORM_MAX_DIM:
            return None
        return torch.linalg.matrix_norm(weight.double(), ord=2).to(weight.dtype)

    def _normalising_bound(self, weight: Tensor) -> Bound:
        return linear_operator_bound(weight)

    def _sigma_weight_grad(self, u: Tensor, v: Tensor, weight: Tensor) -> Tensor:
        return torch.outer(u, v)

    def _top_singular_vectors(self) -> tuple[Tensor, Tensor]:
        # Up to 1024 wide the SVD gives the exact top pair, in float64, whatever the persistent
        # vectors converged to.
        w = self.weight.detach()
        if min(w.shape) > EXACT_NORM_MAX_DIM:
            return super()._top_singular_vectors()
        u, _, vh = torch.linalg.svd(w.double(), full_matrices=False)
        return u[:, 0].to(w.dtype), vh[0].to(w.dtype)

    def _apply_weight(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return F.linear(x, weight, bias)

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, "SpectralLinear", like=self)
        check_size(x, "SpectralLinear", -1, self.in_features, "input features")
        return F.linear(x, self.normalized_weight(), self.bias)

    def linearize(
        self, x: Tensor, t: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None, Callable[[Tensor], Tensor]]:
        """The output and the pushed tangents (with their graphs), and the vector-Jacobian
        product in closed form.

        Args:
            x: input, ``(*, in_features)``.
            t: tangents ``(d, *x.shape)``, or None.

        Returns:
            ``W_hat x + b``, ``W_hat t`` (None without ``t``) and ``vjp(w) = w W_hat`` for
            cotangents ``w`` of the output's shape (no autograd graph).

        Raises:
            DataError: as ``forward``.
        """
        check_input(x, "SpectralLinear", like=self)
        check_size(x, "SpectralLinear", -1, self.in_features, "input features")
        weight = self.normalized_weight()
        fixed = weight.detach()
        jt = None if t is None else F.linear(t, weight)
        return F.linear(x, weight, self.bias), jt, lambda w: w @ fixed

    def linearize_adjoint(
        self, x: Tensor, t: Tensor, graph: bool = False
    ) -> tuple[Tensor, Tensor, Callable[[Tensor], Tensor], Adjoint]:
        """``W_hat x + b`` and ``W_hat t`` (no graphs; with ``graph`` the output has its
        autograd graph), ``vjp(w) = w W_hat`` and the adjoint of the linearised map (see
        [`linearize_adjoint`][iresnet.ops.jacobian.linearize_adjoint]): cotangents ``c`` of
        ``W_hat t`` (given once; the tangents are then released) and ``r`` of the output, either
        None, give ``c W_hat``, ``r W_hat`` and the gradients ``sum c^T t + r^T x`` of
        ``W_hat`` (whose graph carries them to the weight) and ``sum r`` of the bias.

        Raises:
            DataError: as ``forward``.
        """
        check_input(x, "SpectralLinear", like=self)
        check_size(x, "SpectralLinear", -1, self.in_features, "input features")
        fixed, weight = self._adjoint_weight(graph)
        bias = self.bias
        out, inp = self.out_features, self.in_features
        y = F.linear(x, weight, bias) if graph else None  # type: ignore[arg-type]
        with torch.no_grad():
            fixed, xd = fixed.detach(), x.detach()
            if y is None:
                y = F.linear(xd, fixed, None if bias is None else bias.detach())
            t_out = F.linear(t, fixed)
        held = [t]

        def adjoint(
            c: Tensor | None, r: Tensor | None, need_c: bool
        ) -> tuple[Tensor | None, Tensor | None, Pairs]:
            with torch.no_grad():
                grad_w = c_in = r_in = None
                pairs: Pairs = []
                if c is not None:
                    (t_,) = held
                    held.clear()
                    grad_w = c.reshape(-1, out).t() @ t_.reshape(-1, inp)
                    if need_c:
                        c_in = c @ fixed
                if r is not None:
                    r2, x2 = r.reshape(-1, out), xd.reshape(-1, inp)
                    grad_w = r2.t() @ x2 if grad_w is None else grad_w.addmm_(r2.t(), x2)
                    if bias is not None:
                        pairs.append((bias, r2.sum(0)))
                    r_in = r @ fixed
                if grad_w is not None:
                    pairs.append((weight, grad_w))
            return c_in, r_in, pairs

        return y, t_out, lambda w: w @ fixed, adjoint

    def jvp(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Forward-mode derivative: ``(W_hat x + b, W_hat t)``.

        Args:
            x: input, ``(*, in_features)``.
            t: tangents, ``(d, *x.shape)``.

        Returns:
            The output ``(*, out_features)`` and the pushed tangents ``(d, *, out_features)``.
        """
        w = self.normalized_weight()
        return F.linear(x, w, self.bias), F.linear(t, w)


class SpectralConv2d(_SpectralNormMixin, nn.Conv2d):
    """2-D convolution normalised by its operator norm *on the actual input shape*.

    ``W_hat = W / max(1, sigma / coeff)`` as in
    [`SpectralLinear`][iresnet.nn.spectral.SpectralLinear], but ``sigma`` is the norm of the
    convolution as a linear map ``R^{C_in x H x W} -> R^{C_out x H' x W'}``: power iteration
    with ``conv2d`` as the map and ``conv_transpose2d`` as its adjoint (i-ResNet sec. 2.1,
    following Gouk et al.). The norm of the kernel reshaped to a ``C_out x (C_in k_h k_w)``
    matrix (Miyato et al. sec. 4) is neither an upper nor a lower bound of it. The spatial size is
    learned on the first call (buffers ``u``, ``v`` then take its shape) and re-learned, with
    fresh vectors, if a later input has another size. Eval mode iterates to convergence once and
    caches ``sigma`` (an estimate from below, not a bound).

    Arguments:
        in_channels: input channels ``C_in``, as in ``torch.nn.Conv2d``.
        out_channels: output channels ``C_out``.
        kernel_size: kernel size ``(k_h, k_w)`` or one int.
        stride: stride.
        padding: zero padding (numbers only; not ``"same"``/``"valid"``).
        bias: learn an additive bias per output channel.
        coeff: the target Lipschitz constant ``c``, in ``(0, 1]``.
        n_power_iterations: power-iteration steps per training forward (>= 1).
        eval_tol: relative tolerance of the converged power iteration in eval mode.
        norm: ``"spectral"``, ``"frobenius"`` or ``"penalty"``, as in
            [`SpectralLinear`][iresnet.nn.spectral.SpectralLinear] (the Frobenius bound is
            multiplied by ``sqrt(k_h k_w)``).

    Shapes:
        Input ``(B, C_in, H, W)``, output ``(B, C_out, H', W')``; as in ``torch.nn.Conv2d``,
        one unbatched map ``(C_in, H, W)`` gives ``(C_out, H', W')`` (for every kernel size).

    Raises:
        ValueError: string padding, or a bad ``norm``, ``coeff``, ``n_power_iterations`` or
            ``eval_tol`` (as [`SpectralLinear`][iresnet.nn.spectral.SpectralLinear]).
        RuntimeError: ``operator_norm()`` before the first forward pass (the norm depends on
            the input size).
        TypeError: at call time, an input that is not a tensor.
        DataError: at call time, an empty, boolean, complex or integer input, one of another
            dtype or device than the layer, one that is neither 3-D nor 4-D, or one without
            ``C_in`` channels in dimension -3.

    References:
        - Behrmann et al., arXiv:1811.00995, sec. 2.1.
        - Gouk et al., arXiv:1804.04368.

    Examples:
        >>> _ = torch.manual_seed(0)
        >>> conv = SpectralConv2d(2, 2, 3, padding=1, coeff=0.9)
        >>> conv(torch.randn(1, 2, 4, 4)).shape
        torch.Size([1, 2, 4, 4])
        >>> round(conv.eval().operator_norm(), 4)
        0.9
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        bias: bool = True,
        coeff: float = 0.97,
        n_power_iterations: int = 1,
        eval_tol: float = 1e-7,
        norm: str = "spectral",
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias
        )
        if not isinstance(self.padding, tuple):
            raise ValueError("SpectralConv2d needs numeric padding (not 'same'/'valid' strings)")
        self._init_spectral(coeff, n_power_iterations, eval_tol, norm)
        # Empty until the first input fixes the spatial shape.
        self.register_buffer("u", torch.zeros(0))
        self.register_buffer("v", torch.zeros(0))

    def _frobenius_factor(self) -> float:
        return float(self.kernel_size[0] * self.kernel_size[1]) ** 0.5  # type: ignore[index]

    def _output_padding(self, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> tuple[int, int]:
        pads = []
        for i in range(2):
            k, s, p = self.kernel_size[i], self.stride[i], self.padding[i]  # type: ignore[index]
            pads.append(in_hw[i] - ((out_hw[i] - 1) * s - 2 * p + k))
        return pads[0], pads[1]

    def _operator(
        self, weight: Tensor
    ) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
        in_hw = tuple(self.v.shape[-2:])
        out_hw = tuple(self.u.shape[-2:])
        out_pad = self._output_padding(in_hw, out_hw)  # type: ignore[arg-type]

        def fwd(v: Tensor) -> Tensor:
            with _full_precision(weight):
                return F.conv2d(v, weight, None, self.stride, self.padding)

        def adj(u: Tensor) -> Tensor:
            with _full_precision(weight):
                return F.conv_transpose2d(u, weight, None, self.stride, self.padding, out_pad)

        return fwd, adj

    def _ensure_vectors(self, x: Tensor) -> None:
        in_shape = (1, self.in_channels, x.shape[-2], x.shape[-1])
        if tuple(self.v.shape) == in_shape:
            return
        with torch.no_grad(), _full_precision(self.weight):
            v = torch.randn(in_shape, device=self.weight.device, dtype=self.weight.dtype)
            u = F.conv2d(v, self.weight, None, self.stride, self.padding)
        self.v = _normalize(v)
        self.u = _normalize(torch.randn_like(u))
        self._eval_state = None
        self._bound_cache = self._certified_cache = None
        # A fresh shape starts from random vectors: converge once so the first training steps
        # already see an accurate sigma (one step per call would need many calls to catch up).
        self._update_vectors(200, 1e-4)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        # Buffers take the saved spatial shape before the copy, so a checkpoint loads into a
        # freshly built (shape-less) layer.
        for name in ("u", "v"):
            saved = state_dict.get(prefix + name)
            if saved is not None and saved.shape != getattr(self, name).shape:
                # The layer's own dtype: a float64 checkpoint loads into a float32 layer.
                empty = torch.empty(saved.shape, dtype=self.weight.dtype, device=self.weight.device)
                setattr(self, name, empty)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _apply_weight(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return F.conv2d(x, weight, bias, self.stride, self.padding)

    def _sigma_weight_grad(self, u: Tensor, v: Tensor, weight: Tensor) -> Tensor:
        return self._conv_grads(u, v, weight, [False, True, False])[1]  # type: ignore[return-value]

    @property
    def _pointwise(self) -> bool:
        """A 1x1 convolution without stride, padding, dilation or groups: a matrix product over
        the channels at every pixel."""
        return (
            tuple(self.kernel_size) == (1, 1)
            and tuple(self.stride) == (1, 1)
            and self.padding in ((0, 0), "valid", "same")
            and tuple(self.dilation) == (1, 1)
            and self.groups == 1
        )

    def _conv_forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if x.dim() == 3:  # one (C, H, W) map, as torch.nn.Conv2d takes it: a batch of one
            return self._conv_forward(x.unsqueeze(0), weight, bias).squeeze(0)
        x = conv_layout(x)
        if not self._pointwise:
            return super()._conv_forward(x, conv_layout(weight), bias)
        if x.is_contiguous(memory_format=torch.channels_last):
            # The 1x1 convolution as one matrix product over the channels of every pixel, in
            # place in the channels-last layout (ATen's convolution costs several times more on
            # the few-channel maps of the branches, forward and backward).
            rows, wt = _pixel_rows(x), weight.flatten(1).t()
            y = rows @ wt if bias is None else torch.addmm(bias, rows, wt)
            return _from_pixel_rows(y, x)
        # Other layouts (devices): one matrix product per sample; bmm with the weight expanded,
        # not a broadcast matmul, which inductor lowers through transposed copies of the
        # activations.
        b, _, h, w = x.shape
        y = torch.bmm(_expand_batch(weight.flatten(1), b), x.flatten(2)).view(b, -1, h, w)
        return y if bias is None else y + bias.view(-1, 1, 1)

    def _conv_grads(
        self, cot: Tensor, inp: Tensor, weight: Tensor, mask: list[bool]
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """The (input, weight, bias) gradients of the convolution at ``inp`` for the output
        cotangent ``cot``, those in ``mask`` (None for the others), without autograd."""
        if cot.dim() == 3:  # one (C, H, W) map: a batch of one
            gi, gw, gb = self._conv_grads(cot.unsqueeze(0), inp.unsqueeze(0), weight, mask)
            return (None if gi is None else gi.squeeze(0)), gw, gb
        cot, inp = conv_layout(cot), conv_layout(inp)
        if not self._pointwise:
            return tuple(  # type: ignore[return-value]
                torch.ops.aten.convolution_backward(
                    cot,
                    inp,
                    conv_layout(weight),
                    None if self.bias is None else [self.bias.shape[0]],
                    self.stride,
                    self.padding,
                    self.dilation,
                    False,
                    [0, 0],
                    self.groups,
                    mask,
                )
            )
        grad_in = grad_w = grad_b = None
        if cot.is_contiguous(memory_format=torch.channels_last):
            rows = _pixel_rows(cot)
            if mask[0]:
                grad_in = _from_pixel_rows(rows @ weight.flatten(1), cot)
            if mask[1]:
                grad_w = (rows.t() @ _pixel_rows(inp)).view(weight.shape)
            if mask[2]:
                grad_b = rows.sum(0)
            return grad_in, grad_w, grad_b
        c2 = cot.flatten(2)
        if mask[0]:
            grad_in = torch.bmm(_expand_batch(weight.flatten(1).t(), c2.shape[0]), c2)
            grad_in = grad_in.view(inp.shape)
        if mask[1]:
            grad_w = torch.matmul(c2, inp.flatten(2).transpose(1, 2)).sum(0).view(weight.shape)
        if mask[2]:
            grad_b = c2.sum((0, 2))
        return grad_in, grad_w, grad_b

    def forward(self, x: Tensor) -> Tensor:
        _check_conv_input(x, self, self.in_channels)
        self._ensure_vectors(x)
        return self._conv_forward(x, self.normalized_weight(), self.bias)

    def linearize(
        self, x: Tensor, t: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None, Callable[[Tensor], Tensor]]:
        """The output and the pushed tangents (with their graphs), and the vector-Jacobian
        product in closed form.

        Args:
            x: input, ``(B, C_in, H, W)`` or one map ``(C_in, H, W)``.
            t: tangents ``(d, *x.shape)``, or None.

        Returns:
            ``conv(x)``, ``conv_without_bias(t)`` (None without ``t``) and ``vjp(w)``, the
            transposed convolution of cotangents ``w`` of the output's shape back to the
            input's (no autograd graph).

        Raises:
            DataError: as ``forward``.
        """
        _check_conv_input(x, self, self.in_channels)
        self._ensure_vectors(x)
        weight = self.normalized_weight()
        fixed = weight.detach()
        xd = x.detach()

        def vjp(w: Tensor) -> Tensor:
            # The transposed convolution, at the input itself (see linearize_adjoint).
            return self._conv_grads(w, xd, fixed, [True, False, False])[0]  # type: ignore[return-value]

        jt = None
        if t is not None:
            jt = _unmaps(self._conv_forward(_maps(t), weight, None), t)
        return self._conv_forward(x, weight, self.bias), jt, vjp

    def linearize_adjoint(
        self, x: Tensor, t: Tensor, graph: bool = False
    ) -> tuple[Tensor, Tensor, Callable[[Tensor], Tensor], Adjoint]:
        """``conv(x)`` and ``conv_without_bias(t)`` (no graphs; with ``graph`` the output has
        its autograd graph), the transposed convolution as ``vjp`` and the adjoint of the
        linearised map (see
        [`linearize_adjoint`][iresnet.ops.jacobian.linearize_adjoint]): cotangents ``c`` of the
        pushed tangents (given once; the tangents are then released) and ``r`` of the output,
        either None, go back through the transposed convolution, with the kernel's (and the
        bias's) gradient from the same call.

        Raises:
            DataError: as ``forward``.
        """
        _check_conv_input(x, self, self.in_channels)
        self._ensure_vectors(x)
        fixed, weight = self._adjoint_weight(graph)
        bias = self.bias
        y = self._conv_forward(x, weight, bias) if graph else None  # type: ignore[arg-type]
        with torch.no_grad():
            fixed, xd = fixed.detach(), x.detach()
            if y is None:
                y = self._conv_forward(xd, fixed, None if bias is None else bias.detach())
            tf = _maps(t)
            t_out = _unmaps(self._conv_forward(tf, fixed, None), t)
        held = [tf]

        def grads(cot: Tensor, inp: Tensor, mask: list[bool]) -> tuple[Tensor, ...]:
            # (input, weight, bias) gradients of the convolution at `inp` for the output
            # cotangent `cot`, those in `mask`, from one call.
            return self._conv_grads(cot, inp, fixed, mask)  # type: ignore[return-value]

        def back(w: Tensor) -> Tensor:
            # The transposed convolution at the input itself (conv2d_input passes an expanded
            # placeholder, which costs a copy of the result here).
            return grads(w, xd, [True, False, False])[0]

        def adjoint(
            c: Tensor | None, r: Tensor | None, need_c: bool
        ) -> tuple[Tensor | None, Tensor | None, Pairs]:
            with torch.no_grad():
                pairs: Pairs = []
                grad_w = c_in = r_in = None
                if c is not None:
                    (tf_,) = held
                    held.clear()
                    gi, grad_w, _ = grads(_maps(c), tf_, [need_c, True, False])
                    if need_c:
                        c_in = _unmaps(gi, c)
                if r is not None:
                    r_in, gw, gb = grads(r, xd, [True, True, bias is not None])
                    grad_w = gw if grad_w is None else grad_w.add_(gw)
                    if bias is not None:
                        pairs.append((bias, gb))
                if grad_w is not None:
                    pairs.append((weight, grad_w))
            return c_in, r_in, pairs

        return y, t_out, back, adjoint

    def jvp(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Forward-mode derivative: ``(conv(x), conv_without_bias(t))``.

        Args:
            x: input, ``(B, C_in, H, W)`` or one map ``(C_in, H, W)``.
            t: tangents, ``(d, *x.shape)``.

        Returns:
            The output ``(B, C_out, H', W')`` and the pushed tangents ``(d, B, C_out, H', W')``.
        """
        self._ensure_vectors(x)
        w = self.normalized_weight()
        jt = _unmaps(self._conv_forward(_maps(t), w, None), t)
        return self._conv_forward(x, w, self.bias), jt

    def _input_size(self) -> tuple[int, int]:
        if self.v.numel() == 0:
            raise RuntimeError(
                "SpectralConv2d has not seen an input yet, so its operator norm (which depends "
                "on the input's spatial size) is unknown: run one forward pass first"
            )
        return int(self.v.shape[-2]), int(self.v.shape[-1])

    def _normalising_bound(self, weight: Tensor) -> Bound:
        # The exact norm of the circular embedding: an SVD per DFT matrix, differentiable, and
        # on the CPU faster than Gram iteration (benchmarks/results/certificate.md).
        return conv2d_operator_bound(
            weight,
            self._input_size(),
            self.stride,
            self.padding,
            method="svd",  # type: ignore[arg-type]
        )

    def _provable_bound(self, weight: Tensor) -> Bound:
        # Small maps: the exact norm of the explicit matrix (the circular bound is loose on
        # small images, 25% on 4x4); larger ones: the circular bound.
        exact = conv2d_exact_norm(
            weight,
            self._input_size(),
            self.stride,
            self.padding,  # type: ignore[arg-type]
        )
        return exact if exact is not None else self._normalising_bound(weight)

    def operator_norm(self, *, tol: float = 1e-9, max_iter: int = 20_000) -> float:
        if self.v.numel() == 0:
            raise RuntimeError(
                "SpectralConv2d has not seen an input yet, so its operator norm (which depends "
                "on the input's spatial size) is unknown: run one forward pass first"
            )
        return super().operator_norm(tol=tol, max_iter=max_iter)


@contextlib.contextmanager
def frozen_normalisation(module: nn.Module) -> Iterator[None]:
    """Within the block, spectral layers of ``module`` run no power-iteration step.

    Used while solving an inverse: the map being inverted must not change between iterations.
    The previous state is restored on exit, also after an error.

    Args:
        module: any module; its [`SpectralLinear`][iresnet.nn.spectral.SpectralLinear] and
            [`SpectralConv2d`][iresnet.nn.spectral.SpectralConv2d] layers are frozen.

    Examples:
        >>> layer = SpectralLinear(3, 3)
        >>> u = layer.u.clone()
        >>> with frozen_normalisation(layer):
        ...     _ = layer(torch.randn(2, 3))
        >>> bool(torch.equal(layer.u, u))
        True
    """
    with temporarily_set(module, _SpectralNormMixin, "_frozen", True):
        yield


def spectral_penalty(model: nn.Module) -> Tensor:
    """``sum ||W||_2^2`` over the spectral layers of ``model``, with its gradient.

    The soft alternative to normalisation: spectral norm regularisation (Yoshida & Miyato,
    arXiv:1705.10941) penalises the norms instead of bounding them, so no bound holds and
    i-ResNet (sec. 2.1) bounds every layer instead. Add ``lambda * spectral_penalty(model)`` to
    the loss of layers built with ``norm="penalty"``; ``iresnet.certify`` then reports honestly
    whether the trained model is invertible. Each term is ``(u^T W v)^2`` from the layer's
    persistent power-iteration vectors.

    Args:
        model: any module.

    Returns:
        A 0-d tensor (0 when ``model`` has no spectral layers).

    References:
        - Yoshida & Miyato, "Spectral Norm Regularization for Improving the Generalizability of
          Deep Learning", arXiv:1705.10941.

    Examples:
        >>> layer = SpectralLinear(2, 2, norm="penalty")
        >>> bool(spectral_penalty(torch.nn.Sequential(layer)) > 0)
        True
    """
    terms = [m.spectral_penalty() for m in model.modules() if isinstance(m, _SpectralNormMixin)]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def float64_forward(module: nn.Module, x: Tensor) -> Tensor | None:
    """``module(x)`` evaluated in float64, for a branch made of known layers; else None.

    Spectral layers apply their weight in force cast exactly to float64
    (``forward_float64``); plain ``nn.Linear`` / ``nn.Conv2d`` their weights cast; modules without
    parameters (and the 1-Lipschitz activations, whose parameters promote) run on the float64
    input; ``nn.Sequential`` composes. Used to check a computed inverse against the exact map:
    the residual ``y - x - g(x)`` of a float32 solve is then known to float64 rounding.

    Args:
        module: the map, usually a residual branch ``g``.
        x: its input (any floating dtype).

    Returns:
        The float64 output, or None where a layer is not known.
    """
    x = x.double()
    if isinstance(module, _SpectralNormMixin):
        return module.forward_float64(x)
    custom = getattr(module, "forward_float64", None)
    if callable(custom):  # e.g. a conditional branch bound to its contexts
        return custom(x)
    composite = getattr(module, "float64_forward", None)
    if callable(composite):  # a layer built of others (a DenseLayer): it evaluates its parts
        return composite(x, float64_forward)
    if isinstance(module, nn.Sequential):
        for child in module:
            x = float64_forward(child, x)  # type: ignore[assignment]
            if x is None:
                return None
        return x
    with torch.no_grad():
        if type(module) is nn.Linear:
            b = module.bias.double() if module.bias is not None else None
            return F.linear(x, module.weight.double(), b)
        if type(module) is nn.Conv2d and module.padding_mode == "zeros":
            b = module.bias.double() if module.bias is not None else None
            return F.conv2d(
                x,
                module.weight.double(),
                b,
                module.stride,
                module.padding,
                module.dilation,
                module.groups,
            )
        if next(module.parameters(), None) is None or getattr(module, "lipschitz_bound", None):
            return module(x)
    return None
