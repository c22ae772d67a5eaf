"""The math as plain functions: Jacobians, log-det estimators and fixed-point solvers.

Re-exported from ``logdet`` (exact, power-series and Russian-roulette estimators of
``log det(I + J_g)``), ``roulette`` (when the roulette's variance is finite, and a choice that
always is), ``compiling`` (the ``torch.compile`` options their graphs want), ``fixed_point``
(the Banach inverse of ``x + g(x)`` and its diagnostics) and ``jacobian``.
Nothing here knows of transforms or flows.

Examples:
    >>> import torch
    >>> from iresnet import ops
    >>> g = lambda x: 0.5 * torch.tanh(x)
    >>> gx, logdet = ops.ExactLogDet()(g, torch.zeros(4, 3))
    >>> x, diagnostics = ops.fixed_point_solve(g, torch.ones(4, 3))
    >>> logdet.shape, diagnostics.all_converged
    (torch.Size([4]), True)
"""

from ..checks import check_finite, check_input
from .compiling import compile_after_first_call, compile_options
from .fixed_point import (
    FixedPointInverse,
    InverseDiagnostics,
    banach_bound,
    banach_iterations,
    fixed_point_solve,
    posterior_bound,
)
from .jacobian import jacobian
from .logdet import (
    LOGDETS,
    ExactLogDet,
    LogDetEstimator,
    NoLogDet,
    PowerSeriesLogDet,
    RussianRouletteLogDet,
    StratifiedRouletteLogDet,
    cayley_weights,
    exact_logdet,
    logdet_estimator,
    roulette_weights,
    sample_probes,
    series_logdet,
)
from .roulette import (
    auto_roulette_bound,
    roulette_for_lipschitz,
    roulette_variance_bound,
    roulette_variance_is_finite,
)

__all__ = [
    "LOGDETS",
    "ExactLogDet",
    "FixedPointInverse",
    "InverseDiagnostics",
    "LogDetEstimator",
    "NoLogDet",
    "PowerSeriesLogDet",
    "RussianRouletteLogDet",
    "StratifiedRouletteLogDet",
    "auto_roulette_bound",
    "banach_bound",
    "banach_iterations",
    "cayley_weights",
    "check_finite",
    "check_input",
    "compile_after_first_call",
    "compile_options",
    "exact_logdet",
    "fixed_point_solve",
    "jacobian",
    "logdet_estimator",
    "posterior_bound",
    "roulette_for_lipschitz",
    "roulette_variance_bound",
    "roulette_variance_is_finite",
    "roulette_weights",
    "sample_probes",
    "series_logdet",
]
