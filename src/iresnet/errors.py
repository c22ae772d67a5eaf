"""Exceptions and warnings raised by iresnet.

Every error a user can trigger with bad input derives from ``ValueError`` (bad data, configs,
checkpoints) or ``RuntimeError`` (a numerical procedure that did not succeed), so generic
handlers keep working, while the CLI can catch :class:`IResNetError` and print one line.
"""

from __future__ import annotations

__all__ = [
    "IResNetError",
    "DataError",
    "ConfigError",
    "CheckpointError",
    "InverseNotConvergedError",
    "InverseNotConvergedWarning",
]


class IResNetError(Exception):
    """Base class of every error iresnet raises on purpose (the CLI prints these in one line)."""


class DataError(IResNetError, ValueError):
    """A data file or tensor is missing, malformed or holds values the model cannot take."""


class ConfigError(IResNetError, ValueError):
    """A configuration has an unknown key, a wrong type or an out-of-range value."""


class CheckpointError(IResNetError, ValueError):
    """A checkpoint is missing, torn, foreign to this model, or not a safe (pickle-free) file."""


class InverseNotConvergedError(IResNetError, RuntimeError):
    """The fixed-point inverse did not reach its tolerance within ``max_iter`` iterations."""


class InverseNotConvergedWarning(RuntimeWarning):
    """Warned (instead of raised) when an inverse did not converge and ``on_failure='warn'``."""
