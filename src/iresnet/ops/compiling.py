"""The ``torch.compile`` settings under which the estimators' compiled graphs pay.

Traced by ``torch.compile``, the Russian roulette draws its number of terms and its probes inside
the graph and runs its random tail in a ``while_loop`` (no graph break, one graph for every draw;
see ``RussianRouletteLogDet``), and the memory-efficient backward (an ``autograd.Function`` that
does not trace) gives way to a carrier of the same gradient formed in the forward pass
(``iresnet.ops.logdet``): ``g(x)`` keeps its graph, ``J v`` none. Two of inductor's defaults then
cost more than they save on CPU (measured in ``benchmarks/compile.py``): its own random-number
kernels (per-element Philox, several milliseconds for one probe of an image batch where ATen's takes
a fraction of one) and its switch of convolutions to channels-last (layout copies around every
convolution of the few-channel branches). [`compile_options`][iresnet.ops.compiling.compile_options]
turns both off; ATen's generators also make a compiled step draw the same numbers as the eager one
for the same seed.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["compile_options"]


def compile_options(device: torch.device | str = "cpu") -> dict[str, Any]:
    """Inductor options for compiling a training step of a residual flow.

    ``fallback_random``: random draws (the roulette's ``N``, the probes) by ATen's generators,
    so a compiled step draws what the eager one would for the same seed, at ATen's speed; on a
    CPU also ``layout_optimization=False``: convolutions keep their contiguous layout.

    Args:
        device: where the step runs.

    Returns:
        The ``options`` of ``torch.compile``.

    Examples:
        >>> import torch
        >>> step = torch.compile(lambda x: x.sin(), options=compile_options("cpu"))
        >>> sorted(compile_options("cpu"))
        ['fallback_random', 'layout_optimization']
    """
    options: dict[str, Any] = {"fallback_random": True}
    if torch.device(device).type == "cpu":
        options["layout_optimization"] = False
    return options
