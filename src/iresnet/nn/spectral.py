"""Spectral normalisation and Lipschitz bounds of linear maps.

i-ResNet (Behrmann et al., 2019), sec. 2 and the seed report's sec. 3.1, eq. (2)-(10): a block
``y = x + g(x)`` is invertible when ``Lip(g) < 1``; with 1-Lipschitz activations it suffices that
every linear map in ``g`` has operator norm below 1. We rescale each weight to
``W_hat = W / max(1, sigma / c)`` where ``sigma`` estimates ``||W||_2`` by power iteration
(seed appendix B, eq. (34)) with persistent vectors.

The math is in plain functions (:func:`power_iteration`, :func:`linear_operator_norm`); the layers
:class:`SpectralLinear` and :class:`SpectralConv2d` call them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "power_iteration",
    "linear_operator_norm",
    "SpectralLinear",
    "SpectralConv2d",
    "frozen_normalisation",
    "spectral_penalty",
]

_EPS = 1e-12


def _normalize(t: Tensor) -> Tensor:
    return t / t.norm().clamp_min(_EPS)


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

    Iterates seed eq. (34): ``u <- A v / ||A v||``, ``v <- A^T u / ||A^T u||``. Both vectors are
    normalised at every step, so the iteration cannot overflow however large ``A`` is (it is
    scale-invariant); ``sigma = u^T A v`` is a lower bound of ``||A||_2`` that converges to it.

    Args:
        forward: ``v -> A v``.
        adjoint: ``u -> A^T u``.
        v: starting right vector (any shape ``forward`` accepts); need not be normalised.
        n_iterations: iterations to run, or the cap when ``tol`` is given.
        tol: stop once the relative change of ``sigma`` between iterations is below ``tol``.
        form: ``"uv"`` (seed eq. (34), alternating ``u``/``v`` updates, ``sigma = u^T A v``) or
            ``"gram"`` (seed eq. (32)-(33): ``v <- A^T A v / ||A^T A v||``,
            ``sigma = sqrt(v^T A^T A v)``). Same limit; the forms differ in what they carry.

    Returns:
        ``(u, v, sigma, iterations)`` with ``u``, ``v`` unit vectors and ``sigma`` a 0-d tensor.
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
    u = _normalize(forward(v))
    sigma = (u * forward(v)).sum()
    done = 0
    for done in range(1, n_iterations + 1):  # noqa: B007 - `done` is returned
        v = _normalize(adjoint(u))
        av = forward(v)
        u = _normalize(av)
        new_sigma = (u * av).sum()
        converged = tol is not None and abs(new_sigma - sigma) <= tol * new_sigma.abs()
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
    """Converged power-iteration estimate of ``||A||_2`` in float64-accurate arithmetic."""
    with torch.no_grad():
        _, _, sigma, _ = power_iteration(forward, adjoint, v, max_iter, tol=tol)
    return float(sigma)


#: How a layer bounds its weight: by the power-iteration estimate of ``||W||_2`` (``spectral``),
#: by the cheaper and looser ``||W||_F`` (``frobenius``), or not at all while still estimating
#: ``||W||_2`` for a penalty term (``penalty``; no guarantee).
NORMS = ("spectral", "frobenius", "penalty")

#: Linear layers up to this many rows or columns use an exact SVD for their eval-mode norm and
#: certificate instead of converged power iteration (see ``_exact_norm``).
EXACT_NORM_MAX_DIM = 1024


class _SpectralNormMixin:
    """Shared state and logic of the spectrally normalised layers.

    Subclasses provide ``_operator(weight) -> (forward, adjoint)`` and ``_initial_v()``.

    Training mode: each call runs ``n_power_iterations`` steps from the persistent vectors
    (buffers ``u``, ``v``), then rescales the weight with a gradient through ``sigma`` (as in
    Miyato et al.'s spectral normalisation). No step runs inside :func:`frozen_normalisation`, so
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
        self._cache: tuple[tuple, Tensor] | None = None  # eval mode: (weight key, sigma)
        # Settings that are never trained are buffers, so DDP and optimisers leave them alone.
        self.register_buffer("coeff", torch.tensor(float(coeff)))  # type: ignore[attr-defined]
        self.register_buffer("sigma", torch.ones(()))  # type: ignore[attr-defined]

    def _operator(
        self, weight: Tensor
    ) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
        raise NotImplementedError

    def _cache_key(self) -> tuple:
        w = self.weight
        return (w._version, w.data_ptr(), self.u.data_ptr(), self.u.shape, self.coeff.item())

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

    def _sigma_with_grad(self) -> Tensor:
        fwd, _ = self._operator(self.weight)
        # Clones: the next training call updates u, v in place, and this sigma's backward
        # must still see the vectors it was computed with (two forwards before one backward).
        return (self.u.clone() * fwd(self.v.clone())).sum()

    def _frobenius_factor(self) -> float:
        return 1.0

    def frobenius_bound(self, weight: Tensor) -> Tensor:
        """Cheap upper bound of the operator norm: ``||W||_F`` (times ``sqrt(k_h k_w)`` for a
        convolution, each tap being a shifted copy of a matrix; the seed's note on eq. (10))."""
        return weight.norm() * self._frobenius_factor()

    def spectral_penalty(self) -> Tensor:
        """``sigma^2`` with its gradient, from the persistent power-iteration vectors: the seed's
        eq. (11) regulariser ``lambda * sum ||W||_2^2`` sums these."""
        return self._sigma_with_grad() ** 2

    def normalized_weight(self) -> Tensor:
        """The rescaled weight ``W / max(1, sigma / coeff)`` used by the forward pass."""
        if self.norm == "frobenius":
            return self.weight / torch.clamp(
                self.frobenius_bound(self.weight) / self.coeff, min=1.0
            )
        if self.norm == "penalty":  # power iteration runs (for the penalty); no rescaling
            if self.training and not self._frozen:
                self._update_vectors(self.n_power_iterations, None)
            return self.weight
        if self.training:
            if not self._frozen:
                self._update_vectors(self.n_power_iterations, None)
            self._cache = None
            sigma = self._sigma_with_grad()
            with torch.no_grad():
                self.sigma.copy_(sigma)
        else:
            key = self._cache_key()
            if self._cache is None or self._cache[0] != key:
                # Converged vectors for this evaluation only: the persistent (training) vectors
                # stay as they are, so evaluating never changes how training continues.
                u, v = self._power_vectors(10_000, self.eval_tol)
                with torch.no_grad():
                    exact = self._exact_norm(self.weight.detach())
                    if exact is None:
                        fwd, _ = self._operator(self.weight.detach())
                        exact = (u * fwd(v)).sum()
                    self.sigma.copy_(exact)
                self._cache = (self._cache_key(), self.sigma.clone())
            sigma = self._cache[1]
        return self.weight / torch.clamp(sigma / self.coeff, min=1.0)

    def _exact_norm(self, weight: Tensor) -> Tensor | None:
        """``||weight||_2`` computed exactly where that is cheap, else None (power iteration).

        Power iteration only converges towards the top singular value: started near the second
        of two close ones (as the persistent ``v`` is after they swap order in training), it
        meets any tolerance on the change of ``sigma`` long before it turns, and under-estimates.
        """
        return None

    def operator_norm(self, *, tol: float = 1e-9, max_iter: int = 20_000) -> float:
        """Converged estimate of ``||W_hat||_2``: the Lipschitz constant this layer has *now*.

        It is computed afresh from the weight in force (the one :meth:`normalized_weight` would
        use in the current mode), so it cannot go stale between optimiser steps.
        """
        # Cached while nothing it depends on changes: every inverse in eval mode asks for it
        # (the a-priori Banach bound), and a converged float64 power iteration on a conv
        # operator costs far more than the solve itself.
        cached = getattr(self, "_norm_cache", None)
        if cached is not None and cached[0] == self._norm_key(tol, max_iter):
            return cached[1]
        with torch.no_grad():
            w_hat = self.normalized_weight().detach().double()
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
        # The key is taken after normalized_weight(), which may refresh the eval cache.
        self._norm_cache = (self._norm_key(tol, max_iter), value)
        return value

    def _norm_key(self, tol: float, max_iter: int) -> tuple:
        """Everything :meth:`operator_norm` depends on: mode, settings, weight and buffers (their
        version counters move on every in-place update)."""
        return (
            self.training,
            self.norm,
            tol,
            max_iter,
            *self._cache_key(),
            self.sigma._version,
            self.sigma.data_ptr(),
            self.u._version,
            self.v._version,
            self.v.data_ptr(),
        )

    def lipschitz_bound(self) -> float:
        """Lipschitz constant of the layer as a map (the bias does not change it)."""
        return self.operator_norm()


class SpectralLinear(_SpectralNormMixin, nn.Linear):
    """Linear layer with spectral normalisation, ``||W_hat||_2 <= coeff``.

    ``W_hat = W / max(1, sigma / coeff)`` (i-ResNet sec. 2; seed eq. (8)-(10)), ``sigma`` from
    power iteration on ``W`` with persistent buffers ``u`` (out_features) and ``v`` (in_features).

    Arguments:
        in_features, out_features, bias: as :class:`torch.nn.Linear`.
        coeff: target Lipschitz constant ``c`` in ``(0, 1]``.
        n_power_iterations: power-iteration steps per training forward (>= 1).
        eval_tol: relative tolerance of the converged power iteration in eval mode.
        norm: ``"spectral"`` (default), ``"frobenius"`` (divide by the cheaper, looser
            ``||W||_F``: no power iteration) or ``"penalty"`` (no rescaling: the penalty mode of
            the seed's eq. (11), see :meth:`spectral_penalty`; no guarantee).

    Shapes: input ``(*, in_features)``, output ``(*, out_features)``.

    Example:
        >>> layer = SpectralLinear(4, 4, coeff=0.9).eval()
        >>> layer.operator_norm() <= 0.9 * (1 + 1e-6)
        True
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
        return (lambda v: weight @ v), (lambda u: weight.t() @ u)

    def _exact_norm(self, weight: Tensor) -> Tensor | None:
        # A dense matrix: its SVD is exact and, up to 1024 wide, costs at most milliseconds.
        if min(weight.shape) > EXACT_NORM_MAX_DIM:
            return None
        return torch.linalg.matrix_norm(weight.double(), ord=2).to(weight.dtype)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.normalized_weight(), self.bias)

    def jvp(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(W_hat x + b, W_hat t)`` for tangents ``t`` of shape ``(d, *x.shape)``."""
        w = self.normalized_weight()
        return F.linear(x, w, self.bias), F.linear(t, w)


class SpectralConv2d(_SpectralNormMixin, nn.Conv2d):
    """2-D convolution normalised by its operator norm *on the actual input shape*.

    The reshaped kernel's matrix norm is neither an upper nor a lower bound of the convolution's
    Lipschitz constant; we instead run power iteration on the convolution as a linear map
    ``R^{C_in x H x W} -> R^{C_out x H' x W'}`` (``conv2d`` forward, ``conv_transpose2d`` adjoint).
    The spatial size is learned on the first call (buffers ``u``, ``v`` then take its shape) and
    re-learned, with fresh vectors, if a later input has another size.

    Arguments:
        in_channels, out_channels, kernel_size, stride, padding, bias: as :class:`torch.nn.Conv2d`.
        coeff: target Lipschitz constant ``c`` in ``(0, 1]``.
        n_power_iterations: power-iteration steps per training forward (>= 1).
        eval_tol: relative tolerance of the converged power iteration in eval mode.

    Shapes: input ``(B, C_in, H, W)``, output ``(B, C_out, H', W')``.
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
            return F.conv2d(v, weight, None, self.stride, self.padding)

        def adj(u: Tensor) -> Tensor:
            return F.conv_transpose2d(u, weight, None, self.stride, self.padding, out_pad)

        return fwd, adj

    def _ensure_vectors(self, x: Tensor) -> None:
        in_shape = (1, self.in_channels, x.shape[-2], x.shape[-1])
        if tuple(self.v.shape) == in_shape:
            return
        with torch.no_grad():
            v = torch.randn(in_shape, device=self.weight.device, dtype=self.weight.dtype)
            u = F.conv2d(v, self.weight, None, self.stride, self.padding)
        self.v = _normalize(v)
        self.u = _normalize(torch.randn_like(u))
        self._cache = None
        # A fresh shape starts from random vectors: converge once so the first training steps
        # already see an accurate sigma (one step per call would need many calls to catch up).
        self._update_vectors(200, 1e-4)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        # Buffers take the saved spatial shape before the copy, so a checkpoint loads into a
        # freshly built (shape-less) layer.
        for name in ("u", "v"):
            saved = state_dict.get(prefix + name)
            if saved is not None and saved.shape != getattr(self, name).shape:
                setattr(self, name, torch.empty_like(saved, device=self.weight.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        self._ensure_vectors(x)
        return self._conv_forward(x, self.normalized_weight(), self.bias)

    def jvp(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(conv(x), conv_without_bias(t))`` for tangents ``t`` of shape ``(d, *x.shape)``."""
        self._ensure_vectors(x)
        w = self.normalized_weight()
        tt = self._conv_forward(t.reshape(-1, *t.shape[2:]), w, None)
        return self._conv_forward(x, w, self.bias), tt.reshape(*t.shape[:2], *tt.shape[1:])

    def _exact_norm(self, weight: Tensor) -> Tensor | None:
        """``||weight||_2`` computed exactly where that is cheap, else None (power iteration).

        Power iteration only converges towards the top singular value: started near the second
        of two close ones (as the persistent ``v`` is after they swap order in training), it
        meets any tolerance on the change of ``sigma`` long before it turns, and under-estimates.
        """
        return None

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
    """
    layers = [m for m in module.modules() if isinstance(m, _SpectralNormMixin)]
    previous = [m._frozen for m in layers]
    for m in layers:
        m._frozen = True
    try:
        yield
    finally:
        for m, p in zip(layers, previous, strict=True):
            m._frozen = p


def spectral_penalty(model: nn.Module) -> Tensor:
    """``sum ||W||_2^2`` over the spectral layers of ``model``, with its gradient.

    The soft alternative to normalisation (i-ResNet, arXiv:1811.00995, sec. 3: penalising the
    spectral norms instead of bounding them); add ``lambda * spectral_penalty(model)`` to the
    loss of layers built with ``norm="penalty"``. A 0-d tensor (0 when there are no layers).
    """
    terms = [m.spectral_penalty() for m in model.modules() if isinstance(m, _SpectralNormMixin)]
    return torch.stack(terms).sum() if terms else torch.zeros(())
