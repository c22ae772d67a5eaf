"""Log-determinants ``log det(I + J_g(x))`` of residual blocks ``y = x + g(x)``.

Plain functions do the math; the estimator classes hold settings and call them. Every estimator
is a callable ``estimator(g, x) -> (g(x), logdet)`` with ``logdet`` of shape ``(batch,)``:
``g(x)`` and the log-det share one graph of ``g``, so ``g`` runs once per block and call.

- exact (:func:`exact_logdet`): the full Jacobian and ``slogdet``; for small dimensions.
- power series (i-ResNet eq. (21)-(24); seed eq. (19)-(24)):
  ``log det(I+J) = sum_{k>=1} (-1)^{k+1} tr(J^k) / k`` with Hutchinson's ``tr(A) = E[v^T A v]``,
  ``v^T J^k`` built as ``k`` vector-Jacobian products through the one graph of ``g(x)``.
- Russian roulette (Residual Flows eq. (6)): the series cut at a random ``N``, term ``k``
  weighted by ``1 / P(N >= k)``: unbiased.
- Neumann-series gradient (Residual Flows Thm. 2 / eq. (8)):
  ``d log det(I+J) = tr((I+J)^{-1} dJ) = E[(sum_{k=0}^{n-1} (-1)^k c_{k+1} v^T J^k) dJ v]``.
- memory-efficient backward (Residual Flows sec. 3.3): the log-det's gradient with respect to
  the input and the parameters is formed during the forward pass, and only the graph of ``g``
  is kept for the backward pass, so memory does not grow with the number of terms.

The value returned is always the log-det estimate itself; a gradient surrogate is never returned
as a value (the surrogate only contributes its gradient).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from .jacobian import jacobian

__all__ = [
    "exact_logdet",
    "sample_probes",
    "series_logdet",
    "roulette_weights",
    "ExactLogDet",
    "PowerSeriesLogDet",
    "RussianRouletteLogDet",
    "LogDetEstimator",
    "NoLogDet",
    "logdet_estimator",
]

Probe = Literal["gaussian", "rademacher"]
G = Callable[[Tensor], Tensor]


def _batch_dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).flatten(1).sum(1)


def _grad_params(g: G) -> tuple[Tensor, ...]:
    if isinstance(g, nn.Module):
        return tuple(p for p in g.parameters() if p.requires_grad)
    return ()


def exact_logdet(g: G, x: Tensor, *, max_dim: int = 256) -> tuple[Tensor, Tensor]:
    """``(g(x), log|det(I + J_g(x))|)`` from the full Jacobian; differentiable.

    Args:
        g: samplewise map with ``Lip(g) < 1`` (then ``det(I + J) > 0``).
        x: ``(B, *event)`` with ``prod(event) <= max_dim``.
        max_dim: refuse larger dimensions (the cost is ``D`` backward passes and a ``D x D``
            determinant per sample).

    Returns:
        ``gx`` of the shape of ``x`` and ``logdet`` of shape ``(B,)``.
    """
    d = x[0].numel()
    if d > max_dim:
        raise ValueError(
            f"ExactLogDet: dimension {d} exceeds max_dim={max_dim}; the exact Jacobian costs {d} "
            "backward passes per block. Raise max_dim if you mean it, or use "
            "PowerSeriesLogDet / RussianRouletteLogDet."
        )
    need_graph = torch.is_grad_enabled()
    gx, jac = jacobian(g, x, create_graph=need_graph)
    eye = torch.eye(d, dtype=jac.dtype, device=jac.device)
    logdet = torch.linalg.slogdet(eye + jac).logabsdet
    if not need_graph:
        gx, logdet = gx.detach(), logdet.detach()
    return gx, logdet


def sample_probes(
    x: Tensor, n_probes: int, kind: Probe = "gaussian", generator: torch.Generator | None = None
) -> Tensor:
    """Hutchinson probes ``v`` with ``E[v v^T] = I``: shape ``(n_probes, *x.shape)``.

    Drawn on ``x``'s device from ``generator`` (or the device's default generator).
    """
    shape = (n_probes, *x.shape)
    if kind == "gaussian":
        return torch.randn(shape, dtype=x.dtype, device=x.device, generator=generator)
    if kind == "rademacher":
        bits = torch.randint(0, 2, shape, device=x.device, generator=generator)
        return bits.to(x.dtype) * 2 - 1
    raise ValueError(f"probe must be 'gaussian' or 'rademacher', got {kind!r}")


def _series(
    gx: Tensor,
    x: Tensor,
    probes: Tensor,
    weights: Sequence[float],
    *,
    neumann_gradient: bool,
    need_graph: bool,
) -> Tensor:
    """The series estimate from the graph ``gx = g(x)``; see :func:`series_logdet`."""
    n = len(weights)
    value = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    surrogate = torch.zeros_like(value)
    plain_graph = need_graph and not neumann_gradient
    for v in probes:
        w = v
        neumann = v * weights[0]
        for k in range(1, n + 1):
            # w <- w^T J: one vector-Jacobian product through the shared graph of g(x).
            w = torch.autograd.grad(gx, x, w, retain_graph=True, create_graph=plain_graph)[0]
            value = value + ((-1) ** (k + 1) * weights[k - 1] / k) * _batch_dot(w, v)
            if neumann_gradient and k < n:
                neumann = neumann + ((-1) ** k * weights[k]) * w
        if neumann_gradient and need_graph:
            # Surrogate neumann^T J v: its gradient is the Neumann-series gradient estimate.
            wj = torch.autograd.grad(gx, x, neumann.detach(), retain_graph=True, create_graph=True)[
                0
            ]
            surrogate = surrogate + _batch_dot(wj, v)
    value = value / probes.shape[0]
    if neumann_gradient:
        surrogate = surrogate / probes.shape[0]
        return value.detach() + (surrogate - surrogate.detach())
    return value


class _MemoryEfficient(torch.autograd.Function):
    """Forms the log-det's gradient in the forward pass; keeps only the graph of ``g(x)``."""

    @staticmethod
    def forward(ctx, compute, x, *params):  # type: ignore[override]
        with torch.enable_grad():
            x_ = x.detach().requires_grad_()
            gx, logdet = compute(x_)
            grads = torch.autograd.grad(
                logdet.sum(), (x_, *params), retain_graph=True, allow_unused=True
            )
        # Dropping `logdet` frees the series' own graph; only g's graph (behind gx) survives.
        ctx.graph = (gx, x_, params)
        ctx.logdet_grads = grads
        return gx.detach(), logdet.detach()

    @staticmethod
    def backward(ctx, grad_gx, grad_logdet):  # type: ignore[override]
        gx, x_, params = ctx.graph
        grads = ctx.logdet_grads
        with torch.enable_grad():
            dg = torch.autograd.grad(gx, (x_, *params), grad_gx, allow_unused=True)
        ctx.graph = None
        scale = grad_logdet.reshape(-1, *([1] * (x_.dim() - 1)))
        grad_x = _add(dg[0], None if grads[0] is None else grads[0] * scale)
        grad_params = []
        if params:
            c = grad_logdet[0]
            # Parameter gradients were summed over the batch in the forward pass, so the loss
            # must weight every sample's log-det equally (a mean or a sum does).
            if not torch.allclose(grad_logdet, c.expand_as(grad_logdet), rtol=1e-5, atol=1e-12):
                raise RuntimeError(
                    "memory_efficient log-det needs a loss that weights every sample's log-det "
                    "equally (e.g. a mean over the batch); use memory_efficient=False otherwise"
                )
            grad_params = [
                _add(d, None if gr is None else gr * c)
                for d, gr in zip(dg[1:], grads[1:], strict=True)
            ]
        return (None, grad_x, *grad_params)


def _add(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    if a is None:
        return b
    return a if b is None else a + b


def series_logdet(
    g: G,
    x: Tensor,
    probes: Tensor,
    weights: Sequence[float],
    *,
    neumann_gradient: bool = False,
    memory_efficient: bool = False,
) -> tuple[Tensor, Tensor]:
    """``(g(x), estimate of log det(I + J_g(x)))`` from a weighted, truncated power series.

    ``logdet = mean_v sum_{k=1}^{n} (-1)^{k+1} weights[k-1] v^T J^k v / k`` (i-ResNet eq. (23)
    with ``weights = 1``; Russian roulette with ``weights[k-1] = 1 / P(N >= k)``).

    Args:
        g: samplewise residual map; ``x``: ``(B, *event)``; ``probes``: ``(m, B, *event)``.
        weights: ``n`` term weights (``n`` = number of terms).
        neumann_gradient: gradient from the Neumann series
            ``sum_{k=0}^{n-1} (-1)^k weights[k] v^T J^k dJ v`` instead of backprop through the
            series; same expectation, one graph of ``J v`` instead of ``n``.
        memory_efficient: form the gradient in the forward pass (see module docstring); same
            numbers as without it for the same draws.

    Returns:
        ``gx`` (shape of ``x``) and ``logdet`` ``(B,)``.
    """
    params = _grad_params(g)
    need_graph = torch.is_grad_enabled() and (x.requires_grad or len(params) > 0)

    def compute(x_: Tensor) -> tuple[Tensor, Tensor]:
        gx = g(x_)
        ld = _series(
            gx, x_, probes, weights, neumann_gradient=neumann_gradient, need_graph=need_graph
        )
        return gx, ld

    if memory_efficient and need_graph:
        return _MemoryEfficient.apply(compute, x, *params)
    with torch.enable_grad():
        x_ = x if (x.requires_grad and need_graph) else x.detach().requires_grad_()
        gx, logdet = compute(x_)
    if not need_graph:
        gx, logdet = gx.detach(), logdet.detach()
    return gx, logdet


def roulette_weights(
    n_terms: int, n_exact: int, distribution: Literal["geometric", "poisson"], param: float
) -> list[float]:
    """``1 / P(N >= k)`` for ``k = 1..n_terms`` with ``N = n_exact + M``.

    ``M ~ Geometric(p)`` on ``{0, 1, ...}`` (``P(M >= j) = (1-p)^j``) or ``M ~ Poisson(rate)``.
    The first ``n_exact`` terms are always computed and carry weight 1.
    """
    weights = []
    for k in range(1, n_terms + 1):
        j = k - n_exact  # term k is used iff M >= j
        if j <= 0:
            tail = 1.0
        elif distribution == "geometric":
            tail = (1.0 - param) ** j
        else:
            # P(M >= j) = 1 - sum_{i<j} e^{-r} r^i / i!, summed in log space for stability.
            cdf = sum(math.exp(-param + i * math.log(param) - math.lgamma(i + 1)) for i in range(j))
            tail = max(1.0 - cdf, 1e-300)
        weights.append(1.0 / tail)
    return weights


class LogDetEstimator(abc.ABC):
    """Base of the log-det estimators: ``estimator(g, x) -> (g(x), logdet)``.

    ``g`` is a samplewise residual branch, ``x`` has shape ``(B, *event)``; the result is ``g(x)``
    (shape of ``x``) and an estimate of ``log det(I + J_g(x))`` of shape ``(B,)`` computed from
    the same graph of ``g``. Estimators hold settings only (no state between calls), so one
    instance may serve many blocks.
    """

    @abc.abstractmethod
    def __call__(self, g: G, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(g(x), logdet)``; see the class docstring."""


class NoLogDet(LogDetEstimator):
    """No log-determinant: ``(g(x), NaN)``, for networks that never need one (classifiers).

    The NaN makes any density that would include it visibly undefined instead of silently off.
    """

    def __call__(self, g: G, x: Tensor) -> tuple[Tensor, Tensor]:
        return g(x), x.new_full((x.shape[0],), math.nan)

    def __repr__(self) -> str:
        return "NoLogDet()"


class ExactLogDet(LogDetEstimator):
    """Exact ``log det(I + J_g)`` by the full Jacobian (autograd) and ``slogdet``.

    Arguments:
        max_dim: largest per-sample dimension accepted (refused above, with a message).
    """

    def __init__(self, max_dim: int = 256) -> None:
        if max_dim < 1:
            raise ValueError(f"max_dim must be positive, got {max_dim}")
        self.max_dim = max_dim

    def __call__(self, g: G, x: Tensor) -> tuple[Tensor, Tensor]:
        return exact_logdet(g, x, max_dim=self.max_dim)

    def __repr__(self) -> str:
        return f"ExactLogDet(max_dim={self.max_dim})"


def _check_probe(probe: str, n_probes: int) -> None:
    if probe not in ("gaussian", "rademacher"):
        raise ValueError(f"probe must be 'gaussian' or 'rademacher', got {probe!r}")
    if not isinstance(n_probes, int) or n_probes < 1:
        raise ValueError(f"n_probes must be a positive integer, got {n_probes!r}")


class PowerSeriesLogDet(LogDetEstimator):
    """Truncated power series with Hutchinson probes (i-ResNet, eq. (21)-(23) of the seed).

    Biased by ``O(Lip(g)^n / n)``; the bias shrinks geometrically with ``n_terms``.

    Arguments:
        n_terms: series terms ``n`` (>= 1).
        n_probes: probe vectors averaged per call.
        probe: ``"gaussian"`` or ``"rademacher"``.
        neumann_gradient: Neumann-series gradient instead of backprop through the series.
        memory_efficient: form the gradient in the forward pass.
        generator: optional torch generator for the probes (on the input's device).
    """

    def __init__(
        self,
        n_terms: int = 5,
        n_probes: int = 1,
        probe: Probe = "gaussian",
        neumann_gradient: bool = False,
        memory_efficient: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        if not isinstance(n_terms, int) or n_terms < 1:
            raise ValueError(f"n_terms must be a positive integer, got {n_terms!r}")
        _check_probe(probe, n_probes)
        self.n_terms, self.n_probes, self.probe = n_terms, n_probes, probe
        self.neumann_gradient, self.memory_efficient = neumann_gradient, memory_efficient
        self.generator = generator

    def __call__(self, g: G, x: Tensor) -> tuple[Tensor, Tensor]:
        probes = sample_probes(x, self.n_probes, self.probe, self.generator)
        return series_logdet(
            g,
            x,
            probes,
            [1.0] * self.n_terms,
            neumann_gradient=self.neumann_gradient,
            memory_efficient=self.memory_efficient,
        )

    def __repr__(self) -> str:
        return (
            f"PowerSeriesLogDet(n_terms={self.n_terms}, n_probes={self.n_probes}, "
            f"probe={self.probe!r}, neumann_gradient={self.neumann_gradient}, "
            f"memory_efficient={self.memory_efficient})"
        )


class RussianRouletteLogDet(LogDetEstimator):
    """Unbiased Russian-roulette estimator (Residual Flows, Chen et al. 2019, eq. (6)).

    Each call draws ``N = n_exact + M`` (``M ~ Geometric(p)`` on ``{0,1,...}``, or
    ``Poisson(rate)``) and sums ``n = N`` terms weighted by ``1 / P(N >= k)``, so
    ``E[estimate] = log det(I + J)`` exactly when ``Lip(g) < 1``. The first ``n_exact`` terms are
    always computed (Residual Flows' code counts one more: its geometric starts at 1). Expected
    terms: ``n_exact + (1-p)/p`` (geometric) or ``n_exact + rate`` (Poisson).

    Arguments:
        distribution: ``"geometric"`` (``p``) or ``"poisson"`` (``rate``).
        p: success probability of the geometric, in ``(0, 1)``.
        rate: Poisson rate (> 0).
        n_exact: terms always computed (>= 1).
        n_probes, probe, neumann_gradient, memory_efficient, generator: as
            :class:`PowerSeriesLogDet` (here the Neumann gradient and memory-efficient backward
            are on by default, as in Residual Flows).
        max_terms: cap on ``N`` (a cap makes the estimator biased, by at most the tail of the
            series beyond it; the default is far beyond any practical draw).
    """

    def __init__(
        self,
        distribution: Literal["geometric", "poisson"] = "geometric",
        p: float = 0.5,
        n_exact: int = 2,
        n_probes: int = 1,
        neumann_gradient: bool = True,
        memory_efficient: bool = True,
        rate: float = 2.0,
        probe: Probe = "gaussian",
        max_terms: int = 200,
        generator: torch.Generator | None = None,
    ) -> None:
        if distribution not in ("geometric", "poisson"):
            raise ValueError(f"distribution must be 'geometric' or 'poisson', got {distribution!r}")
        if distribution == "geometric" and not 0.0 < p < 1.0:
            raise ValueError(f"geometric p must lie in (0, 1), got {p}")
        if distribution == "poisson" and not rate > 0:
            raise ValueError(f"poisson rate must be positive, got {rate}")
        if not isinstance(n_exact, int) or n_exact < 1:
            # N >= 1 must hold surely, else clamping N up to one term would bias the estimate.
            raise ValueError(f"n_exact must be a positive integer, got {n_exact!r}")
        _check_probe(probe, n_probes)
        self.distribution, self.p, self.rate, self.n_exact = distribution, p, rate, n_exact
        self.n_probes, self.probe, self.max_terms = n_probes, probe, max_terms
        self.neumann_gradient, self.memory_efficient = neumann_gradient, memory_efficient
        self.generator = generator
        # The number of terms is drawn on the host (it sets a Python loop's length): one small
        # CPU draw per call, no device synchronisation.
        self._cpu_generator: torch.Generator | None = None

    @property
    def _param(self) -> float:
        return self.p if self.distribution == "geometric" else self.rate

    def draw_n_terms(self) -> int:
        """Draw ``N = n_exact + M`` (at most ``max_terms``)."""
        gen = self._cpu_generator
        if self.distribution == "geometric":
            m = int(torch.empty(()).geometric_(self.p, generator=gen).item()) - 1
        else:
            m = int(torch.poisson(torch.tensor(float(self.rate)), generator=gen).item())
        return min(self.n_exact + m, self.max_terms)

    def __call__(self, g: G, x: Tensor) -> tuple[Tensor, Tensor]:
        n = self.draw_n_terms()
        weights = roulette_weights(n, self.n_exact, self.distribution, self._param)
        probes = sample_probes(x, self.n_probes, self.probe, self.generator)
        return series_logdet(
            g,
            x,
            probes,
            weights,
            neumann_gradient=self.neumann_gradient,
            memory_efficient=self.memory_efficient,
        )

    def __repr__(self) -> str:
        dist = f"p={self.p}" if self.distribution == "geometric" else f"rate={self.rate}"
        return (
            f"RussianRouletteLogDet(distribution={self.distribution!r}, {dist}, "
            f"n_exact={self.n_exact}, n_probes={self.n_probes}, "
            f"neumann_gradient={self.neumann_gradient}, memory_efficient={self.memory_efficient})"
        )


#: Names :func:`logdet_estimator` accepts.
LOGDETS = ("exact", "series", "roulette", "none")


def logdet_estimator(spec: str | LogDetEstimator, dim: int = 1) -> LogDetEstimator:
    """The estimator named by ``spec`` with its default settings, or ``spec`` itself.

    Args:
        spec: ``"exact"`` (:class:`ExactLogDet`, accepting blocks of ``max(256, dim)``
            dimensions), ``"series"`` (:class:`PowerSeriesLogDet`), ``"roulette"``
            (:class:`RussianRouletteLogDet`), ``"none"`` (:class:`NoLogDet`), or an estimator.
        dim: the per-sample dimension of the block it will serve.

    Raises:
        ValueError: an unknown name.
    """
    if isinstance(spec, LogDetEstimator):
        return spec
    if spec == "exact":
        return ExactLogDet(max_dim=max(256, dim))
    if spec == "series":
        return PowerSeriesLogDet()
    if spec == "roulette":
        return RussianRouletteLogDet()
    if spec == "none":
        return NoLogDet()
    raise ValueError(f"logdet must be one of {LOGDETS} or a LogDetEstimator, got {spec!r}")
