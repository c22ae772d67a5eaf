"""One context manager for the library's temporary switches (frozen normalisation, swapped
log-det estimators, uniform dequantisation): set an attribute on every submodule of a kind,
and give each its own value back on exit, also after an error."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from torch import nn

__all__ = ["temporarily_set"]


@contextlib.contextmanager
def temporarily_set(
    model: nn.Module, kind: type | tuple[type, ...], name: str, value: Any
) -> Iterator[list[nn.Module]]:
    """Within the block, every submodule of ``model`` (itself included) that is a ``kind`` has
    its attribute ``name`` set to ``value``.

    Args:
        model: any module.
        kind: the class (or classes) of the submodules to switch.
        name: the attribute.
        value: its value inside the block.

    Yields:
        The switched submodules.

    Examples:
        >>> net = nn.Sequential(nn.Dropout(0.5), nn.Linear(2, 2))
        >>> with temporarily_set(net, nn.Dropout, "p", 0.0):
        ...     net[0].p
        0.0
        >>> net[0].p
        0.5
    """
    targets = [m for m in model.modules() if isinstance(m, kind)]
    saved = [getattr(m, name) for m in targets]
    for m in targets:
        setattr(m, name, value)
    try:
        yield targets
    finally:
        for m, previous in zip(targets, saved, strict=True):
            setattr(m, name, previous)
