"""Inverting ``y = x + g(x)`` by the Banach fixed point of ``x <- y - g(x)``.

i-ResNet sec. 2, Algorithm 1: with ``L = Lip(g) < 1`` the map ``G(x) = y - g(x)`` is a
contraction, the iteration ``x_{k+1} = y - g(x_k)`` from ``x_0 = y`` converges to the unique
``x*`` with ``x* + g(x*) = y``, and (i-ResNet eq. (1), from Banach's fixed point theorem)

    ||x* - x_n||_2 <= L^n / (1 - L) * ||x_1 - x_0||_2.

The solver iterates under ``no_grad`` and stops per sample on the step itself,
``max|x_{k+1} - x_k| <= atol + rtol * max|x_k|`` (not its square). Anderson acceleration
(Walker & Ni, 2011) mixes the last ``m`` iterates. A gradient through the inverse, where one is
needed, comes by implicit differentiation: ``dx*/dy = (I + J_g)^{-1}``, so the backward pass
solves ``u = a - J_g^T u`` by the same kind of iteration, never by unrolling the loop.

References:
    - Behrmann et al., "Invertible Residual Networks", ICML 2019, arXiv:1811.00995.
    - Walker & Ni, "Anderson Acceleration for Fixed-Point Iterations", SIAM J. Numer. Anal.
      49(4), 2011.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from ..checks import check_input
from ..errors import InverseNotConvergedError, InverseNotConvergedWarning
from ..words import count

__all__ = [
    "InverseDiagnostics",
    "fixed_point_solve",
    "banach_bound",
    "banach_iterations",
    "posterior_bound",
    "FixedPointInverse",
]

G = Callable[[Tensor], Tensor]


@dataclass
class InverseDiagnostics:
    """What one inverse solve did, per sample.

    Returned by [`fixed_point_solve`][iresnet.ops.fixed_point.fixed_point_solve] and by the
    ``inverse_with_diagnostics`` methods of transforms and flows, from the call itself.

    Attributes:
        iterations: ``(B,)`` iterations ``n`` (evaluations of ``g``) until the sample converged
            (``max_iter`` if it did not).
        residual: ``(B,)`` last step ``max|x_n - x_{n-1}|``, in the units of ``y``.
        converged: ``(B,)`` booleans, whether the tolerance was met.
        first_step: ``(B,)`` ``||x_1 - x_0||_2`` (for the Banach bound).
        lipschitz: the ``L`` given by the caller (a certified bound), or None.
        a_priori_bound: ``(B,)`` i-ResNet eq. (1), ``L^n / (1 - L) ||x_1 - x_0||_2``, or None
            without ``L`` or with Anderson acceleration (the bound holds for plain iteration
            only): an upper bound of the true error ``||x* - x_n||_2``.
        last_step: ``(B,)`` ``||G(x) - x||_2`` of the last evaluated point ``x``, where
            ``G(x) = y - g(x)`` and the returned iterate is ``G(x)``.
        a_posteriori_bound: ``(B,)`` ``L / (1 - L) ||G(x) - x||_2``, or None without ``L``:
            a certified upper bound of the returned iterate's error ``||x* - G(x)||_2`` in
            exact arithmetic, for plain and Anderson-accelerated iteration alike (from
            ``||x* - G(x)|| <= L ||x* - x||`` and ``||x* - x|| <= ||G(x) - x|| / (1 - L)``).
        at_floor: ``(B,)`` booleans: the sample stopped at the rounding floor of the dtype,
            above the requested tolerance (``converged`` is False for it).

    References:
        - Behrmann et al., "Invertible Residual Networks", arXiv:1811.00995 (the Banach bound).

    Examples:
        >>> _, d = fixed_point_solve(lambda x: 0.5 * x, torch.ones(2, 3), lipschitz=0.5)
        >>> d.all_converged, d.iterations.tolist()
        (True, [20, 20])
        >>> bool((d.a_priori_bound < 1e-5).all())
        True
    """

    iterations: Tensor
    residual: Tensor
    converged: Tensor
    first_step: Tensor
    lipschitz: float | None = None
    a_priori_bound: Tensor | None = None
    last_step: Tensor | None = None
    a_posteriori_bound: Tensor | None = None
    at_floor: Tensor | None = None

    @property
    def all_converged(self) -> bool:
        """Whether every sample met the tolerance (one host synchronisation)."""
        return bool(self.converged.all())

    def summary(self) -> str:
        """One line: mean and largest iteration count, largest residual, converged count, and
        the largest a-priori bound where ``L`` is known."""
        it = self.iterations.float()
        text = (
            f"iterations mean {it.mean():.1f} max {int(self.iterations.max())}, "
            f"max residual {float(self.residual.max()):.2e}, "
            f"converged {int(self.converged.sum())}/{self.converged.numel()}"
        )
        if self.a_posteriori_bound is not None:
            text += (
                f", certified error <= {float(self.a_posteriori_bound.max()):.2e} "
                f"(L={self.lipschitz:.4f})"
            )
        return text


def banach_bound(lipschitz: float, n: Tensor | int, first_step: Tensor | float) -> Tensor:
    """The a-priori Banach bound ``||x* - x_n|| <= L^n / (1 - L) * ||x_1 - x_0||``.

    i-ResNet eq. (1). Valid in the norm in which ``L`` bounds the Lipschitz constant of ``g``
    (the Euclidean norm for spectrally normalised layers).

    Args:
        lipschitz: ``L``, a bound of ``Lip(g)``.
        n: iterations, an int or a tensor of them.
        first_step: ``||x_1 - x_0||``, a float or a tensor broadcastable with ``n``.

    Returns:
        A float64 tensor of the broadcast shape; ``inf`` where ``L`` is outside ``[0, 1)``.

    References:
        - Behrmann et al., "Invertible Residual Networks", arXiv:1811.00995 (the Banach bound).

    Examples:
        >>> banach_bound(0.5, 10, 1.0).item()  # 0.5**10 / 0.5
        0.001953125
    """
    if not 0 <= lipschitz < 1:
        return torch.full_like(torch.as_tensor(first_step, dtype=torch.float64), math.inf)
    n_t = torch.as_tensor(n, dtype=torch.float64)
    return lipschitz**n_t / (1 - lipschitz) * torch.as_tensor(first_step, dtype=torch.float64)


def banach_iterations(lipschitz: float, first_step: float, tol: float) -> int:
    """Iterations that i-ResNet eq. (1) guarantees enough for ``||x* - x_n|| <= tol``.

    The smallest ``n`` with ``L^n / (1 - L) * first_step <= tol``, known before running.

    Args:
        lipschitz: ``L``, a bound of ``Lip(g)``.
        first_step: ``||x_1 - x_0||``.
        tol: the wanted error bound.

    Returns:
        ``n`` (0 if ``L = 0`` or the first step is already small enough), or ``math.inf`` when
        ``L`` is not in ``[0, 1)``.

    References:
        - Behrmann et al., "Invertible Residual Networks", arXiv:1811.00995 (the Banach bound).

    Examples:
        >>> banach_iterations(0.5, 1.0, 1e-6)
        21
    """
    if not 0 < lipschitz < 1:
        return 0 if lipschitz == 0 else math.inf  # type: ignore[return-value]
    if first_step <= tol * (1 - lipschitz):
        return 0
    return math.ceil(math.log(tol * (1 - lipschitz) / first_step) / math.log(lipschitz))


def _anderson_mix(xs: Tensor, fs: Tensor, lam: float) -> Tensor:
    """Anderson (type II) mixing: ``sum_i alpha_i F_i`` with ``sum alpha = 1`` minimising
    ``||sum_i alpha_i (F_i - X_i)||``; ``xs``, ``fs``: ``(B, n, D)``."""
    out_dtype = fs.dtype
    if out_dtype in (torch.float16, torch.bfloat16):  # no LU in half precision: mix in float32
        xs, fs = xs.float(), fs.float()
    res = fs - xs
    gram = res @ res.transpose(1, 2)  # (B, n, n)
    # Normalise so the ridge term is relative: alpha is invariant to the Gram matrix's scale.
    scale = gram.diagonal(dim1=1, dim2=2).mean(1).clamp_min(1e-300)[:, None, None]
    b, n, _ = gram.shape
    h = torch.zeros(b, n + 1, n + 1, dtype=xs.dtype, device=xs.device)
    h[:, 0, 1:] = 1
    h[:, 1:, 0] = 1
    h[:, 1:, 1:] = gram / scale + lam * torch.eye(n, dtype=xs.dtype, device=xs.device)
    rhs = torch.zeros(b, n + 1, 1, dtype=xs.dtype, device=xs.device)
    rhs[:, 0] = 1
    alpha = torch.linalg.solve(h, rhs)[:, 1:]  # (B, n, 1)
    return (alpha.transpose(1, 2) @ fs)[:, 0].to(out_dtype)


def fixed_point_solve(
    g: G,
    y: Tensor,
    *,
    atol: float = 1e-6,
    rtol: float = 1e-6,
    max_iter: int = 100,
    anderson: int = 0,
    lipschitz: float | None = None,
) -> tuple[Tensor, InverseDiagnostics]:
    """Solve ``x + g(x) = y`` for ``x`` by fixed-point iteration from ``x_0 = y``.

    ``x_{k+1} = y - g(x_k)`` (i-ResNet Algorithm 1), stopped per sample; a converged sample keeps
    its result while the others go on. With ``anderson = m > 0`` the next iterate mixes the last
    ``m`` values of ``y - g(x)`` with the weights that minimise the mixed residual subject to
    summing to 1 (Anderson acceleration, Walker & Ni 2011). No gradient flows through the result;
    [`FixedPointInverse`][iresnet.ops.fixed_point.FixedPointInverse] adds the implicit one.

    Args:
        g: the samplewise map, a contraction for convergence.
        y: ``(B, *event)``.
        atol: absolute tolerance: sample ``b`` stops when
            ``max|x_{k+1} - x_k| <= atol + rtol * max|x_k|``, or when its step stops shrinking
            below the rounding floor ``8 eps (max|y| + max|x_k|)`` of the dtype (``eps`` its
            machine epsilon), where steps are rounding noise; a sample stopped at the floor
            above its tolerance is not ``converged`` (``at_floor`` in the diagnostics).
        rtol: relative tolerance.
        max_iter: iteration cap.
        anderson: memory ``m`` of Anderson acceleration (0: plain Banach iteration).
        lipschitz: a certified ``Lip(g)`` for the a-priori bound in the diagnostics.

    Returns:
        ``x`` of the shape of ``y`` (no graph) and the
            [`InverseDiagnostics`][iresnet.ops.fixed_point.InverseDiagnostics] of this solve.

    Raises:
        TypeError: ``y`` is not a tensor.
        DataError: ``y`` is empty, boolean or complex, or (``g`` a module) of another dtype or
            device than ``g``.

    References:
        - Behrmann et al., "Invertible Residual Networks", arXiv:1811.00995, sec. 2,
          Algorithm 1.
        - Walker & Ni, "Anderson Acceleration for Fixed-Point Iterations", SIAM J. Numer. Anal.
          49(4), 2011 (``anderson > 0``).

    Examples:
        >>> y = torch.tensor([[1.5, 3.0]])
        >>> x, d = fixed_point_solve(lambda x: 0.5 * x, y, atol=1e-7, rtol=0.0)
        >>> x.tolist(), d.all_converged  # x + x / 2 = y
        ([[1.0, 2.0]], True)
    """
    check_input(y, "fixed_point_solve", like=g if isinstance(g, nn.Module) else None)
    with torch.no_grad():
        b = y.shape[0]
        shape = y.shape
        flat_y = y.reshape(b, -1)

        def step(x_flat: Tensor) -> Tensor:
            return flat_y - g(x_flat.reshape(shape)).reshape(b, -1)

        x = flat_y.clone()
        result = x.clone()
        iterations = torch.zeros(b, dtype=torch.long, device=y.device)
        residual = torch.full((b,), math.inf, dtype=y.dtype, device=y.device)
        last_step = torch.full((b,), math.inf, dtype=y.dtype, device=y.device)
        converged = torch.zeros(b, dtype=torch.bool, device=y.device)
        at_floor = torch.zeros(b, dtype=torch.bool, device=y.device)
        first_step = torch.zeros(b, dtype=y.dtype, device=y.device)
        eps = torch.finfo(y.dtype).eps if y.is_floating_point() else 0.0
        y_scale = flat_y.abs().amax(1)
        xs: list[Tensor] = []
        fs: list[Tensor] = []
        lam = 1e-10 if y.dtype == torch.float64 else 1e-6
        for k in range(1, max_iter + 1):
            fx = step(x)
            diff = fx - x
            step_norm = diff.norm(dim=1)
            if k == 1:
                first_step = step_norm
            r = diff.abs().amax(1)
            x_scale = x.abs().amax(1)
            tol = atol + rtol * x_scale
            # Below this, a step is rounding noise; a sample whose step stops shrinking there
            # cannot get closer in this dtype.
            stalled = (r <= 8 * eps * (y_scale + x_scale)) & (r >= residual)
            active = ~(converged | at_floor)
            residual = torch.where(active, r, residual)
            last_step = torch.where(active, step_norm, last_step)
            iterations = torch.where(active, torch.full_like(iterations, k), iterations)
            result = torch.where(active[:, None], fx, result)
            converged = converged | (active & (r <= tol))
            at_floor = at_floor | (active & ~converged & stalled)
            if bool((converged | at_floor).all()):
                break
            if anderson > 0:
                xs.append(x)
                fs.append(fx)
                if len(xs) > anderson:
                    xs.pop(0)
                    fs.pop(0)
                x = (
                    _anderson_mix(torch.stack(xs, 1), torch.stack(fs, 1), lam)
                    if len(xs) > 1
                    else fx
                )
            else:
                x = fx
        a_priori = a_posteriori = None
        if lipschitz is not None:
            if anderson == 0:
                a_priori = banach_bound(lipschitz, iterations, first_step).to(y.dtype)
            a_posteriori = posterior_bound(lipschitz, last_step).to(y.dtype)
        diagnostics = InverseDiagnostics(
            iterations,
            residual,
            converged,
            first_step,
            lipschitz,
            a_priori,
            last_step,
            a_posteriori,
            at_floor,
        )
        return result.reshape(shape), diagnostics


def posterior_bound(lipschitz: float, last_step: Tensor | float) -> Tensor:
    """The a-posteriori bound ``||x* - G(x)|| <= L / (1 - L) * ||G(x) - x||`` of a contraction.

    For ``G(x) = y - g(x)`` with ``Lip(g) <= L < 1`` and its fixed point ``x*``:
    ``||x* - G(x)|| = ||G(x*) - G(x)|| <= L ||x* - x||`` and
    ``||x* - x|| <= ||x* - G(x)|| + ||G(x) - x||``, so ``||x* - x|| <= ||G(x) - x|| / (1 - L)``.
    Unlike the a-priori bound it holds at any point ``x``, accelerated or not, and it is tight
    once the iteration has converged. ``inf`` where ``L >= 1``.

    Args:
        lipschitz: ``L``, a bound of ``Lip(g)`` in the norm of ``last_step``.
        last_step: ``||G(x) - x||``, a float or a tensor.

    Returns:
        A float64 tensor of ``last_step``'s shape.

    References:
        - Derived above from the contraction property; the a-priori counterpart is
          Behrmann et al., arXiv:1811.00995.

    Examples:
        >>> posterior_bound(0.5, torch.tensor([1e-6]))
        tensor([1.0000e-06], dtype=torch.float64)
    """
    step = torch.as_tensor(last_step, dtype=torch.float64)
    if not 0 <= lipschitz < 1:
        return torch.full_like(step, math.inf)
    return lipschitz / (1 - lipschitz) * step


class FixedPointInverse:
    """Inverse of ``y = x + g(x)`` by Banach iteration, optionally Anderson-accelerated.

    ``solver.solve(g, y)`` returns ``(x, diagnostics)`` (the
    [`InverseDiagnostics`][iresnet.ops.fixed_point.InverseDiagnostics] of that call);
    ``solver(g, y)`` returns ``x`` alone. The solver keeps no state between calls, so one
    instance may serve many blocks. Gradients with respect to ``y`` and ``g``'s parameters come
    by implicit differentiation: the incoming gradient ``a`` is replaced by
    ``u = (I + J_g)^{-T} a``, solved by the same iteration ``u = a - J_g^T u``.

    Arguments:
        atol: absolute per-sample tolerance on the step ``max|x_{k+1} - x_k|``.
        rtol: relative tolerance, times ``max|x_k|`` (with the default ``1e-6``, inputs of any
            scale converge in float32; below the dtype's rounding floor the solver stops and
            says so).
        max_iter: iteration cap.
        anderson: Anderson memory ``m`` (0: plain iteration).
        on_failure: ``"warn"``
            ([`InverseNotConvergedWarning`][iresnet.errors.InverseNotConvergedWarning]) or
            ``"raise"`` ([`InverseNotConvergedError`][iresnet.errors.InverseNotConvergedError])
            when a sample does not converge.

    Raises:
        ValueError: negative tolerances or both 0, ``max_iter < 1``, ``anderson < 0`` or an
            unknown ``on_failure``.
        InverseNotConvergedError: at call time, a sample missed the tolerance and
            ``on_failure="raise"``.
        TypeError: at call time, an input that is not a tensor.
        DataError: at call time, an empty, boolean or complex input, or one of another dtype or
            device than ``g``.

    References:
        - Behrmann et al., arXiv:1811.00995, sec. 2, Algorithm 1, eq. (1).
        - Walker & Ni, SIAM J. Numer. Anal. 49(4), 2011 (Anderson acceleration).

    Examples:
        >>> solver = FixedPointInverse(atol=1e-7, anderson=2)
        >>> x, d = solver.solve(lambda x: 0.5 * torch.tanh(x), torch.ones(1, 3))
        >>> bool(torch.allclose(x + 0.5 * torch.tanh(x), torch.ones(1, 3), atol=1e-6))
        True
    """

    def __init__(
        self,
        atol: float = 1e-6,
        rtol: float = 1e-6,
        max_iter: int = 100,
        anderson: int = 0,
        on_failure: Literal["warn", "raise"] = "warn",
    ) -> None:
        if atol < 0 or rtol < 0 or atol + rtol <= 0:
            raise ValueError(f"need atol, rtol >= 0 and not both 0, got atol={atol}, rtol={rtol}")
        if not isinstance(max_iter, int) or max_iter < 1:
            raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")
        if not isinstance(anderson, int) or anderson < 0:
            raise ValueError(f"anderson must be a non-negative integer, got {anderson!r}")
        if on_failure not in ("warn", "raise"):
            raise ValueError(f"on_failure must be 'warn' or 'raise', got {on_failure!r}")
        self.atol, self.rtol, self.max_iter = atol, rtol, max_iter
        self.anderson, self.on_failure = anderson, on_failure

    def __call__(
        self, g: G, y: Tensor, *, lipschitz: float | None = None, where: str = ""
    ) -> Tensor:
        """``x`` with ``x + g(x) = y``, without the diagnostics; see ``solve``."""
        return self.solve(g, y, lipschitz=lipschitz, where=where)[0]

    def solve(
        self, g: G, y: Tensor, *, lipschitz: float | None = None, where: str = ""
    ) -> tuple[Tensor, InverseDiagnostics]:
        """Solve ``x + g(x) = y``; return ``x`` and the diagnostics of this solve.

        Args:
            g: the samplewise map (a module or a function), a contraction for convergence.
            y: ``(B, *event)``.
            lipschitz: a certified ``Lip(g)`` for the a-priori bound in the diagnostics.
            where: a name for the warning or error message.

        Returns:
            ``x`` of the shape of ``y`` (with the implicit gradient where autograd needs one)
                and the [`InverseDiagnostics`][iresnet.ops.fixed_point.InverseDiagnostics].

        Raises:
            InverseNotConvergedError: a sample missed the tolerance and ``on_failure="raise"``
                (with ``"warn"``, an ``InverseNotConvergedWarning`` is warned instead).
            TypeError: ``y`` is not a tensor.
            DataError: ``y`` is empty, boolean or complex, or (``g`` a module) of another dtype
                or device than ``g``.
        """
        x, diag = fixed_point_solve(
            g,
            y,
            atol=self.atol,
            rtol=self.rtol,
            max_iter=self.max_iter,
            anderson=self.anderson,
            lipschitz=lipschitz,
        )
        if not diag.all_converged:
            msg = self._failure_message(diag, where)
            if self.on_failure == "raise":
                raise InverseNotConvergedError(msg)
            warnings.warn(msg, InverseNotConvergedWarning, stacklevel=4)
        params = [p for p in g.parameters() if p.requires_grad] if isinstance(g, nn.Module) else []
        params += [t for t in getattr(g, "grad_inputs", ()) if t.requires_grad]  # contexts
        if torch.is_grad_enabled() and (y.requires_grad or params):
            x = self._attach_implicit_grad(g, y, x)
        return x, diag

    def _failure_message(self, diag: InverseDiagnostics, where: str) -> str:
        """Why the samples missed the requested tolerance ``atol + rtol * max|x|``."""
        of = f" of {where}" if where else ""
        n = diag.converged.numel()
        floored = int(diag.at_floor.sum()) if diag.at_floor is not None else 0
        capped = n - int(diag.converged.sum()) - floored
        parts = []
        if capped:
            parts.append(
                f"{capped}/{n} samples missed it (atol {self.atol:g} + rtol {self.rtol:g} * "
                f"max|x|) in {count(self.max_iter, 'iteration')} (largest step "
                f"{float(diag.residual.max()):.2e}): raise max_iter, use anderson>0, or check "
                "that Lip(g) < 1 (iresnet.certify)"
            )
        if floored:
            parts.append(
                f"{floored}/{n} samples stopped at the rounding floor of their dtype, above "
                f"atol {self.atol:g} + rtol {self.rtol:g} * max|x|: the result is as accurate "
                "as the dtype allows; ask for a larger atol/rtol"
                + ("" if diag.residual.dtype == torch.float64 else " or compute in float64")
            )
        return f"fixed-point inverse{of} did not reach the requested tolerance: " + "; ".join(parts)

    def _attach_implicit_grad(self, g: G, y: Tensor, x_star: Tensor) -> Tensor:
        x_star = x_star.detach().requires_grad_()
        gx = g(x_star)
        x = y - gx  # equals x* at the fixed point; its graph reaches y and g's parameters

        def adjoint(a: Tensor) -> Tensor:
            # Replace the incoming gradient a by u = (I + J)^{-T} a, i.e. u = a - J^T u.
            u = a
            for _ in range(self.max_iter):
                ju = torch.autograd.grad(gx, x_star, u, retain_graph=True)[0]
                u_new = a - ju
                done = (u_new - u).abs().max() <= self.atol + self.rtol * u.abs().max()
                u = u_new
                if bool(done):
                    break
            return u

        x.register_hook(adjoint)
        return x

    def __repr__(self) -> str:
        return (
            f"FixedPointInverse(atol={self.atol}, rtol={self.rtol}, max_iter={self.max_iter}, "
            f"anderson={self.anderson}, on_failure={self.on_failure!r})"
        )
