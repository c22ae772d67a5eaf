"""Log-determinants ``log det(I + J_g(x))`` of residual blocks ``y = x + g(x)``.

Plain functions do the math; the estimator classes hold settings and call them. Every estimator
is a callable ``estimator(g, x) -> (g(x), logdet)`` with ``logdet`` of shape ``(batch,)``, in
nats: ``g(x)`` and the log-det share one graph of ``g``, so ``g`` runs once per block and call.
With ``Lip(g) < 1`` the determinant is positive (i-ResNet, app. A, Lemma 6), so
``log|det| = log det``.

- exact ([`exact_logdet`][iresnet.ops.logdet.exact_logdet]): the full Jacobian and
  ``slogdet``; for small dimensions.
- power series (i-ResNet sec. 3.1-3.3): ``log det(I + J) = sum_{k>=1} (-1)^{k+1} tr(J^k) / k``
  (eq. (4)), truncated after ``n`` terms (eq. (5)), each trace by Hutchinson's
  ``tr(A) = E[v^T A v]`` with ``E[v v^T] = I`` (sec. 3.2, Algorithm 2); ``v^T J^k`` is built as
  ``k`` vector-Jacobian products through the one graph of ``g(x)``.
- Russian roulette (Residual Flows sec. 3.1): the series cut at a random ``N``, term ``k``
  weighted by ``1 / P(N >= k)`` (eq. (5)), hence unbiased (Theorem 1, eq. (6)).
- stratified roulette ([`StratifiedRouletteLogDet`][iresnet.ops.logdet.StratifiedRouletteLogDet]):
  the roulette with its first terms averaged over more probes; unbiased, lower variance per
  vector-Jacobian product where the first terms dominate the variance.
- Neumann-series gradient (Residual Flows sec. 3.2, Theorem 2, eq. (8)):
  ``d log det(I + J) = tr((I + J)^{-1} dJ) = E[(sum_{k>=0} (-1)^k c_k v^T J^k) dJ v]``, with the
  roulette weights ``c_k``; differentiating it needs one graph of ``J v`` instead of ``n``.
- memory-efficient backward (Residual Flows sec. 3.2, "backward-in-forward"): the log-det's
  gradient with respect to the input and the parameters is formed during the forward pass, and
  only the graph of ``g`` is kept for the backward pass, so memory does not grow with the
  number of terms.
- Cayley log-det (Monotone Flows, arXiv:2210.08176): the monotone block's
  ``log|det (I - J)(I + J)^{-1}| = log det(I - J) - log det(I + J) = -2 sum_{k odd} tr(J^k)/k``
  (the even powers cancel). Every estimator's ``cayley(g, x)`` returns it: the exact one by two
  ``slogdet``s, the series ones by the same series with the term weights of
  [`cayley_weights`][iresnet.ops.logdet.cayley_weights] (the Neumann gradient and the
  memory-efficient backward included, unchanged).

The value returned is always the log-det estimate itself; a gradient surrogate is never returned
as a value (the surrogate only contributes its gradient).

References:
    - Behrmann et al., "Invertible Residual Networks", ICML 2019, arXiv:1811.00995.
    - Chen et al., "Residual Flows for Invertible Generative Modeling", NeurIPS 2019,
      arXiv:1906.02735.
    - Ahn et al., "Invertible Monotone Operators for Normalizing Flows", NeurIPS 2022,
      arXiv:2210.08176.
    - Hutchinson, "A stochastic estimator of the trace of the influence matrix for Laplacian
      smoothing splines", Commun. Stat. Simul. Comput. 19(2), 1990.
"""

from __future__ import annotations

import abc
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..checks import check_input
from ..errors import RouletteVarianceWarning
from .jacobian import ClosedGrad, Pairs, Samplewise, jacobian, linearize, linearize_adjoint
from .roulette import (
    roulette_for_lipschitz,
    roulette_variance_bound,
    roulette_variance_is_finite,
    truncation_cap,
)

__all__ = [
    "cayley_weights",
    "exact_logdet",
    "sample_probes",
    "series_logdet",
    "roulette_weights",
    "ExactLogDet",
    "PowerSeriesLogDet",
    "RussianRouletteLogDet",
    "StratifiedRouletteLogDet",
    "LogDetEstimator",
    "NoLogDet",
    "logdet_estimator",
]

Probe = Literal["gaussian", "rademacher"]
G = Callable[[Tensor], Tensor]


def _batch_dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).flatten(1).sum(1)


def _grad_params(g: G) -> tuple[Tensor, ...]:
    """The tensors gradients must reach besides ``x``: ``g``'s trainable parameters and the
    tensors a bound map closes over (``grad_inputs``, e.g. the contexts of a conditional branch)
    that require a gradient."""
    if isinstance(g, nn.Module):
        params = tuple(p for p in g.parameters() if p.requires_grad)
        extra = tuple(t for t in getattr(g, "grad_inputs", ()) if t.requires_grad)
        return params + extra
    return ()


def exact_logdet(
    g: G, x: Tensor, *, max_dim: int = 256, cayley: bool = False
) -> tuple[Tensor, Tensor]:
    """``(g(x), log|det(I + J_g(x))|)`` from the full Jacobian and ``slogdet``; differentiable.

    The log-det of the block ``x + g(x)`` in i-ResNet's change of variables (eq. (3)), computed
    exactly: the per-sample Jacobian from [`jacobian`][iresnet.ops.jacobian.jacobian] (forward
    mode through chains of layers with ``jvp``, batched autograd otherwise), then ``slogdet``.
    With autograd on, the result carries a gradient (double backward).

    Args:
        g: samplewise map; with ``Lip(g) < 1`` the determinant is positive.
        x: ``(B, *event)`` with ``D = prod(event) <= max_dim``.
        max_dim: refuse larger ``D`` (the cost is ``D`` Jacobian-vector products and a ``D x D``
            determinant per sample).
        cayley: return instead ``log|det (I - J)(I + J)^{-1}| = log|det(I - J)| - log|det(I + J)|``,
            the log-det of the monotone block (Monotone Flows, arXiv:2210.08176).

    Returns:
        ``gx`` of the shape of ``x`` and ``logdet`` of shape ``(B,)``, in nats.

    Raises:
        TypeError: ``x`` is not a tensor.
        DataError: ``x`` is empty, boolean or complex, or (``g`` a module) of another dtype or
            device than ``g``.
        ValueError: ``D > max_dim``.

    References:
        - Behrmann et al., "Invertible Residual Networks", arXiv:1811.00995.
        - Ahn et al., "Invertible Monotone Operators for Normalizing Flows", arXiv:2210.08176
          (``cayley=True``).

    Examples:
        >>> g = torch.nn.Linear(2, 2, bias=False)
        >>> with torch.no_grad():
        ...     _ = g.weight.copy_(torch.tensor([[0.5, 0.0], [0.0, -0.5]]))
        >>> gx, logdet = exact_logdet(g, torch.zeros(3, 2))
        >>> [round(v, 4) for v in logdet.tolist()]  # log(1.5 * 0.5)
        [-0.2877, -0.2877, -0.2877]
    """
    check_input(x, "exact_logdet", like=g if isinstance(g, nn.Module) else None)
    d = x[0].numel()
    if d > max_dim:
        raise ValueError(
            f"ExactLogDet: dimension {d} exceeds max_dim={max_dim}; the exact Jacobian costs {d} "
            f"backward passes per block. Pass ExactLogDet(max_dim={d}) (not the name 'exact') "
            "if you mean it, or use PowerSeriesLogDet / RussianRouletteLogDet."
        )
    need_graph = torch.is_grad_enabled()
    gx, jac = jacobian(g, x, create_graph=need_graph)
    # slogdet has no half-precision kernel: float16/bfloat16 Jacobians are factorised in float32.
    low = jac.dtype in (torch.float16, torch.bfloat16)
    mat = jac.float() if low else jac
    eye = torch.eye(d, dtype=mat.dtype, device=mat.device)
    logdet = _logabsdet(eye + mat)
    if cayley:
        logdet = _logabsdet(eye - mat) - logdet
    logdet = logdet.to(jac.dtype)
    if not need_graph:
        gx, logdet = gx.detach(), logdet.detach()
    return gx, logdet


def _logabsdet(m: Tensor) -> Tensor:
    """``log|det m|`` of a batch of matrices ``(B, D, D)``, differentiable.

    Traced by ``torch.compile``, its value comes from ``slogdet`` without a graph and its
    gradient ``m^{-T}`` rides on ``<m^{-T}, m>`` (zero added): inductor (torch 2.13) miscompiles
    ``slogdet``'s backward through a batched Jacobian such as ``exact_logdet`` builds (wrong
    parameter gradients, some of the wrong sign, where ``aot_eager`` and eager agree), and
    gets ``inv`` right. One graph, no break; first derivatives only, as a compiled step needs.

    ``D <= 2`` (the 2-D toys' blocks) takes the determinant's closed form, ``m_00`` or
    ``m_00 m_11 - m_01 m_10``: a few element-wise operations, differentiable to any order,
    where ``slogdet`` runs an LU factorisation per call and another in its backward."""
    d = m.shape[-1]
    if d == 1:
        return m[..., 0, 0].abs().log()
    if d == 2:
        return (m[..., 0, 0] * m[..., 1, 1] - m[..., 0, 1] * m[..., 1, 0]).abs().log()
    if not torch.compiler.is_compiling():
        return torch.linalg.slogdet(m).logabsdet
    with torch.no_grad():
        value = torch.linalg.slogdet(m).logabsdet
        inverse_t = torch.linalg.inv(m).transpose(-2, -1)
    carrier = (inverse_t * m).sum((-2, -1))
    return value + (carrier - carrier.detach())


def sample_probes(
    x: Tensor, n_probes: int, kind: Probe = "gaussian", generator: torch.Generator | None = None
) -> Tensor:
    """Hutchinson probes ``v`` with ``E[v] = 0`` and ``E[v v^T] = I`` (i-ResNet sec. 3.2).

    Args:
        x: the input whose shape, dtype and device the probes take.
        n_probes: number of probes ``m``.
        kind: ``"gaussian"`` (``N(0, I)``) or ``"rademacher"`` (``+-1`` with equal
            probability; lower variance for the same ``m``).
        generator: draws from this generator (on ``x``'s device), else the default one.

    Returns:
        A tensor of shape ``(n_probes, *x.shape)``.

    Raises:
        ValueError: an unknown ``kind``.

    Examples:
        >>> v = sample_probes(torch.zeros(4, 3), 2, "rademacher")
        >>> v.shape, bool((v.abs() == 1).all())
        (torch.Size([2, 4, 3]), True)
    """
    shape = (n_probes, *x.shape)
    # (no generator argument unless given: traced with a symbolic batch size, ``randn`` takes
    # no ``generator=None``)
    gen = {} if generator is None else {"generator": generator}
    if kind == "gaussian":
        return torch.randn(shape, dtype=x.dtype, device=x.device, **gen)
    if kind == "rademacher":
        bits = torch.randint(0, 2, shape, device=x.device, **gen)
        return bits.to(x.dtype) * 2 - 1
    raise ValueError(f"probe must be 'gaussian' or 'rademacher', got {kind!r}")


def _axpy(a: Tensor, w: Tensor, coef: float) -> Tensor:
    """``a + coef * w``: one fused ``add`` eagerly; traced, a product and a sum, because
    inductor (torch 2.13) drops ``alpha`` from ``torch.add(a, w, alpha=coef)`` when ``w`` comes
    out of a matrix product (a pattern rewrite into ``addmm``), which the series' terms do."""
    if torch.compiler.is_compiling():
        return a + w * coef
    return torch.add(a, w, alpha=coef)


def _series(
    gx: Tensor,
    x: Tensor,
    probes: Tensor,
    weights: Sequence[float] | Sequence[Sequence[float]],
    *,
    neumann_gradient: bool,
    need_graph: bool,
    vjp: Callable[[Tensor], Tensor] | None = None,
    jv: Tensor | None = None,
    neumann_out: list[Tensor] | None = None,
) -> Tensor:
    """The series estimate from the graph ``gx = g(x)``; see ``series_logdet``.

    ``weights``: one list for every probe (the probes are then averaged), or one list per probe
    (its own number of terms; summed, the lists carry any averaging). From
    [`linearize`][iresnet.ops.jacobian.linearize]: ``vjp``, the closed-form ``w -> w J`` for
    the terms that need no graph, and ``jv``, the probes pushed forward (``J v`` with its
    graph), for the Neumann gradient's surrogate. With ``neumann_out`` (a list), the Neumann
    vectors, divided by the probes' averaging, are appended to it instead (one per probe, no
    graph): the surrogate's gradient is then formed by the caller, and the value returned
    carries none."""
    per_probe = len(weights) > 0 and isinstance(weights[0], Sequence)
    lists: Sequence[Sequence[float]] = (
        weights if per_probe else [weights] * probes.shape[0]  # type: ignore[assignment,list-item]
    )
    value = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    surrogate = torch.zeros_like(value)
    plain_graph = need_graph and not neumann_gradient
    for p, (v, probe_weights) in enumerate(zip(probes, lists, strict=True)):
        n = len(probe_weights)
        w = v
        neumann = v * probe_weights[0]
        # sum_k (-1)^{k+1} weights[k-1] v^T J^k v / k = v^T (sum_k ... w_k): one product with
        # v per probe, the terms summed with one fused operation each.
        terms: Tensor | None = None
        for k in range(1, n + 1):
            # w <- w^T J: one vector-Jacobian product (in closed form where the branch allows,
            # else through the shared graph of g(x)).
            if vjp is not None and not plain_graph:
                w = vjp(w)
            else:
                w = torch.autograd.grad(gx, x, w, retain_graph=True, create_graph=plain_graph)[0]
            coef = (-1) ** (k + 1) * probe_weights[k - 1] / k
            terms = w * coef if terms is None else _axpy(terms, w, coef)
            if neumann_gradient and k < n:
                neumann = _axpy(neumann, w, (-1) ** k * probe_weights[k])
        if terms is not None:
            value = value + _batch_dot(terms, v)
        if neumann_out is not None:
            neumann_out.append(neumann.detach())
        elif neumann_gradient and need_graph:
            # Surrogate neumann^T J v: its gradient is the Neumann-series gradient estimate.
            if jv is not None:  # J v from forward mode: a first-order backward pass
                surrogate = surrogate + _batch_dot(neumann.detach(), jv[p])
            else:
                wj = torch.autograd.grad(
                    gx, x, neumann.detach(), retain_graph=True, create_graph=True
                )[0]
                surrogate = surrogate + _batch_dot(wj, v)
    scale = 1 if per_probe else probes.shape[0]
    value = value / scale
    if neumann_out is not None:
        neumann_out[:] = [n / scale for n in neumann_out]
        return value.detach()
    if neumann_gradient:
        surrogate = surrogate / scale
        return value.detach() + (surrogate - surrogate.detach())
    return value


_Closed = tuple[tuple[Tensor | None, Pairs], ClosedGrad]
"""The closed-form route of ``series_logdet``: the log-det's gradient (with respect to ``x``,
and ``(tensor, gradient)`` pairs) and the backward pass ``r -> gradient of r^T g(x)``."""


class _MemoryEfficient(torch.autograd.Function):
    """Forms the log-det's gradient in the forward pass; keeps only what the backward pass of
    ``g`` needs (autograd's graph of ``g(x)``, or the closed-form route's saved tensors)."""

    @staticmethod
    def forward(ctx, compute, x, *params):  # type: ignore[override]
        with torch.enable_grad():
            x_ = x.detach().requires_grad_()
            gx, logdet, closed = compute(x_)
            if closed is None:
                grads = torch.autograd.grad(
                    logdet.sum(), (x_, *params), retain_graph=True, allow_unused=True
                )
                # Dropping `logdet` frees the series' own graph; only g's graph survives.
                ctx.graph = (gx, x_, params)
            else:
                grads = None
                ctx.graph = (None, x_, params)
        ctx.logdet_grads = grads
        ctx.closed = closed
        return gx.detach(), logdet.detach()

    @staticmethod
    def backward(ctx, grad_gx, grad_logdet):  # type: ignore[override]
        if ctx.graph is None:
            raise RuntimeError(
                "the memory-efficient log-det keeps what its backward pass needs for one pass "
                "only (retain_graph cannot keep it); for a second one (autograd.functional."
                "jacobian, gradient checks) use memory_efficient=False, or evaluate inside "
                "iresnet.swap_logdets(model, 'exact')"
            )
        gx, x_, params = ctx.graph
        closed, grads = ctx.closed, ctx.logdet_grads
        ctx.graph = ctx.closed = ctx.logdet_grads = None
        scale = grad_logdet.reshape(-1, *([1] * (x_.dim() - 1)))
        if closed is not None:
            return (None, *_closed_backward(closed, grad_gx, grad_logdet, scale, x_, params))
        with torch.enable_grad():
            dg = torch.autograd.grad(gx, (x_, *params), grad_gx, allow_unused=True)
        grad_x = _add(dg[0], None if grads[0] is None else grads[0] * scale)
        grad_params = []
        if params:
            c = _equal_weight(grad_logdet)
            grad_params = [
                _add(d, None if gr is None else gr * c)
                for d, gr in zip(dg[1:], grads[1:], strict=True)
            ]
        return (None, grad_x, *grad_params)


def _equal_weight(grad_logdet: Tensor) -> Tensor:
    """The one weight of every sample's log-det in the loss; raises if they differ."""
    c = grad_logdet[0]
    # Parameter gradients were summed over the batch in the forward pass, so the loss must
    # weight every sample's log-det equally (a mean or a sum does).
    if not torch.allclose(grad_logdet, c.expand_as(grad_logdet), rtol=1e-5, atol=1e-12):
        raise RuntimeError(
            "memory_efficient log-det needs a loss that weights every sample's log-det "
            "equally (e.g. a mean over the batch); use memory_efficient=False otherwise"
        )
    return c


def _closed_backward(
    closed: _Closed,
    grad_gx: Tensor,
    grad_logdet: Tensor,
    scale: Tensor,
    x: Tensor,
    params: tuple[Tensor, ...],
) -> list[Tensor | None]:
    """The gradients of ``grad_gx^T g(x) + grad_logdet^T logdet`` with respect to ``x`` and
    ``params`` on the closed-form route: the backward pass of ``g`` in closed form, the
    log-det's gradient formed in the forward pass, and for both together the closed-form
    pullbacks of the normalised weights and ``beta`` to the parameters (one autograd pass
    through their small graphs where a layer gives no pullback)."""
    (logdet_x, logdet_pairs), grad = closed
    grad_x, pairs = grad(grad_gx)
    if logdet_x is not None:
        grad_x = logdet_x * scale if grad_x is None else grad_x.addcmul_(logdet_x, scale)
    if grad_x is None:
        grad_x = torch.zeros_like(x)
    if not params:
        return [grad_x]
    c = _equal_weight(grad_logdet) if logdet_pairs else None
    index = {id(p): i for i, p in enumerate(params)}
    grads: list[Tensor | None] = [None] * len(params)
    # Gradients meant for the same computed tensor are summed before it is pulled back.
    merged: dict[int, tuple[Any, Tensor]] = {}
    for target, g in [*pairs, *((t, g * c) for t, g in logdet_pairs)]:
        i = index.get(id(target))
        if i is not None:
            grads[i] = _add(grads[i], g)
            continue
        key = id(target)
        merged[key] = (target, g if key not in merged else merged[key][1] + g)
    graphs = []
    for target, g in merged.values():
        if isinstance(target, Tensor):
            if target.requires_grad:
                graphs.append((target, g))
        elif (i := index.get(id(target.param))) is not None:  # a closed-form pullback
            grads[i] = _add(grads[i], target.pullback(g))
    if graphs:
        carried = torch.autograd.grad(
            [t for t, _ in graphs], params, [g for _, g in graphs], allow_unused=True
        )
        grads = [_add(a, b) for a, b in zip(grads, carried, strict=True)]
    return [grad_x, *grads]


def _add(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    if a is None:
        return b
    return a if b is None else a + b


class _Carry(torch.autograd.Function):
    """``(target, cotangent) -> zeros(B)`` whose backward gives ``target`` the cotangent times
    each sample's weight: the carrier of a per-sample cotangent, with no work in the forward
    pass (a product and a sum, ``(cotangent * target).flatten(1).sum(1)``, would compute zeros
    the hard way)."""

    @staticmethod
    def forward(ctx, target, cotangent):  # type: ignore[override]
        ctx.save_for_backward(cotangent)
        return target.new_zeros(target.shape[0])

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (cotangent,) = ctx.saved_tensors
        return grad.reshape(-1, *([1] * (cotangent.dim() - 1))) * cotangent, None


def _gradient_carrier(x: Tensor, pairs: Pairs) -> Tensor:
    """A ``(B,)`` tensor of zeros whose gradient is the log-det's, formed in the forward pass
    (``surrogate_grad``'s pairs of ``linearize_adjoint(..., graph=True)``): the layers' inputs'
    cotangents per sample (exact for any weighting of the samples), and the other pairs' batch
    sums spread equally over the samples, exact for a loss that weights every sample's log-det
    equally (a mean or a sum). Added to a log-det without a graph, it is the memory-efficient
    route that ``torch.compile`` traces: autograd keeps the small graphs of the targets
    (normalised weights, ``beta``) instead of the series' or ``J v``'s."""
    total = x.new_zeros(())
    per_sample: Tensor | None = None
    for target, g in pairs:
        if isinstance(target, Samplewise):  # a cotangent per sample: exact for any weights
            if target.tensor.requires_grad:
                term = _Carry.apply(target.tensor, g.detach())
                per_sample = term if per_sample is None else per_sample + term
        elif isinstance(target, Tensor):
            if target.requires_grad:
                total = total + (g.detach() * target).sum()
        else:  # a closed-form pullback to a parameter
            total = total + (target.pullback(g).detach() * target.param).sum()
    carrier = (total / x.shape[0]).expand(x.shape[0])
    if per_sample is not None:
        carrier = carrier + per_sample
    return carrier - carrier.detach()


def series_logdet(
    g: G,
    x: Tensor,
    probes: Tensor,
    weights: Sequence[float] | Sequence[Sequence[float]],
    *,
    neumann_gradient: bool = False,
    memory_efficient: bool = False,
) -> tuple[Tensor, Tensor]:
    """``(g(x), estimate of log det(I + J_g(x)))`` from a weighted, truncated power series.

    ``logdet = mean_v sum_{k=1}^{n} (-1)^{k+1} weights[k-1] v^T J^k v / k``: i-ResNet's truncated
    series (eq. (5)) with Hutchinson's estimator when ``weights`` are all 1; the Russian roulette
    (Residual Flows Theorem 1, eq. (6)) with ``weights[k-1] = 1 / P(N >= k)``
    ([`roulette_weights`][iresnet.ops.logdet.roulette_weights]).

    Args:
        g: samplewise residual map.
        x: ``(B, *event)``.
        probes: ``(m, B, *event)``, from [`sample_probes`][iresnet.ops.logdet.sample_probes].
        weights: ``n`` term weights (``n`` = number of terms), shared by the probes and
            averaged over them; or one list per probe (probe ``i`` runs ``len(weights[i])``
            terms), summed: ``sum_i sum_k (-1)^{k+1} weights[i][k-1] v_i^T J^k v_i / k``, so
            different probes may serve different terms
            ([`StratifiedRouletteLogDet`][iresnet.ops.logdet.StratifiedRouletteLogDet]).
        neumann_gradient: gradient from the Neumann series
            ``sum_{k=0}^{n-1} (-1)^k weights[k] v^T J^k dJ v`` (Residual Flows Theorem 2,
            eq. (8), term ``k`` weighted like term ``k + 1`` of the value) instead of backprop
            through the series; same expectation, one graph of ``J v`` instead of ``n``.
        memory_efficient: form the gradient in the forward pass (Residual Flows sec. 3.2); same
            numbers as without it for the same draws. The loss must then weight every sample's
            log-det equally (a mean or a sum over the batch): checked in the backward pass when
            eager, assumed when traced by ``torch.compile`` (the check would read the weights
            on the host; use ``memory_efficient=False`` for a loss that weights samples).

    Returns:
        ``gx`` (shape of ``x``) and ``logdet`` ``(B,)``, in nats.

    Raises:
        TypeError: ``x`` is not a tensor.
        DataError: ``x`` is empty, boolean or complex, or (``g`` a module) of another dtype or
            device than ``g``.
        RuntimeError: in the backward pass of ``memory_efficient=True``, a loss that weights the
            samples' log-dets unequally (eager only).

    References:
        - Behrmann et al., arXiv:1811.00995, sec. 3.2-3.3.
        - Chen et al., arXiv:1906.02735, sec. 3.1-3.2.
        - Hutchinson, Commun. Stat. Simul. Comput. 19(2), 1990.

    Examples:
        >>> g = torch.nn.Linear(2, 2, bias=False)
        >>> with torch.no_grad():
        ...     _ = g.weight.copy_(0.5 * torch.eye(2))
        >>> x = torch.zeros(1, 2)
        >>> probes = sample_probes(x, 1, "rademacher")  # v^T v = 2 exactly here
        >>> _, logdet = series_logdet(g, x, probes, [1.0] * 30)
        >>> [round(v, 4) for v in logdet.tolist()]  # 2 log(1.5), up to the tail after 30 terms
        [0.8109]
    """
    check_input(x, "series_logdet", like=g if isinstance(g, nn.Module) else None)
    params = _grad_params(g)
    need_graph = torch.is_grad_enabled() and (x.requires_grad or len(params) > 0)

    def compute(x_: Tensor, in_graph: bool = False) -> tuple[Tensor, Tensor, _Closed | None]:
        if memory_efficient and neumann_gradient and need_graph:
            closed = linearize_adjoint(g, x_, probes, graph=in_graph)
            if closed is not None:  # every gradient in closed form: no graph of g or J v
                gx, vjp_, surrogate_grad, grad = closed
                neumann: list[Tensor] = []
                ld = _series(
                    gx,
                    x_,
                    probes,
                    weights,
                    neumann_gradient=True,
                    need_graph=True,
                    vjp=vjp_,
                    neumann_out=neumann,
                )
                if in_graph:  # g(x) has its graph; the log-det's gradient rides on a carrier
                    return (
                        gx,
                        ld + _gradient_carrier(x_, surrogate_grad(torch.stack(neumann))[1]),
                        None,
                    )
                return gx, ld, (surrogate_grad(torch.stack(neumann)), grad)
        push = probes if (neumann_gradient and need_graph) else None
        gx, jv, vjp = linearize(g, x_, push)
        ld = _series(
            gx,
            x_,
            probes,
            weights,
            neumann_gradient=neumann_gradient,
            need_graph=need_graph,
            vjp=vjp,
            jv=jv,
        )
        return gx, ld, None

    compiling = torch.compiler.is_compiling()
    if memory_efficient and need_graph and not compiling:
        return _MemoryEfficient.apply(compute, x, *params)
    # Traced by torch.compile, the memory-efficient backward (an autograd.Function calling
    # autograd, and a host check of the loss's weights) gives way to a gradient carrier where
    # g's products are in closed form (the same numbers; the loss must weight the samples'
    # log-dets equally, unchecked), else to the plain Neumann surrogate: one graph whose
    # backward the compiler plans.
    with torch.enable_grad():
        if x.requires_grad and need_graph:
            x_ = x
        elif compiling and _has_closed_form(g) and (neumann_gradient or not need_graph):
            x_ = x  # no autograd call on x: a fresh leaf would only break the graph
        else:
            x_ = x.detach().requires_grad_()
        gx, logdet, _ = compute(x_, in_graph=True)
    if not need_graph:
        gx, logdet = gx.detach(), logdet.detach()
    return gx, logdet


def _has_closed_form(g: G) -> bool:
    """Whether ``g`` is a chain whose vector-Jacobian products ``linearize`` writes in closed
    form (no autograd call needed for the series' terms)."""
    return isinstance(g, nn.Sequential) and all(hasattr(m, "linearize") for m in g)


def _series_in_graph(
    g: G,
    x: Tensor,
    probes: Tensor,
    n_terms: Tensor,
    weights: Sequence[float],
    *,
    n_sure: int,
    neumann_gradient: bool,
    memory_efficient: bool = False,
) -> tuple[Tensor, Tensor]:
    """``series_logdet`` for a number of terms ``n_terms`` held in a tensor, so a random ``N``
    needs no host read and one compiled graph serves every draw: the ``n_sure`` terms that are
    always computed (``N >= n_sure`` surely) are written out, the rest run in a
    ``while_loop`` up to ``k = n_terms``. Same numbers as ``series_logdet`` with
    ``weights[:n_terms]`` (the table ``weights`` is indexed by ``k`` as the list would be);
    ``g`` must have closed-form products ([`linearize`][iresnet.ops.jacobian.linearize]), and
    a gradient is only formed by the Neumann series (the terms are never differentiated: their
    products run without a graph, and the gradient is that of the surrogate
    ``neumann^T J v``). With ``memory_efficient`` (and products whose adjoints are in closed
    form, [`linearize_adjoint`][iresnet.ops.jacobian.linearize_adjoint]) that gradient is
    formed in the forward pass and carried by ``_gradient_carrier``: no graph of ``J v``."""
    from torch._higher_order_ops.while_loop import while_loop

    params = _grad_params(g)
    need_graph = torch.is_grad_enabled() and (x.requires_grad or len(params) > 0)
    closed = None
    if memory_efficient and neumann_gradient and need_graph:
        closed = linearize_adjoint(g, x, probes, graph=True)
    if closed is not None:
        gx, vjp, surrogate_grad, _ = closed
        jv = None
    else:
        gx, jv, vjp = linearize(g, x, probes if (neumann_gradient and need_graph) else None)
    assert vjp is not None  # the caller checked _has_closed_form
    k_max = len(weights)
    n_sure = min(n_sure, k_max)
    # term k adds (-1)^{k+1} w_k / k (v J^k) to the terms, and (-1)^k w_{k+1} (v J^k) to the
    # Neumann vector while k < N (entry k - 1 of both tables; the last Neumann one is unused)
    term_coef = [(-1) ** (k + 1) * weights[k - 1] / k for k in range(1, k_max + 1)]
    neumann_coef = [(-1) ** k * weights[k] for k in range(1, k_max)] + [0.0]
    n = n_terms.to(device=x.device)
    m = probes.shape[0]

    def term(state: Sequence[Tensor], c: Tensor | float, nc: Tensor | float | None) -> list[Tensor]:
        out: list[Tensor] = []
        for p in range(m):
            w, terms, neumann = state[3 * p : 3 * p + 3]
            w = vjp(w)
            out += [w, terms + w * c, neumann if nc is None else neumann + w * nc]
        return out

    with torch.no_grad():
        state: list[Tensor] = []
        for v in probes:
            state += [v, torch.zeros_like(v), v * weights[0]]
        for k in range(1, n_sure):  # terms surely computed, and surely followed by another
            state = term(state, term_coef[k - 1], neumann_coef[k - 1])
        last = torch.full((), neumann_coef[n_sure - 1], dtype=x.dtype, device=x.device)
        more = torch.where(n > n_sure, last, torch.zeros_like(last))
        state = term(state, term_coef[n_sure - 1], more)
        if n_sure < k_max:
            coef = torch.tensor(term_coef, dtype=x.dtype, device=x.device)
            ncoef = torch.tensor(neumann_coef, dtype=x.dtype, device=x.device)

            def cond(k: Tensor, *state: Tensor) -> Tensor:
                return k <= n

            def body(k: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
                at = (k - 1).reshape(1)  # a 0-d index tensor: index_select, no host read
                c = coef.index_select(0, at)
                nc = torch.where(k < n, ncoef.index_select(0, at), torch.zeros_like(c))
                return (k + 1, *term(state, c, nc))

            first = torch.full((), n_sure + 1, dtype=torch.int64, device=x.device)
            _, *state = while_loop(cond, body, (first, *state))
        value = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for p, v in enumerate(probes):
            value = value + _batch_dot(state[3 * p + 1], v)
        value = value / m
    if not need_graph:
        return gx.detach(), value
    if not neumann_gradient:
        return gx, value
    if closed is not None:
        neumann = torch.stack([state[3 * p + 2] for p in range(m)]) / m
        return gx, value + _gradient_carrier(x, surrogate_grad(neumann)[1])
    surrogate = torch.zeros_like(value)
    for p in range(m):
        surrogate = surrogate + _batch_dot(state[3 * p + 2], jv[p])  # type: ignore[index]
    surrogate = surrogate / m
    return gx, value + (surrogate - surrogate.detach())


def roulette_weights(
    n_terms: int, n_exact: int, distribution: Literal["geometric", "poisson"], param: float
) -> list[float]:
    """The Russian-roulette term weights ``1 / P(N >= k)`` for ``k = 1..n_terms``.

    ``N = n_exact + M`` with ``M ~ Geometric(p)`` on ``{0, 1, ...}`` (``P(M >= j) = (1-p)^j``)
    or ``M ~ Poisson(rate)``; the first ``n_exact`` terms are always computed and carry weight 1
    (Residual Flows sec. 3.1, eq. (5)).

    Args:
        n_terms: number of weights (the drawn ``N``).
        n_exact: terms always computed.
        distribution: ``"geometric"`` or ``"poisson"``.
        param: ``p`` of the geometric, or the Poisson rate.

    Returns:
        A list of ``n_terms`` floats, each ``>= 1``.

    References:
        - Chen et al., "Residual Flows for Invertible Generative Modeling", arXiv:1906.02735,
          sec. 3.1.

    Examples:
        >>> roulette_weights(4, 2, "geometric", 0.5)
        [1.0, 1.0, 2.0, 4.0]
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


def cayley_weights(
    weights: Sequence[float] | Sequence[Sequence[float]],
) -> list[float] | list[list[float]]:
    """The term weights that turn the series of ``log det(I + J)`` into that of
    ``log det(I - J) - log det(I + J)``.

    ``log det(I - J) = -sum_k tr(J^k)/k`` and ``log det(I + J) = sum_k (-1)^{k+1} tr(J^k)/k``
    (both for ``||J|| < 1``), so the difference is ``-2 sum_{k odd} tr(J^k)/k``: term ``k`` of
    [`series_logdet`][iresnet.ops.logdet.series_logdet] (which carries ``(-1)^{k+1} / k``) takes
    the weight ``-2 w_k`` for odd ``k`` and ``0`` for even ``k``. Applied to any weights (all 1:
    the truncated series; the roulette's ``1 / P(N >= k)``: still unbiased, as term-wise
    scaling keeps each term's expectation), and to the Neumann-series gradient, whose
    coefficients become ``-2 sum_{j even} J^j``, the series of
    ``-((I - J)^{-1} + (I + J)^{-1})``: the derivative of the Cayley log-det.

    Args:
        weights: one list of term weights, or one list per probe.

    Returns:
        The weights of the Cayley series, of the same structure.

    References:
        - Ahn et al., "Invertible Monotone Operators for Normalizing Flows", arXiv:2210.08176.

    Examples:
        >>> cayley_weights([1.0, 1.0, 2.0, 4.0])
        [-2.0, 0.0, -4.0, 0.0]
    """

    def odd(ws: Sequence[float]) -> list[float]:
        return [-2.0 * w if k % 2 == 0 else 0.0 for k, w in enumerate(ws)]

    if len(weights) > 0 and isinstance(weights[0], Sequence):
        return [odd(ws) for ws in weights]  # type: ignore[arg-type]
    return odd(weights)  # type: ignore[arg-type]


class LogDetEstimator(abc.ABC):
    """Base of the log-det estimators: ``estimator(g, x) -> (g(x), logdet)``.

    ``g`` is a samplewise residual branch, ``x`` has shape ``(B, *event)``; the result is ``g(x)``
    (shape of ``x``) and an estimate of ``log det(I + J_g(x))`` in nats, of shape ``(B,)``,
    computed from the same graph of ``g``. Estimators hold settings only (no state between
    calls), so one instance may serve many blocks. Subclasses implement ``__call__``.
    """

    @abc.abstractmethod
    def __call__(self, g: G, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(g(x), logdet)``; see the class docstring."""

    def cayley(self, g: G, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(g(x), log|det (I - J_g(x))(I + J_g(x))^{-1}|)``: the log-det of the monotone block
        (Monotone Flows, arXiv:2210.08176), ``(B,)`` in nats, from the same graph of ``g``.

        Raises:
            TypeError: the estimator has no Cayley form (a user's subclass that does not
                implement it).
        """
        raise TypeError(
            f"{type(self).__name__} has no Cayley log-det for monotone blocks; use ExactLogDet, "
            "PowerSeriesLogDet, RussianRouletteLogDet or StratifiedRouletteLogDet, or implement "
            "cayley(g, x)"
        )


class NoLogDet(LogDetEstimator):
    """No log-determinant: ``(g(x), NaN)``, for networks that never need one (classifiers).

    The NaN makes any density that would include it visibly undefined instead of silently off.

    Examples:
        >>> NoLogDet()(torch.nn.Identity(), torch.zeros(2, 3))[1]
        tensor([nan, nan])
    """

    def __call__(self, g: G, x: Tensor) -> tuple[Tensor, Tensor]:
        return g(x), x.new_full((x.shape[0],), math.nan)

    def cayley(self, g: G, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(g(x), NaN)``, as for the residual block."""
        return self(g, x)

    def __repr__(self) -> str:
        return "NoLogDet()"


class ExactLogDet(LogDetEstimator):
    """Exact ``log det(I + J_g)`` by the full Jacobian and ``slogdet``.

    Calls [`exact_logdet`][iresnet.ops.logdet.exact_logdet]; for small dimensions.

    Arguments:
        max_dim: the largest per-sample dimension accepted (refused above, with a message).

    Raises:
        ValueError: ``max_dim < 1``; at call time, an input of more than ``max_dim`` values per
            sample.
        TypeError: at call time, an input that is not a tensor.
        DataError: at call time, an empty, boolean or complex input, or one of another dtype or
            device than ``g``.

    References:
        - Behrmann et al., "Invertible Residual Networks", arXiv:1811.00995.

    Examples:
        >>> gx, logdet = ExactLogDet()(torch.nn.Identity(), torch.zeros(3, 2))
        >>> [round(v, 4) for v in logdet.tolist()]  # log det(2 I) = 2 log 2
        [1.3863, 1.3863, 1.3863]
    """

    def __init__(self, max_dim: int = 256) -> None:
        if max_dim < 1:
            raise ValueError(f"max_dim must be positive, got {max_dim}")
        self.max_dim = max_dim

    def __call__(self, g: G, x: Tensor) -> tuple[Tensor, Tensor]:
        return exact_logdet(g, x, max_dim=self.max_dim)

    def cayley(self, g: G, x: Tensor) -> tuple[Tensor, Tensor]:
        """``log|det(I - J)| - log|det(I + J)|`` by two ``slogdet``s of one Jacobian."""
        return exact_logdet(g, x, max_dim=self.max_dim, cayley=True)

    def __repr__(self) -> str:
        return f"ExactLogDet(max_dim={self.max_dim})"


def _check_probe(probe: str, n_probes: int) -> None:
    if probe not in ("gaussian", "rademacher"):
        raise ValueError(f"probe must be 'gaussian' or 'rademacher', got {probe!r}")
    if not isinstance(n_probes, int) or n_probes < 1:
        raise ValueError(f"n_probes must be a positive integer, got {n_probes!r}")


class PowerSeriesLogDet(LogDetEstimator):
    """i-ResNet's truncated power series with Hutchinson probes (sec. 3.2-3.3, eq. (5)).

    ``sum_{k=1}^{n} (-1)^{k+1} v^T J^k v / k`` averaged over ``n_probes`` probes; see
    [`series_logdet`][iresnet.ops.logdet.series_logdet]. Biased: the truncation error is at
    most ``-d (log(1 - L) + sum_{k=1}^{n} L^k / k) <= d L^(n+1) / ((n + 1)(1 - L))`` for
    ``L = Lip(g)`` and ``d`` values per sample (i-ResNet Theorem 3), so it shrinks geometrically
    with ``n_terms``.

    Arguments:
        n_terms: series terms ``n`` (>= 1).
        n_probes: probe vectors averaged per call (>= 1).
        probe: ``"gaussian"`` or ``"rademacher"``.
        neumann_gradient: Neumann-series gradient instead of backprop through the series.
        memory_efficient: form the gradient in the forward pass.
        generator: optional torch generator for the probes (on the input's device).

    Raises:
        ValueError: ``n_terms < 1``, ``n_probes < 1`` or an unknown ``probe``.
        TypeError: at call time, an input that is not a tensor.
        DataError: at call time, an empty, boolean or complex input, or one of another dtype or
            device than ``g``.
        RuntimeError: with ``memory_efficient=True``, in the backward pass of a loss that
            weights the samples' log-dets unequally (eager; not checked under
            ``torch.compile``, see [`series_logdet`][iresnet.ops.logdet.series_logdet]).

    References:
        - Behrmann et al., arXiv:1811.00995, sec. 3.1-3.3, eq. (4)-(5), Algorithm 2, Theorem 3.

    Examples:
        >>> estimator = PowerSeriesLogDet(n_terms=10, probe="rademacher")
        >>> gx, logdet = estimator(lambda x: 0.5 * x, torch.zeros(2, 2))
        >>> [round(v, 3) for v in logdet.tolist()]  # 2 log(1.5) = 0.811
        [0.811, 0.811]
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
        return self._estimate(g, x, cayley=False)

    def cayley(self, g: G, x: Tensor) -> tuple[Tensor, Tensor]:
        """The Cayley series ``-2 sum_{k odd, k <= n} v^T J^k v / k``
        ([`cayley_weights`][iresnet.ops.logdet.cayley_weights]); its truncation error is at most
        ``2 d sum_{k odd, k > n} L^k / k``."""
        return self._estimate(g, x, cayley=True)

    def _estimate(self, g: G, x: Tensor, *, cayley: bool) -> tuple[Tensor, Tensor]:
        check_input(x, type(self).__name__, like=g if isinstance(g, nn.Module) else None)
        probes = sample_probes(x, self.n_probes, self.probe, self.generator)
        weights = [1.0] * self.n_terms
        return series_logdet(
            g,
            x,
            probes,
            cayley_weights(weights) if cayley else weights,
            neumann_gradient=self.neumann_gradient,
            memory_efficient=self.memory_efficient,
        )

    def __repr__(self) -> str:
        return (
            f"PowerSeriesLogDet(n_terms={self.n_terms}, n_probes={self.n_probes}, "
            f"probe={self.probe!r}, neumann_gradient={self.neumann_gradient}, "
            f"memory_efficient={self.memory_efficient})"
        )


def _expected_terms(distribution: str, param: float, n_exact: int) -> float:
    """``E[N] = n_exact + E[M]``: ``(1 - p) / p`` for a geometric ``M``, the rate for Poisson."""
    return n_exact + ((1 - param) / param if distribution == "geometric" else param)


class RussianRouletteLogDet(LogDetEstimator):
    """Residual Flows' unbiased Russian-roulette estimator (Theorem 1, eq. (6)).

    Each call draws ``N = n_exact + M`` (``M ~ Geometric(p)`` on ``{0, 1, ...}``, or
    ``Poisson(rate)``) and sums ``N`` terms of the power series weighted by ``1 / P(N >= k)``
    (eq. (5); [`roulette_weights`][iresnet.ops.logdet.roulette_weights]), so
    ``E[estimate] = log det(I + J)`` when ``Lip(g) < 1``. The first ``n_exact`` terms are always
    computed. Expected terms: ``n_exact + (1-p)/p`` (geometric) or ``n_exact + rate`` (Poisson);
    the defaults give 3, where the paper's setting (two exact terms and one draw of Geom(0.5),
    sec. 3.1) costs 4 in expectation because its geometric starts at 1.

    **Finite variance.** Given a probe, the estimate's variance is at most ``||v||^4 B`` with
    ``B`` finite iff ``L^2 <= 1 - p`` for ``L >= Lip(g)`` (geometric; never for Poisson), a
    sharp condition: see [`iresnet.ops.roulette`][iresnet.ops.roulette]. With ``lipschitz=L``
    the estimator checks its fixed choice against ``L`` and warns
    ([`RouletteVarianceWarning`][iresnet.errors.RouletteVarianceWarning]) when the variance is
    infinite; with ``auto=True`` it chooses ``p`` and ``n_exact`` from ``L``
    ([`roulette_for_lipschitz`][iresnet.ops.roulette.roulette_for_lipschitz]:
    ``p = (1 - L^2)/2``, ``n_exact = max(2, ceil(L^2/(1 - L^2)))``), which has finite variance
    for every ``L < 1``, and says so in its ``repr``. An ``auto`` estimator built without ``L``
    is a template: the model families bind it to their blocks' bound
    ([`logdet_estimator`][iresnet.ops.logdet.logdet_estimator] with ``lipschitz``).

    **Compiled.** Traced by ``torch.compile`` (with the Neumann gradient, or without autograd,
    for branches with closed-form products), ``N`` is drawn in the graph by the same operation
    from the same generator, and the terms after the ``n_exact`` sure ones run in a
    ``while_loop`` up to ``N``: no graph break, one graph for every draw, the same estimate and
    gradients as eagerly for the same seed (with ``memory_efficient``, the log-det's gradient
    is formed in the forward pass and carried into the graph by a zero tensor; without it the
    compiler differentiates the Neumann surrogate). Use
    [`compile_options`][iresnet.ops.compiling.compile_options].

    Arguments:
        distribution: ``"geometric"`` (``p``) or ``"poisson"`` (``rate``).
        p: success probability of the geometric, in ``(0, 1)`` (default 0.5; chosen from
            ``lipschitz`` with ``auto``).
        n_exact: terms always computed (>= 1; default 2; chosen from ``lipschitz`` with
            ``auto``).
        n_probes: probe vectors averaged per call (>= 1).
        neumann_gradient: the Neumann-series gradient (Theorem 2, eq. (8)); on by default, as
            in Residual Flows.
        memory_efficient: form the gradient in the forward pass (sec. 3.2); on by default.
        rate: Poisson rate (> 0).
        probe: ``"gaussian"`` or ``"rademacher"``.
        max_terms: cap on ``N`` (a cap makes the estimator biased, by at most the tail of the
            series beyond it: ``d L^(K+1) / ((K+1)(1-L))`` nats for a cap ``K``). With a known
            ``lipschitz`` it is raised to
            [`truncation_cap`][iresnet.ops.roulette.truncation_cap] (a bias below ``1e-6``
            nats per dimension); without one, 200 terms leave a bias below ``1e-6`` per
            dimension for ``L <= 0.94``.
        generator: optional torch generator for the probes (on the input's device); the number
            of terms is drawn from torch's default CPU generator.
        lipschitz: a bound ``L < 1`` of ``Lip(g)`` of the blocks served (e.g. their
            certificate), or None.
        auto: choose ``p`` and ``n_exact`` from ``lipschitz`` (give neither beside it).

    Raises:
        ValueError: an unknown ``distribution``, ``p`` outside ``(0, 1)``, ``rate <= 0``,
            ``n_exact < 1``, ``max_terms < n_exact``, ``n_probes < 1``, an unknown ``probe``,
            ``lipschitz < 0`` (or ``>= 1`` with ``auto``; without it such a bound draws a
            ``RouletteVarianceWarning``), ``auto`` with a Poisson distribution or with ``p``
            or ``n_exact`` given; at call time, an ``auto`` template not bound to a Lipschitz
            bound.
        TypeError: at call time, an input that is not a tensor.
        DataError: at call time, an empty, boolean or complex input, or one of another dtype or
            device than ``g``.
        RuntimeError: with ``memory_efficient=True``, in the backward pass of a loss that
            weights the samples' log-dets unequally (eager; not checked under
            ``torch.compile``, see [`series_logdet`][iresnet.ops.logdet.series_logdet]).

    References:
        - Chen et al., arXiv:1906.02735, sec. 3.1-3.2, eq. (5)-(6), (8), Theorems 1-2.

    Examples:
        >>> _ = torch.manual_seed(0)
        >>> estimator = RussianRouletteLogDet(probe="rademacher", memory_efficient=False)
        >>> x = torch.zeros(1, 2)
        >>> draws = torch.stack([estimator(lambda x: 0.5 * x, x)[1] for _ in range(500)])
        >>> round(float(draws.mean()), 1)  # unbiased for 2 log(1.5) = 0.81
        0.8
    """

    def __init__(
        self,
        distribution: Literal["geometric", "poisson"] = "geometric",
        p: float | None = None,
        n_exact: int | None = None,
        n_probes: int = 1,
        neumann_gradient: bool = True,
        memory_efficient: bool = True,
        rate: float = 2.0,
        probe: Probe = "gaussian",
        max_terms: int = 200,
        generator: torch.Generator | None = None,
        lipschitz: float | None = None,
        auto: bool = False,
    ) -> None:
        if auto and distribution != "geometric":
            raise ValueError(
                "auto chooses a geometric roulette; a Poisson one never has finite "
                "worst-case variance"
            )
        if lipschitz is not None and not lipschitz >= 0.0:
            raise ValueError(f"lipschitz must be >= 0, got {lipschitz}")
        if auto and lipschitz is not None and lipschitz >= 1.0:
            raise ValueError(
                "auto chooses the roulette from a Lipschitz bound below 1 (the blocks' "
                f"coeff < 1); got {lipschitz:.6g}, where no roulette has finite variance"
            )
        if auto and (p is not None or n_exact is not None):
            given = ", ".join(
                f"{k}={v!r}" for k, v in (("p", p), ("n_exact", n_exact)) if v is not None
            )
            raise ValueError(
                f"{type(self).__name__}: auto=True chooses p and n_exact from the Lipschitz "
                f"bound, got {given} too: pass {given} without auto (checked against lipschitz=), "
                "or auto=True without them"
            )
        self.auto, self.lipschitz = auto, lipschitz
        chosen = roulette_for_lipschitz(lipschitz) if auto and lipschitz is not None else None
        if p is None:
            p = chosen[0] if chosen is not None else 0.5
        if n_exact is None:
            n_exact = chosen[1] if chosen is not None else 2
        # a large chosen n_exact must stay below the cap on N
        max_terms = max(max_terms, n_exact + 100) if chosen is not None else max_terms
        if lipschitz is not None and lipschitz < 1.0:
            # where the bound is known, the cap's truncation bias stays below 1e-6 nats per
            # dimension (L = 0.99 needs 1133 terms; the law rarely draws that many)
            max_terms = max(max_terms, truncation_cap(lipschitz))
        if distribution not in ("geometric", "poisson"):
            raise ValueError(f"distribution must be 'geometric' or 'poisson', got {distribution!r}")
        if distribution == "geometric" and not 0.0 < p < 1.0:
            raise ValueError(f"geometric p must lie in (0, 1), got {p}")
        if distribution == "poisson" and not rate > 0:
            raise ValueError(f"poisson rate must be positive, got {rate}")
        if not isinstance(n_exact, int) or n_exact < 1:
            # N >= 1 must hold surely, else clamping N up to one term would bias the estimate.
            raise ValueError(f"n_exact must be a positive integer, got {n_exact!r}")
        if not isinstance(max_terms, int) or max_terms < n_exact:
            raise ValueError(
                f"max_terms must be an integer >= n_exact = {n_exact} (a cap on N below the "
                f"terms always computed), got {max_terms!r}"
            )
        _check_probe(probe, n_probes)
        self.distribution, self.p, self.rate, self.n_exact = distribution, p, rate, n_exact
        self.n_probes, self.probe, self.max_terms = n_probes, probe, max_terms
        self.neumann_gradient, self.memory_efficient = neumann_gradient, memory_efficient
        self.generator = generator
        # The number of terms is drawn on the host (it sets a Python loop's length): one small
        # CPU draw per call, no device synchronisation.
        self._cpu_generator: torch.Generator | None = None
        if lipschitz is not None:
            self.check_variance(lipschitz)

    @property
    def is_template(self) -> bool:
        """An ``auto`` estimator still waiting for its Lipschitz bound."""
        return self.auto and self.lipschitz is None

    def with_lipschitz(self, lipschitz: float) -> RussianRouletteLogDet:
        """A copy for blocks with ``Lip(g) <= lipschitz``: with ``auto``, ``p`` and ``n_exact``
        are chosen from it; otherwise the fixed choice is checked
        (a [`RouletteVarianceWarning`][iresnet.errors.RouletteVarianceWarning] if its variance
        is infinite)."""
        return RussianRouletteLogDet(
            self.distribution,  # type: ignore[arg-type]
            p=None if self.auto else self.p,
            n_exact=None if self.auto else self.n_exact,
            n_probes=self.n_probes,
            neumann_gradient=self.neumann_gradient,
            memory_efficient=self.memory_efficient,
            rate=self.rate,
            probe=self.probe,  # type: ignore[arg-type]
            max_terms=self.max_terms,
            generator=self.generator,
            lipschitz=lipschitz,
            auto=self.auto,
        )

    def variance_bound(self, lipschitz: float) -> float:
        """``B`` with ``Var[estimate | v] <= ||v||^4 B`` for every ``g`` with
        ``Lip(g) <= lipschitz`` (``inf`` if not finite); see
        [`roulette_variance_bound`][iresnet.ops.roulette.roulette_variance_bound]."""
        return roulette_variance_bound(lipschitz, self.n_exact, self.distribution, self._param)

    def check_variance(self, lipschitz: float, where: str = "") -> bool:
        """Whether the variance is finite for ``Lip(g) <= lipschitz``; warns
        [`RouletteVarianceWarning`][iresnet.errors.RouletteVarianceWarning] if not."""
        if roulette_variance_is_finite(lipschitz, self.distribution, self._param):
            return True
        what = f"p={self.p}" if self.distribution == "geometric" else f"rate={self.rate}"
        if lipschitz >= 1.0:
            need = "holds for no law at L >= 1 (it needs blocks with coeff < 1)"
        elif self.distribution == "geometric":
            need = f"needs p <= 1 - L^2 = {1 - lipschitz**2:.4g}"
        else:
            need = "is infinite for every L > 0"
        auto = ""
        if lipschitz < 1:
            # What the fix costs: the automatic law's expected terms against this one's.
            p, n_exact = roulette_for_lipschitz(lipschitz)
            named = (
                "logdet='roulette-auto'"
                if type(self) is RussianRouletteLogDet
                else f"{type(self).__name__}(auto=True, lipschitz={lipschitz:.4g})"
            )
            auto = (
                f"; {named} chooses p and n_exact from the bound (here p={p:.3g}, "
                f"n_exact={n_exact}: E[N] = {_expected_terms('geometric', p, n_exact):.1f} terms "
                f"per probe against {self.expected_terms:.1f} now)"
            )
        warning = RouletteVarianceWarning(
            f"{where + ': ' if where else ''}the Russian roulette ({self.distribution}, {what}) "
            f"is not guaranteed a finite variance for blocks bounded by Lip(g) <= "
            f"{lipschitz:.4g} (infinite when J = L I): the guarantee {need}{auto}"
        )
        warning.lipschitz = float(lipschitz)  # for callers that say it their own way
        warnings.warn(warning, stacklevel=3)
        return False

    @property
    def expected_terms(self) -> float:
        """``E[N]``, the expected number of series terms (the cap ``max_terms`` ignored)."""
        return _expected_terms(self.distribution, self._param, self.n_exact)

    def expected_vjps(self) -> float:
        """Expected vector-Jacobian products per call and sample row:
        ``n_probes * E[N]`` (the cap ``max_terms`` ignored)."""
        return self.n_probes * self.expected_terms

    @property
    def _param(self) -> float:
        return self.p if self.distribution == "geometric" else self.rate

    def draw_n_terms(self) -> int:
        """Draw the number of terms ``N = n_exact + M`` (at most ``max_terms``) on the host."""
        return int(self._draw_n().item())

    def _draw_n(self) -> Tensor:
        """``N = min(n_exact + M, max_terms)`` as a 0-d CPU int64 tensor (no host read: a
        compiled graph draws it in place)."""
        gen = self._cpu_generator
        if self.distribution == "geometric":
            m = torch.empty(()).geometric_(self.p, generator=gen) - 1
        else:
            m = torch.poisson(torch.tensor(float(self.rate)), generator=gen)
        return (m.to(torch.int64) + self.n_exact).clamp(max=self.max_terms)

    def __call__(self, g: G, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._estimate(g, x, cayley=False)

    def cayley(self, g: G, x: Tensor) -> tuple[Tensor, Tensor]:
        """The roulette of the Cayley series
        ([`cayley_weights`][iresnet.ops.logdet.cayley_weights]); unbiased as the plain one."""
        return self._estimate(g, x, cayley=True)

    def _estimate(self, g: G, x: Tensor, *, cayley: bool) -> tuple[Tensor, Tensor]:
        if self.is_template:
            raise ValueError(
                "RussianRouletteLogDet(auto=True) needs the blocks' Lipschitz bound: build it "
                "with lipschitz=L, or let a model family bind it (logdet='roulette-auto')"
            )
        if (
            torch.compiler.is_compiling()
            and self.generator is None
            and _has_closed_form(g)
            and (self.neumann_gradient or not torch.is_grad_enabled())
        ):
            return self._estimate_in_graph(g, x, cayley=cayley)
        n = self.draw_n_terms()
        weights = roulette_weights(n, self.n_exact, self.distribution, self._param)
        check_input(x, type(self).__name__, like=g if isinstance(g, nn.Module) else None)
        probes = sample_probes(x, self.n_probes, self.probe, self.generator)
        return series_logdet(
            g,
            x,
            probes,
            cayley_weights(weights) if cayley else weights,
            neumann_gradient=self.neumann_gradient,
            memory_efficient=self.memory_efficient,
        )

    def _estimate_in_graph(self, g: G, x: Tensor, *, cayley: bool) -> tuple[Tensor, Tensor]:
        """The estimate traced by ``torch.compile``: ``N`` drawn in the graph (the same draw
        from the same generator as ``draw_n_terms``), the terms in a loop of ``N`` steps
        ([`_series_in_graph`][iresnet.ops.logdet._series_in_graph]) with the weights
        ``1 / P(N >= k)`` of ``roulette_weights`` up to ``max_terms``: the same law, no graph
        break, one graph for every ``N``. The Neumann gradient is formed in the forward pass
        and carried by ``_gradient_carrier`` with ``memory_efficient`` (the memory-efficient
        backward's ``autograd.Function`` does not trace), else by autograd through the
        surrogate ``neumann^T J v``."""
        n = self._draw_n()
        table = roulette_weights(self.max_terms, self.n_exact, self.distribution, self._param)
        probes = sample_probes(x, self.n_probes, self.probe, self.generator)
        return _series_in_graph(
            g,
            x,
            probes,
            n,
            cayley_weights(table) if cayley else table,  # type: ignore[arg-type]
            n_sure=self.n_exact,
            neumann_gradient=self.neumann_gradient,
            memory_efficient=self.memory_efficient,
        )

    def __repr__(self) -> str:
        dist = f"p={self.p:.6g}" if self.distribution == "geometric" else f"rate={self.rate}"
        chosen = ""
        if self.auto:
            chosen = (
                ", auto=True (p, n_exact to be chosen from Lip(g))"
                if self.lipschitz is None
                else f", auto=True (chosen for Lip(g) <= {self.lipschitz:.6g})"
            )
        elif self.lipschitz is not None:
            finite = roulette_variance_is_finite(self.lipschitz, self.distribution, self._param)
            chosen = (
                f", lipschitz={self.lipschitz:.6g} ({'finite' if finite else 'INFINITE'} variance)"
            )
        return (
            f"RussianRouletteLogDet(distribution={self.distribution!r}, {dist}, "
            f"n_exact={self.n_exact}, n_probes={self.n_probes}, "
            f"neumann_gradient={self.neumann_gradient}, memory_efficient={self.memory_efficient}"
            f"{chosen})"
        )


class StratifiedRouletteLogDet(RussianRouletteLogDet):
    """The roulette with more probes on its cheap head terms: lower variance per VJP.

    ``log det(I + J) = sum_k c_k`` with ``c_k = (-1)^{k+1} tr(J^k) / k``; the roulette
    estimates all terms from the same probes, so the first term (usually the largest, and the
    most variable: ``Var[v^T J v] = 2 ||J||_F^2`` for Gaussian ``v``) gets as few probes as the
    last. Here the ``h = head_terms`` first terms (always computed: ``h <= n_exact``) are
    averaged over ``m = head_probes`` probes, and the terms after them come from the first
    ``n_probes`` of those probes, continued to the roulette's ``N`` with its weights
    ``1 / P(N >= k)`` (Residual Flows eq. (6)):

        estimate = (1/m) sum_{i<=m} sum_{k<=h} c_k(v_i)
                   + (1/r) sum_{i<=r} sum_{h<k<=N} c_k(v_i) / P(N >= k)

    with ``c_k(v) = (-1)^{k+1} v^T J^k v / k`` and ``r = n_probes``. Each part is unbiased
    (Hutchinson for the head, Theorem 1 of Residual Flows for the tail), so the sum is. It costs
    ``m h + r (N - h)`` vector-Jacobian products against ``r N`` (stratified sampling across the
    series' terms: more samples where the variance is large and the cost small, the allocation
    of multilevel Monte Carlo, Giles 2015). Its variance per VJP against the roulette's is
    measured in ``benchmarks/estimators.py`` (``benchmarks/results/estimators.md``: about
    half the roulette's variance x VJPs on its toy and conv blocks). The
    tail's variance condition is the roulette's (``L^2 <= 1 - p``), and ``auto`` /
    ``lipschitz`` work as there. The Neumann-series gradient (Residual Flows Theorem 2) takes
    the same split: the head's ``k < h`` gradient terms from all ``m`` probes.

    Arguments:
        head_terms: ``h``, the terms averaged over all probes (``1 <= h <= n_exact``).
        head_probes: ``m``, the probes of the head (``>= n_probes``).
        **kwargs: those of
            [`RussianRouletteLogDet`][iresnet.ops.logdet.RussianRouletteLogDet] (``n_probes``:
            the probes that continue into the tail).

    Raises:
        ValueError: ``head_terms`` outside ``[1, n_exact]``, ``head_probes < n_probes``, or a
            bad roulette setting; at call time, an ``auto`` template not bound to a Lipschitz
            bound.
        TypeError: at call time, an input that is not a tensor.
        DataError: at call time, an empty, boolean or complex input, or one of another dtype or
            device than ``g``.
        RuntimeError: with ``memory_efficient=True``, in the backward pass of a loss that
            weights the samples' log-dets unequally (eager; not checked under
            ``torch.compile``, see [`series_logdet`][iresnet.ops.logdet.series_logdet]).

    References:
        - Chen et al., arXiv:1906.02735, sec. 3.1-3.2, eq. (6), (8).
        - Hutchinson, Commun. Stat. Simul. Comput. 19(2), 1990.
        - Giles, "Multilevel Monte Carlo methods", Acta Numerica 24, 2015, arXiv:1304.5472.

    Examples:
        >>> _ = torch.manual_seed(0)
        >>> est = StratifiedRouletteLogDet(head_probes=4, probe="rademacher",
        ...                                memory_efficient=False)
        >>> x = torch.zeros(1, 2)
        >>> draws = torch.stack([est(lambda x: 0.5 * x, x)[1] for _ in range(500)])
        >>> round(float(draws.mean()), 1), est.expected_vjps()  # 2 log(1.5) = 0.81; 4 + 2
        (0.8, 6.0)
    """

    def __init__(self, head_terms: int = 1, head_probes: int = 4, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(head_terms, int) or not 1 <= head_terms <= self.n_exact:
            raise ValueError(
                f"head_terms must be an integer in [1, n_exact={self.n_exact}] (the head is "
                f"always computed), got {head_terms!r}"
            )
        if not isinstance(head_probes, int) or head_probes < self.n_probes:
            raise ValueError(
                f"head_probes must be an integer >= n_probes={self.n_probes}, got {head_probes!r}"
            )
        self.head_terms, self.head_probes = head_terms, head_probes
        self._kwargs = kwargs

    def with_lipschitz(self, lipschitz: float) -> StratifiedRouletteLogDet:
        """As the roulette's ``with_lipschitz``, keeping the head's settings."""
        kwargs = {**self._kwargs, "lipschitz": lipschitz}
        if not self.auto:
            kwargs.update(p=self.p, n_exact=self.n_exact)
        return StratifiedRouletteLogDet(self.head_terms, self.head_probes, **kwargs)

    def probe_weights(self, n_terms: int) -> list[list[float]]:
        """The per-probe term weights for a draw of ``N = n_terms`` (see
        [`series_logdet`][iresnet.ops.logdet.series_logdet]): probe ``i < n_probes`` runs all
        ``N`` terms, the others the head only."""
        tail = roulette_weights(n_terms, self.n_exact, self.distribution, self._param)
        h, m, r = self.head_terms, self.head_probes, self.n_probes
        head = [1.0 / m] * h
        return [head + [w / r for w in tail[h:]] if i < r else list(head) for i in range(m)]

    def _estimate(self, g: G, x: Tensor, *, cayley: bool) -> tuple[Tensor, Tensor]:
        if self.is_template:
            raise ValueError(
                "StratifiedRouletteLogDet(auto=True) needs the blocks' Lipschitz bound: build it "
                "with lipschitz=L, or let a model family bind it"
            )
        weights = self.probe_weights(self.draw_n_terms())
        check_input(x, type(self).__name__, like=g if isinstance(g, nn.Module) else None)
        probes = sample_probes(x, self.head_probes, self.probe, self.generator)
        return series_logdet(
            g,
            x,
            probes,
            cayley_weights(weights) if cayley else weights,
            neumann_gradient=self.neumann_gradient,
            memory_efficient=self.memory_efficient,
        )

    def expected_vjps(self) -> float:
        """``m h + r (E[N] - h)`` vector-Jacobian products per call and sample row."""
        tail = self.expected_terms - self.head_terms
        return self.head_probes * self.head_terms + self.n_probes * tail

    def __repr__(self) -> str:
        inner = super().__repr__().split("(", 1)[1]
        return (
            f"StratifiedRouletteLogDet(head_terms={self.head_terms}, "
            f"head_probes={self.head_probes}, {inner}"
        )


LOGDETS = ("exact", "series", "roulette", "roulette-auto", "stratified", "stratified-auto", "none")
"""Names [`logdet_estimator`][iresnet.ops.logdet.logdet_estimator] accepts."""


def logdet_estimator(
    spec: str | LogDetEstimator, dim: int = 1, lipschitz: float | None = None
) -> LogDetEstimator:
    """The estimator named by ``spec`` with its default settings, or ``spec`` itself.

    Args:
        spec: ``"exact"`` ([`ExactLogDet`][iresnet.ops.logdet.ExactLogDet], accepting blocks
            of ``max(256, dim)`` dimensions), ``"series"``
            ([`PowerSeriesLogDet`][iresnet.ops.logdet.PowerSeriesLogDet]), ``"roulette"``
            ([`RussianRouletteLogDet`][iresnet.ops.logdet.RussianRouletteLogDet]),
            ``"roulette-auto"`` (the roulette with ``p`` and ``n_exact`` chosen from
            ``lipschitz``, finite variance), ``"stratified"``
            ([`StratifiedRouletteLogDet`][iresnet.ops.logdet.StratifiedRouletteLogDet]),
            ``"stratified-auto"`` (its tail's ``p`` and ``n_exact`` chosen from ``lipschitz``,
            finite variance), ``"none"``
            ([`NoLogDet`][iresnet.ops.logdet.NoLogDet]), or an estimator (returned as is, or
            bound to ``lipschitz`` if it is an ``auto`` roulette template).
        dim: the per-sample dimension of the block it will serve.
        lipschitz: a bound of ``Lip(g)`` of the blocks it will serve; a roulette with a fixed
            choice is checked against it (a
            [`RouletteVarianceWarning`][iresnet.errors.RouletteVarianceWarning] where its
            variance is infinite).

    Returns:
        A [`LogDetEstimator`][iresnet.ops.logdet.LogDetEstimator].

    Raises:
        ValueError: an unknown name; ``"roulette-auto"`` or ``"stratified-auto"`` without
            ``lipschitz``.

    Examples:
        >>> logdet_estimator("exact", dim=1000)
        ExactLogDet(max_dim=1000)
    """
    if isinstance(spec, RussianRouletteLogDet) and lipschitz is not None:
        if spec.is_template:
            return spec.with_lipschitz(lipschitz)
        spec.check_variance(lipschitz)
        return spec
    if isinstance(spec, LogDetEstimator):
        return spec
    if spec in ("roulette-auto", "stratified-auto"):
        kind = RussianRouletteLogDet if spec == "roulette-auto" else StratifiedRouletteLogDet
        if lipschitz is None:
            raise ValueError(
                f"logdet='{spec}' needs the blocks' Lipschitz bound: pass "
                f"{kind.__name__}(auto=True, lipschitz=L) with L a bound of Lip(g) (e.g. "
                "iresnet.certify(model).max_bound)"
            )
        return kind(auto=True, lipschitz=lipschitz)
    if spec == "exact":
        return ExactLogDet(max_dim=max(256, dim))
    if spec == "series":
        return PowerSeriesLogDet()
    if spec == "roulette":
        return RussianRouletteLogDet(lipschitz=lipschitz)
    if spec == "stratified":
        return StratifiedRouletteLogDet(lipschitz=lipschitz)
    if spec == "none":
        return NoLogDet()
    raise ValueError(f"logdet must be one of {LOGDETS} or a LogDetEstimator, got {spec!r}")
