"""Smooth 1-Lipschitz activations.

The log-density of a residual flow depends on ``J_g``, so its gradient depends on the second
derivatives of ``g``. ReLU's kink makes ``J_g`` discontinuous (i-ResNet sec. 3.2 and app. C.3
recommend activations with continuous derivatives, and use ELU); ELU and softplus reach slope 1
only where their second derivative vanishes, which starves the gradient ("derivative
saturation", Residual Flows sec. 3.3). LipSwish keeps a non-vanishing second derivative where
its slope is near 1.

References:
    - Behrmann et al., "Invertible Residual Networks", ICML 2019, arXiv:1811.00995.
    - Chen et al., "Residual Flows for Invertible Generative Modeling", NeurIPS 2019,
      arXiv:1906.02735.
    - Perugachi-Diaz, Tomczak, Bhulai, "Invertible DenseNets with Concatenated LipSwish",
      NeurIPS 2021, arXiv:2102.02694.
    - Ahn, Kim, Hong, Kim, "Invertible Monotone Operators for Normalizing Flows", NeurIPS 2022,
      arXiv:2210.08176 (Pila and CPila).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "CLIPSWISH_CONSTANT",
    "CPILA_CONSTANT",
    "CLipSwish",
    "CPila",
    "LipSwish",
    "LipELU",
    "Pullback",
    "ONE_LIPSCHITZ_ACTIVATIONS",
    "ACTIVATIONS",
    "activation_factory",
    "expansion_of",
    "pila",
    "pila_slope",
]


class Pullback:
    """A parameter and the map from the gradient of a tensor computed from it (a normalised
    weight, LipSwish's ``beta``) to the parameter's gradient: the closed-form backward pass of
    that small computation. It is linear, so gradients meant for the same computed tensor are
    summed first and pulled back once.

    Arguments:
        param: the parameter.
        pullback: ``gradient of the computed tensor -> gradient of param``.
    """

    __slots__ = ("param", "pullback")

    def __init__(self, param: Tensor, pullback: Callable[[Tensor], Tensor]) -> None:
        self.param, self.pullback = param, pullback


Pairs = list[tuple["Tensor | Pullback", Tensor]]
Adjoint = Callable[
    [Tensor | None, Tensor | None, bool],
    tuple[Tensor | None, Tensor | None, Pairs],
]
"""``adjoint(c, r, need_c) -> (c_in, r_in, pairs)`` of a layer's ``linearize_adjoint``: the
cotangents of its pushed tangents (``c``) and of its output (``r``), either None for zero,
carried back to its input, and ``(tensor, gradient)`` pairs for the differentiable tensors it
used: parameters, tensors whose autograd graph leads to them, or
[`Pullback`][iresnet.nn.activations.Pullback]s (see
[`linearize_adjoint`][iresnet.ops.jacobian.linearize_adjoint])."""


def _lipswish_slope(z: Tensor, s: Tensor) -> Tensor:
    """LipSwish's slope ``(s + z s (1 - s)) / 1.1`` from ``z = beta x`` and ``s = sigmoid(z)``."""
    return torch.addcmul(s, z, s - s * s) / 1.1


class LipSwish(nn.Module):
    """LipSwish: ``f(x) = x * sigmoid(beta x) / 1.1`` (Residual Flows eq. (10)).

    ``beta = softplus(b)`` with ``b`` learned, one per module, so ``beta > 0``. The slope of
    Swish ``x * sigmoid(beta x)`` is at most about 1.0998 for every ``beta >= 0``, so dividing
    by 1.1 makes ``f`` 1-Lipschitz.

    Arguments:
        init_beta: the initial ``beta`` (> 0); the raw parameter is
            ``softplus^{-1}(init_beta)``.

    Shapes:
        Any; elementwise.

    Raises:
        ValueError: ``init_beta <= 0``.

    References:
        - Chen et al., arXiv:1906.02735, sec. 3.3, eq. (10).

    Examples:
        >>> f = LipSwish()
        >>> [round(v, 4) for v in f(torch.tensor([-1.0, 0.0, 2.0])).tolist()]
        [-0.2445, 0.0, 1.6014]
        >>> f.lipschitz_bound()
        1.0
    """

    def __init__(self, init_beta: float = 1.0) -> None:
        super().__init__()
        if init_beta <= 0:
            raise ValueError(f"init_beta must be positive, got {init_beta}")
        raw = math.log(math.expm1(init_beta))
        self.raw_beta = nn.Parameter(torch.tensor(raw))

    @property
    def beta(self) -> Tensor:
        """``softplus(raw_beta)``, a 0-d tensor with a gradient."""
        return F.softplus(self.raw_beta)

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(self.beta * x) / 1.1

    def linearize(
        self, x: Tensor, t: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None, Callable[[Tensor], Tensor]]:
        """``f(x)`` and ``f'(x) t`` (with their graphs; None without tangents ``t``), and
        ``vjp(w) = w * f'(x)`` in closed form (no graph)."""
        beta = self.beta
        z = beta * x
        s = torch.sigmoid(z)
        y = x * s / 1.1
        if t is None:
            with torch.no_grad():
                slope = _lipswish_slope(z, s)
            return y, None, lambda w: w * slope
        slope = _lipswish_slope(z, s)
        fixed = slope.detach()
        return y, slope * t, lambda w: w * fixed

    def linearize_adjoint(
        self, x: Tensor, t: Tensor, graph: bool = False
    ) -> tuple[Tensor, Tensor, Callable[[Tensor], Tensor], Adjoint]:
        """``f(x)`` and ``f'(x) t`` (no graphs; with ``graph`` ``f(x)`` has its autograd
        graph), ``vjp(w) = w * f'(x)`` and the adjoint of the linearised map, for gradients in
        closed form (see [`linearize_adjoint`][iresnet.ops.jacobian.linearize_adjoint]).

        ``adjoint(c, r, need_c) -> (c', r', pairs)``: ``c`` ``(m, *x.shape)`` is the cotangent
        of the pushed tangents ``f'(x) t`` (or None; it may be given once, after which the
        tangents are released), ``r`` that of ``f(x)`` (or None); returns ``c' = f'(x) c``
        (None unless ``need_c``), the cotangent of ``x``,
        ``r' = f'(x) r + f''(x) sum_m c t``, and ``[(beta, d/d beta)]``, with
        ``f''(x) = beta h'(z) / 1.1``, ``h'(z) = s (1 - s) (2 + z (1 - 2 s))``,
        ``df/dbeta = x^2 s (1 - s) / 1.1`` and ``df'/dbeta = x h'(z) / 1.1``
        (``z = beta x``, ``s = sigmoid(z)``). Kept for ``r``: the slope and ``x^2 s (1 - s)``,
        as many tensors as autograd would keep for ``f``."""
        raw = self.raw_beta
        y: Tensor | None = None
        if graph:
            z = self.beta * x
            s = torch.sigmoid(z)
            y = x * s / 1.1
            x, z, s = x.detach(), z.detach(), s.detach()
        with torch.no_grad():
            b = F.softplus(raw)
            # d softplus / d raw: sigmoid(raw), and 1 above softplus' linear threshold (20)
            dbeta = torch.where(raw > 20, torch.ones_like(raw), torch.sigmoid(raw))
            beta = Pullback(raw, lambda g: g * dbeta)
            if y is None:
                z = b * x
                s = torch.sigmoid(z)
                y = (x * s).div_(1.1)
            ds = torch.addcmul(s, s, s, value=-1)  # s (1 - s)
            slope = torch.addcmul(s, z, ds).div_(1.1)
            t_out = slope * t
            # h'(z) / 1.1 = f''(x) / beta, for the tangents' cotangent
            curvature = torch.rsub(s, 1, alpha=2).mul_(z).add_(2).mul_(ds).div_(1.1)
            x2ds = (x * x).mul_(ds)  # 1.1 df/dbeta
        held = [t, curvature, x]  # for the tangents' cotangent only: released after its use

        def adjoint(
            c: Tensor | None, r: Tensor | None, need_c: bool
        ) -> tuple[Tensor | None, Tensor | None, Pairs]:
            with torch.no_grad():
                r_in = c_in = grad_beta = None
                if c is not None:
                    t_, curvature_, x_ = held
                    held.clear()
                    q = c[0] * t_[0]  # sum_m c t, without a reduction over one probe
                    for i in range(1, c.shape[0]):
                        q.addcmul_(c[i], t_[i])
                    q.mul_(curvature_)
                    r_in = q * b
                    grad_beta = (q * x_).sum()
                    if need_c:
                        c_in = c * slope
                if r is not None:
                    r_in = r * slope if r_in is None else r_in.addcmul_(r, slope)
                    from_r = (r * x2ds).sum() / 1.1
                    grad_beta = from_r if grad_beta is None else grad_beta + from_r
            return c_in, r_in, [] if grad_beta is None else [(beta, grad_beta)]

        return y, t_out, lambda w: w * slope, adjoint

    def jvp(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Forward-mode derivative: ``(f(x), f'(x) t)``.

        ``f'(x) = (s + beta x s (1 - s)) / 1.1`` with ``s = sigmoid(beta x)``.

        Args:
            x: input, any shape.
            t: tangents, ``(d, *x.shape)``.

        Returns:
            ``f(x)`` of ``x``'s shape and ``f'(x) t`` of ``t``'s shape.
        """
        z = self.beta * x
        s = torch.sigmoid(z)
        return x * s / 1.1, _lipswish_slope(z, s) * t

    def lipschitz_bound(self) -> float:
        """1.0: the slope never exceeds 1."""
        return 1.0


CLIPSWISH_CONSTANT = 1.10436155
"""``sup_t sqrt(h(t)^2 + h(-t)^2)`` for ``h(t) = sigmoid(t) + t sigmoid(t) (1 - sigmoid(t))``,
the slope of Swish ``t sigmoid(t)``, rounded up (the supremum is 1.104361544035884..., reached
at ``|t| = 2.39935728...``; computed with 40-digit arithmetic). Since ``h(t) + h(-t) = 1`` and
``h`` ranges over ``[1 - h_max, h_max]`` with ``h_max = 1.0998393201...``, the supremum is
``sqrt(h_max^2 + (1 - h_max)^2)``, whatever ``beta``. The i-DenseNet paper divides by
``1.1 * 1.004 = 1.1044``; this constant is the exact one, rounded up at the 8th decimal."""


class CLipSwish(nn.Module):
    """Concatenated LipSwish: ``f(x) = [s(x), s(-x)] / C``, 1-Lipschitz from ``R^n`` to ``R^2n``.

    ``s(x) = x sigmoid(beta x)`` (Swish) with ``beta = softplus(b)`` learned, and
    ``C =`` [`CLIPSWISH_CONSTANT`][iresnet.nn.activations.CLIPSWISH_CONSTANT]. Each input
    ``x_i`` feeds only its two outputs, so the Jacobian is block diagonal with blocks
    ``(s'(x_i), -s'(-x_i))^T / C`` and its spectral norm is
    ``max_i sqrt(s'(x_i)^2 + s'(-x_i)^2) / C <= 1`` (i-DenseNet sec. 3.2, eq. (9)-(10)). The
    concatenation keeps the information LipSwish's negative side squashes: ``x = C (f_1 - f_2)``
    recovers the input, so unlike LipSwish the map is injective and its slope is close to 1
    everywhere (the paper's reason for it: i-DenseNet sec. 3.2). The output has twice the
    channels, so the next layer takes ``2n`` inputs (``expansion = 2``; the branch builders
    account for it).

    Arguments:
        init_beta: the initial ``beta`` (> 0).
        dim: the channel dimension the halves are concatenated along (1: ``(B, C, ...)``).

    Shapes:
        ``(B, n, *rest) -> (B, 2n, *rest)`` along ``dim``.

    Raises:
        ValueError: ``init_beta <= 0``.

    References:
        - Perugachi-Diaz et al., arXiv:2102.02694, sec. 3.2 (CLipSwish), eq. (9)-(10).

    Examples:
        >>> f = CLipSwish()
        >>> f(torch.zeros(3, 2)).shape
        torch.Size([3, 4])
        >>> y = f(torch.tensor([[1.5]])).detach()
        >>> round(float(CLIPSWISH_CONSTANT * (y[0, 0] - y[0, 1])), 6)  # s(x) - s(-x) = x
        1.5
    """

    expansion = 2

    def __init__(self, init_beta: float = 1.0, dim: int = 1) -> None:
        super().__init__()
        if init_beta <= 0:
            raise ValueError(f"init_beta must be positive, got {init_beta}")
        self.dim = dim
        self.raw_beta = nn.Parameter(torch.tensor(math.log(math.expm1(init_beta))))

    @property
    def beta(self) -> Tensor:
        """``softplus(raw_beta)``, a 0-d tensor with a gradient."""
        return F.softplus(self.raw_beta)

    def forward(self, x: Tensor) -> Tensor:
        z = torch.cat([x, -x], dim=self.dim)
        return z * torch.sigmoid(self.beta * z) / CLIPSWISH_CONSTANT

    def jvp(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Forward-mode derivative: ``(f(x), J_f(x) t)``.

        Args:
            x: input ``(B, n, ...)``.
            t: tangents ``(d, B, n, ...)``.

        Returns:
            ``f(x)`` ``(B, 2n, ...)`` and ``J_f(x) t`` ``(d, B, 2n, ...)``.
        """
        beta = self.beta
        z = torch.cat([x, -x], dim=self.dim)
        tz = torch.cat([t, -t], dim=self.dim + 1)
        s = torch.sigmoid(beta * z)
        dy = (s + beta * z * s * (1 - s)) / CLIPSWISH_CONSTANT
        return z * s / CLIPSWISH_CONSTANT, dy * tz

    def lipschitz_bound(self) -> float:
        """1.0: the Jacobian's spectral norm never exceeds 1 (see the class docstring)."""
        return 1.0


PILA_K = 5.0
"""The sharpness ``k`` of Pila in CPila (the Monotone Flows code's default)."""

PILA_SHIFT = 0.2
"""The shift ``s`` of CPila's two halves, ``pila(x - s)`` and ``pila(-x - s)``."""

CPILA_CONSTANT = 1.05882105
"""``sup_x sqrt(h(k(x - s))^2 + h(k(-x - s))^2)`` for Pila's slope ``h`` with ``k = 5``,
``s = 0.2``: ``sqrt(1 + 361 e^{-8}) = 1.0588210465762...``, rounded up at the 8th decimal
(reached at ``x = +-0.6``; see [`CPila`][iresnet.nn.activations.CPila]). The Monotone Flows
code divides by 1.06."""


def pila(x: Tensor, k: float = PILA_K) -> Tensor:
    """Pila: ``x`` for ``x > 0`` and ``(t^3/2 - t^2 + t) e^t / k`` with ``t = k x`` otherwise.

    Twice continuously differentiable at 0 (value 0, slope 1, curvature 0 from both sides); its
    slope ``h(t) = (t^3/2 + t^2/2 - t + 1) e^t`` (``t <= 0``) falls from 1 at ``t = 0`` to its
    minimum ``-19 e^{-4} = -0.348`` at ``t = -4`` and back towards 0, since
    ``h'(t) = t^2 (t/2 + 2) e^t``; so Pila is 1-Lipschitz. Monotone Flows' activation (the
    name is the authors'; their code evaluates this polynomial-times-exponential form).

    Args:
        x: any shape.
        k: the sharpness ``k > 0``.

    Returns:
        A tensor of ``x``'s shape.

    References:
        - Ahn et al., "Invertible Monotone Operators for Normalizing Flows", arXiv:2210.08176
          (Pila); the form as in the authors' code, github.com/mlvlab/MonotoneFlows.

    Examples:
        >>> [round(v, 4) for v in pila(torch.tensor([-1.0, 0.0, 2.0])).tolist()]
        [-0.1247, 0.0, 2.0]
    """
    t = (k * x).clamp(max=0.0)  # e^t on the positive side is never used: keep it finite
    neg = (t * t * t / 2 - t * t + t) * torch.exp(t) / k
    return torch.where(x > 0, x, neg)


def pila_slope(x: Tensor, k: float = PILA_K) -> Tensor:
    """``pila'(x)``: 1 for ``x > 0``, ``(t^3/2 + t^2/2 - t + 1) e^t`` with ``t = k x``
    otherwise; values in ``[-19 e^{-4}, 1]``, of ``x``'s shape (Ahn et al., arXiv:2210.08176)."""
    t = (k * x).clamp(max=0.0)
    neg = (t * t * t / 2 + t * t / 2 - t + 1) * torch.exp(t)
    return torch.where(x > 0, torch.ones_like(x), neg)


class CPila(nn.Module):
    """Concatenated Pila: ``f(x) = [pila(x - s), pila(-x - s)] / C``, 1-Lipschitz ``R^n -> R^2n``.

    Monotone Flows' activation, with ``k = 5`` and ``s = 0.2`` (the authors' values) and
    ``C =`` [`CPILA_CONSTANT`][iresnet.nn.activations.CPILA_CONSTANT]. Like
    [`CLipSwish`][iresnet.nn.activations.CLipSwish] each input feeds its own two outputs, so the
    Jacobian is block diagonal with blocks ``(h(u), -h(v))^T / C``, ``u = k (x - s)``,
    ``v = k (-x - s) = -u - 2``, and ``h`` the slope of Pila in ``t = k x`` (see
    [`pila`][iresnet.nn.activations.pila]). **Proof of the constant.** ``h = 1`` on ``t >= 0``
    and ``h`` lies in ``[h(-4), h(-2)] = [-19 e^{-4}, e^{-2}]`` on ``t <= -2``, so where
    ``u >= 0`` (then ``v <= -2``) the block's norm is at most ``sqrt(1 + 361 e^{-8})``, reached
    at ``u = 2`` (``x = 0.6``), and likewise where ``v >= 0``; where both are negative
    (``-2 < u < 0``) its largest value is ``1.04272...`` (a 10^-6 grid with ``|h'| <= 0.6``
    there: tested). Hence ``||J_f|| <= 1``. The slopes never vanish where ``|x|`` is moderate
    (at least one half is close to 1), the gradient-flow argument the paper makes for it.

    Arguments:
        dim: the channel dimension the halves are concatenated along (1: ``(B, C, ...)``).

    Shapes:
        ``(B, n, *rest) -> (B, 2n, *rest)`` along ``dim``.

    References:
        - Ahn et al., arXiv:2210.08176 (Concatenated Pila); the constants as in the authors'
          code, github.com/mlvlab/MonotoneFlows.

    Examples:
        >>> f = CPila()
        >>> f(torch.zeros(3, 2)).shape
        torch.Size([3, 4])
        >>> f.lipschitz_bound()
        1.0
    """

    expansion = 2

    def __init__(self, dim: int = 1) -> None:
        super().__init__()
        self.dim = dim

    def _halves(self, x: Tensor) -> Tensor:
        return torch.cat([x - PILA_SHIFT, -x - PILA_SHIFT], dim=self.dim)

    def forward(self, x: Tensor) -> Tensor:
        return pila(self._halves(x)) / CPILA_CONSTANT

    def jvp(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Forward-mode derivative: ``(f(x), J_f(x) t)``.

        Args:
            x: input ``(B, n, ...)``.
            t: tangents ``(d, B, n, ...)``.

        Returns:
            ``f(x)`` ``(B, 2n, ...)`` and ``J_f(x) t`` ``(d, B, 2n, ...)``.
        """
        z = self._halves(x)
        tz = torch.cat([t, -t], dim=self.dim + 1)
        return pila(z) / CPILA_CONSTANT, pila_slope(z) / CPILA_CONSTANT * tz

    def lipschitz_bound(self) -> float:
        """1.0: the Jacobian's spectral norm never exceeds 1 (see the class docstring)."""
        return 1.0


def expansion_of(module: nn.Module) -> int:
    """How many output channels an activation makes of each input channel (``expansion``
    attribute; 1 for elementwise maps, 2 for [`CLipSwish`][iresnet.nn.activations.CLipSwish]).

    Examples:
        >>> expansion_of(CLipSwish()), expansion_of(LipSwish())
        (2, 1)
    """
    return int(getattr(module, "expansion", 1))


class LipELU(nn.ELU):
    """ELU with ``alpha <= 1``: slopes in ``(0, 1]``, so 1-Lipschitz, with a continuous derivative.

    ``elu(x) = x`` for ``x > 0`` and ``alpha (e^x - 1)`` otherwise. i-ResNet uses ELU in all its
    experiments (app. C.3). ``alpha > 1`` would make the slope exceed 1 and is refused.

    Arguments:
        alpha: the negative-side scale, in ``(0, 1]``.

    Shapes:
        Any; elementwise.

    Raises:
        ValueError: ``alpha`` outside ``(0, 1]``.

    References:
        - Behrmann et al., arXiv:1811.00995, sec. 3.2 and app. C.3.

    Examples:
        >>> LipELU()(torch.tensor([-1.0, 2.0]))
        tensor([-0.6321,  2.0000])
    """

    def __init__(self, alpha: float = 1.0) -> None:
        if not 0 < alpha <= 1:
            raise ValueError(f"LipELU needs 0 < alpha <= 1 to stay 1-Lipschitz, got {alpha}")
        super().__init__(alpha=alpha)

    def linearize(
        self, x: Tensor, t: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None, Callable[[Tensor], Tensor]]:
        """``elu(x)`` and ``elu'(x) t`` (with their graphs; None without tangents ``t``), and
        ``vjp(w) = w * elu'(x)`` in closed form (no graph)."""
        y = super().forward(x)
        slope = torch.where(x > 0, torch.ones_like(x), y + self.alpha)
        fixed = slope.detach()
        return y, None if t is None else slope * t, lambda w: w * fixed

    def jvp(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Forward-mode derivative: ``(elu(x), elu'(x) t)``.

        ``elu'(x) = 1`` for ``x > 0`` and ``alpha e^x`` otherwise.

        Args:
            x: input, any shape.
            t: tangents, ``(d, *x.shape)``.

        Returns:
            ``elu(x)`` of ``x``'s shape and ``elu'(x) t`` of ``t``'s shape.
        """
        y = super().forward(x)
        dy = torch.where(x > 0, torch.ones_like(x), y + self.alpha)
        return y, dy * t

    def lipschitz_bound(self) -> float:
        """1.0: the slope never exceeds 1 for ``alpha <= 1``."""
        return 1.0


ONE_LIPSCHITZ_ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.Tanh,
    nn.Identity,
    nn.Softplus,
)
"""Activations from torch that are 1-Lipschitz as they are, for the certificate."""


ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "lipswish": LipSwish,
    "elu": LipELU,
    "clipswish": CLipSwish,
    "cpila": CPila,
}
"""Activation names the model families and the config accept, with their module classes."""


def activation_factory(spec: str | Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    """A zero-argument factory of activation modules from a name or a factory.

    Args:
        spec: a name in [`ACTIVATIONS`][iresnet.nn.activations.ACTIVATIONS] (``"lipswish"``,
            ``"elu"``, ``"clipswish"``, ``"cpila"``) or a callable returning a fresh module (e.g.
            ``functools.partial(LipSwish, 10.0)``; a module of unknown Lipschitz constant makes
            the certificate ``inf``).

    Returns:
        A callable that returns a new activation module at every call.

    Raises:
        ValueError: an unknown name.

    Examples:
        >>> type(activation_factory("elu")()).__name__
        'LipELU'
    """
    if callable(spec):
        return spec
    if spec not in ACTIVATIONS:
        raise ValueError(
            f"activation must be one of {sorted(ACTIVATIONS)} or a callable, got {spec!r}"
        )
    return ACTIVATIONS[spec]
