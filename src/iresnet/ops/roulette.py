"""When the Russian roulette has finite variance, and a choice of it that always does.

The roulette estimate of ``log det(I + J)`` for one probe ``v`` is
``Z = sum_{k=1}^{N} a_k / P_k`` with ``a_k = (-1)^{k+1} v^T J^k v / k`` and
``P_k = P(N >= k)`` (Residual Flows eq. (6)). Given ``v``,
``E[Z^2] = sum_{j,k} a_j a_k P_{max(j,k)} / (P_j P_k) = sum_{j,k} a_j a_k / P_{min(j,k)}``, so

    Var[Z | v] = sum_{j,k>=1} a_j a_k (1 / P_{min(j,k)} - 1).                          (1)

With ``|v^T J^k v| <= ||v||^2 L^k`` for ``L >= ||J||_2`` (the certified ``Lip(g)`` bounds it):

    Var[Z | v] <= ||v||^4 B,   B = sum_{j,k>=1} L^(j+k) / (j k) (1 / P_{min(j,k)} - 1).   (2)

For ``N = n_exact + M``, ``M ~ Geometric(p)`` on ``{0, 1, ...}``, ``P_k = 1`` for
``k <= n_exact`` and ``P_k = q^(k - n_exact)``, ``q = 1 - p``, beyond. Summing (2) over
``m = min(j, k)`` with ``sum_{k>m} L^k / k <= L^(m+1) / ((m+1)(1-L))``:

    B <= (1+L)/(1-L) q^n_exact sum_{m > n_exact} r^m / m^2,   r = L^2 / q,            (3)

finite iff ``L^2 <= 1 - p``; for ``J = L I`` the partial sums of ``Z`` grow like
``(L/q)^n / n`` and ``E[Z^2] >= sum_n P(N = n) (...)^2 ~ sum_n r^n / n^2``, so the variance is
infinite when ``L^2 > 1 - p``: the condition is sharp. Residual Flows' ``Geometric(0.5)`` thus
has infinite worst-case variance once ``L^2 > 1/2`` (``L > 0.707``), which the paper's
``coeff = 0.98`` with three layers (``L = 0.94``) exceeds. A Poisson ``M`` has
``1 / P_k`` growing like ``k! / rate^k``, faster than any ``L^(-2k)``: infinite for every
``L > 0``.

**The automatic choice** ([`roulette_for_lipschitz`][iresnet.ops.roulette.roulette_for_lipschitz]):
``p = (1 - L^2) / 2``, i.e. ``q = (1 + L^2) / 2`` (halfway between ``L^2`` and 1, the paper's
``p = 1/2`` at ``L = 0``), so ``r = 2 L^2 / (1 + L^2) < 1``; and
``n_exact = max(2, ceil(L^2 / (1 - L^2)))`` exact terms (about the number of terms over which
``L^(2k)`` falls by ``e``, since ``L^2/(1-L^2) ~ 1/(2(1-L))``). Then (3) gives, with
``q (1 - r) = (1 - L^2) / 2``,

    B <= 2 L^(2 n_exact + 2) / ((1 - L)^2 (n_exact + 1)^2)  < infinity   for every L < 1. (4)

At ``L = 0.99``: ``p = 0.00995``, ``n_exact = 50``, ``B <= 2.76`` (the squared worst-case
log-det ``log(1 - L)^2`` is 21.2); expected terms ``n_exact + q/p = 149.5``: finite variance at
``L`` near 1 costs terms, as the series itself does.

References:
    - Chen et al., "Residual Flows for Invertible Generative Modeling", NeurIPS 2019,
      arXiv:1906.02735, sec. 3.1, eq. (5)-(6).
    - Lyne et al., "On Russian Roulette Estimates for Bayesian Inference with
      Doubly-Intractable Likelihoods", Statistical Science 30(4), 2015, arXiv:1306.4032.
"""

from __future__ import annotations

import math

__all__ = [
    "roulette_for_lipschitz",
    "roulette_variance_bound",
    "roulette_variance_is_finite",
    "auto_roulette_bound",
    "truncation_cap",
]


def _check_lipschitz(lipschitz: float) -> None:
    if not 0.0 <= lipschitz < 1.0:
        raise ValueError(
            f"the roulette needs a Lipschitz bound in [0, 1) (a contraction), got {lipschitz}"
        )


def _check_nonnegative(lipschitz: float) -> None:
    if not lipschitz >= 0.0:
        raise ValueError(f"a Lipschitz bound is >= 0, got {lipschitz}")


def roulette_for_lipschitz(lipschitz: float) -> tuple[float, int]:
    """The geometric roulette chosen for ``Lip(g) <= L``: ``(p, n_exact)``.

    ``p = (1 - L^2) / 2`` and ``n_exact = max(2, ceil(L^2 / (1 - L^2)))``; its variance bound
    (module docstring, eq. (4)) is ``B <= 2 L^(2 n + 2) / ((1 - L)^2 (n + 1)^2)``, finite for
    every ``L < 1``.

    Args:
        lipschitz: ``L`` in ``[0, 1)``.

    Returns:
        ``(p, n_exact)``.

    Raises:
        ValueError: ``L`` outside ``[0, 1)``.

    References:
        - Chen et al., "Residual Flows for Invertible Generative Modeling", arXiv:1906.02735,
          sec. 3.1 (the estimator); the variance bound is derived in the module docstring.

    Examples:
        >>> roulette_for_lipschitz(0.0)
        (0.5, 2)
        >>> p, n = roulette_for_lipschitz(0.99)
        >>> round(p, 5), n
        (0.00995, 50)
    """
    _check_lipschitz(lipschitz)
    l2 = lipschitz * lipschitz
    return (1.0 - l2) / 2.0, max(2, math.ceil(l2 / (1.0 - l2) - 1e-12))


def truncation_cap(lipschitz: float, tol: float = 1e-6) -> int:
    """The smallest cap ``K`` on the number of terms whose truncation bias is at most ``tol``
    nats per dimension for every ``g`` with ``Lip(g) <= L``.

    Capping ``N`` at ``K`` keeps the weights ``1 / P(N >= k)`` of the terms ``k <= K`` (the
    capped ``N`` reaches ``k <= K`` exactly when the uncapped one does), so the capped
    roulette's mean is the series truncated after ``K`` terms, and its bias is the tail:
    ``|sum_{k>K} (-1)^(k+1) tr(J^k) / k| <= d L^(K+1) / ((K+1)(1-L))`` for ``J`` of size ``d``.

    Args:
        lipschitz: ``L`` in ``[0, 1)``.
        tol: the bias allowed per dimension, in nats (> 0).

    Returns:
        ``K >= 1``.

    Raises:
        ValueError: ``L`` outside ``[0, 1)`` or ``tol <= 0``.

    Examples:
        >>> truncation_cap(0.5), truncation_cap(0.99)
        (16, 1133)
    """
    _check_lipschitz(lipschitz)
    if not tol > 0:
        raise ValueError(f"tol must be positive, got {tol}")
    k = 1
    while lipschitz ** (k + 1) / ((k + 1) * (1.0 - lipschitz)) > tol:
        k += 1
    return k


def auto_roulette_bound(lipschitz: float, n_exact: int) -> float:
    """The closed-form bound (4) of the automatic choice: ``2 L^(2n+2) / ((1-L)^2 (n+1)^2)``.

    Raises:
        ValueError: ``L`` outside ``[0, 1)``.

    References:
        - Chen et al., "Residual Flows for Invertible Generative Modeling", arXiv:1906.02735,
          sec. 3.1 (the estimator); the variance bound is derived in the module docstring.

    Examples:
        >>> round(auto_roulette_bound(0.99, 50), 2)
        2.76
    """
    _check_lipschitz(lipschitz)
    return 2.0 * lipschitz ** (2 * n_exact + 2) / ((1.0 - lipschitz) ** 2 * (n_exact + 1) ** 2)


def roulette_variance_is_finite(
    lipschitz: float, distribution: str = "geometric", param: float = 0.5
) -> bool:
    """Whether the roulette's worst-case variance over ``Lip(g) <= L`` is finite.

    Geometric(``p``): iff ``L^2 <= 1 - p`` (sharp: ``J = L I`` attains it). Poisson: only for
    ``L = 0`` (module docstring). Never for ``L >= 1`` (``J = I``: the terms ``tr(J^k)/k`` do
    not shrink).

    Raises:
        ValueError: a negative or NaN ``L``.

    References:
        - Chen et al., "Residual Flows for Invertible Generative Modeling", arXiv:1906.02735,
          sec. 3.1 (the estimator); the variance bound is derived in the module docstring.

    Examples:
        >>> roulette_variance_is_finite(0.7), roulette_variance_is_finite(0.71)
        (True, False)
    """
    _check_nonnegative(lipschitz)
    if lipschitz == 0.0:
        return True
    if lipschitz >= 1.0:
        return False
    if distribution == "geometric":
        return lipschitz * lipschitz <= 1.0 - param
    return False


def roulette_variance_bound(
    lipschitz: float,
    n_exact: int,
    distribution: str = "geometric",
    param: float = 0.5,
    *,
    max_terms: int = 100_000,
) -> float:
    """``B`` of eq. (2): ``Var[Z | v] <= ||v||^4 B`` for every ``J`` with ``||J||_2 <= L``.

    Summed term by term (in log space) up to ``max_terms`` values of ``min(j, k)``, plus the
    tail bound of eq. (3) beyond; each term's inner sum over ``max(j,k)`` is exact. ``inf`` where
    the roulette's variance is not finite.

    Args:
        lipschitz: ``L >= 0`` (``inf`` is returned for ``L >= 1``).
        n_exact: the terms always computed (>= 1).
        distribution: ``"geometric"`` or ``"poisson"``.
        param: ``p`` of the geometric (or the Poisson rate).
        max_terms: terms summed before the closed-form tail.

    Returns:
        The bound (an upper bound of ``B``), ``math.inf`` if infinite.

    Raises:
        ValueError: a negative or NaN ``L``.

    References:
        - Chen et al., "Residual Flows for Invertible Generative Modeling", arXiv:1906.02735,
          sec. 3.1 (the estimator); the variance bound is derived in the module docstring.

    Examples:
        >>> roulette_variance_bound(0.9, 2, param=0.5)
        inf
        >>> p, n = roulette_for_lipschitz(0.9)
        >>> 0 < roulette_variance_bound(0.9, n, param=p) <= auto_roulette_bound(0.9, n)
        True
    """
    if not roulette_variance_is_finite(lipschitz, distribution, param):
        return math.inf
    if lipschitz == 0.0:
        return 0.0
    L = lipschitz
    log_l, log_q = math.log(L), math.log(1.0 - param)
    # tail_after[m] = sum_{k>m} L^k / k, from the full sum -log(1 - L).
    full = -math.log1p(-L)
    tail = full
    total = 0.0
    last = n_exact
    for m in range(1, n_exact + max_terms + 1):
        log_term = m * log_l - math.log(m)  # log(L^m / m)
        term_m = math.exp(log_term)
        tail -= term_m
        if m <= n_exact:
            continue  # P_m = 1: no contribution
        log_inv_p = -(m - n_exact) * log_q  # log(1 / P_m)
        # inner = term_m^2 + 2 term_m tail_m = term_m^2 (1 + 2 ratio), ratio = tail_m / term_m.
        # The running difference `tail` loses digits once it is small: add its rounding slack,
        # and never exceed the analytic ratio bound L m / ((m+1)(1-L)).
        analytic = L * m / ((m + 1) * (1.0 - L))
        if term_m > 0:
            ratio = min((max(tail, 0.0) + 4e-16 * m * full) / term_m, analytic)
        else:
            ratio = analytic
        log_inner = 2 * log_term + math.log1p(2 * ratio)
        # (1 / P_m - 1) inner, in log space (1 / P_m overflows where L^(2m) underflows)
        total += math.exp(log_inv_p + log_inner) * -math.expm1(-log_inv_p)
        last = m
        if log_inv_p + log_inner < -60 and m > n_exact + 10:
            break
    # beyond `last`: eq. (3)'s tail, sum_{m > last} r^m / m^2 <= r^(last+1) / ((last+1)^2 (1-r))
    r = L * L / (1.0 - param)
    pre = (1.0 + L) / (1.0 - L) * math.exp(n_exact * log_q)
    rest = 1.0 / last  # r <= 1: sum_{m > last} 1/m^2 <= 1/last
    if r < 1.0:
        rest = min(rest, math.exp((last + 1) * math.log(r)) / ((last + 1) ** 2 * (1.0 - r)))
    return total + pre * rest
