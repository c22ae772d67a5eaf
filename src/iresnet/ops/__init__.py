"""The math as plain functions: Jacobians, log-det estimators and fixed-point solvers."""

from .fixed_point import (
    FixedPointInverse,
    InverseDiagnostics,
    banach_bound,
    banach_iterations,
    fixed_point_solve,
)
from .jacobian import jacobian
from .logdet import (
    LOGDETS,
    ExactLogDet,
    LogDetEstimator,
    NoLogDet,
    PowerSeriesLogDet,
    RussianRouletteLogDet,
    exact_logdet,
    logdet_estimator,
    roulette_weights,
    sample_probes,
    series_logdet,
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
    "banach_bound",
    "banach_iterations",
    "exact_logdet",
    "fixed_point_solve",
    "jacobian",
    "logdet_estimator",
    "roulette_weights",
    "sample_probes",
    "series_logdet",
]
