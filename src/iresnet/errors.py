"""Exceptions and warnings raised by iresnet.

Every error a user can trigger with bad input derives from ``ValueError`` (bad data, configs,
checkpoints) or ``RuntimeError`` (a numerical procedure that did not succeed), so generic
handlers keep working, while the CLI can catch ``IResNetError`` and print one line. Messages say
what was wrong and what to do.

Examples:
    >>> import torch, iresnet
    >>> try:
    ...     iresnet.Dequantize(4)(torch.tensor([[5]]))
    ... except ValueError as err:  # a DataError is a ValueError and an IResNetError
    ...     print(type(err).__name__, isinstance(err, iresnet.IResNetError))
    DataError True
"""

from __future__ import annotations

__all__ = [
    "IResNetError",
    "DataError",
    "ConfigError",
    "CheckpointError",
    "InverseNotConvergedError",
    "InverseNotConvergedWarning",
    "RouletteVarianceWarning",
]


class IResNetError(Exception):
    """Base class of every error iresnet raises on purpose (the CLI prints these in one line).

    Errors about data, configs, checkpoints and non-converged inverses derive from it; the plain
    ``ValueError``s raised for invalid constructor arguments (a bad ``coeff``, an unknown name)
    do not.
    """


class DataError(IResNetError, ValueError):
    """A data file or tensor is missing, malformed or holds values the model cannot take."""


class ConfigError(IResNetError, ValueError):
    """A configuration has an unknown key, a wrong type or an out-of-range value."""


class CheckpointError(IResNetError, ValueError):
    """A checkpoint is missing, torn, foreign to this model, or not a safe (pickle-free) file."""


class InverseNotConvergedError(IResNetError, RuntimeError):
    """The fixed-point inverse did not reach its tolerance within ``max_iter`` iterations.

    Raised by [`FixedPointInverse`][iresnet.ops.fixed_point.FixedPointInverse] with
    ``on_failure="raise"``.
    """


class InverseNotConvergedWarning(RuntimeWarning):
    """Warned (instead of raised) when an inverse did not converge and ``on_failure='warn'``.

    Turn it into an error with ``warnings.simplefilter("error", InverseNotConvergedWarning)``.
    """


class RouletteVarianceWarning(RuntimeWarning):
    """A Russian-roulette log-det estimator whose variance is not finite for the Lipschitz
    bound of the blocks it serves (Geometric(``p``) needs ``L^2 <= 1 - p``; see
    [`iresnet.ops.roulette`][iresnet.ops.roulette]).

    Use ``logdet="roulette-auto"`` (``p`` and ``n_exact`` chosen from the bound), or a smaller
    ``p``. Turn it into an error with ``warnings.simplefilter("error", RouletteVarianceWarning)``.

    Attributes:
        lipschitz: the blocks' bound ``L`` the law was checked against (``None`` when not
            given).
    """

    lipschitz: float | None = None
