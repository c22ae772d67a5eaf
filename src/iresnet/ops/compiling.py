"""The ``torch.compile`` settings under which the estimators' compiled graphs pay.

Traced by ``torch.compile``, the Russian roulette draws its number of terms and its probes inside
the graph and runs its random tail in a ``while_loop`` (no graph break, one graph for every draw;
see ``RussianRouletteLogDet``), and the memory-efficient backward (an ``autograd.Function`` that
does not trace) gives way to a carrier of the same gradient formed in the forward pass
(``iresnet.ops.logdet``): ``g(x)`` keeps its graph, ``J v`` none. Two of inductor's defaults then
cost more than they save on CPU (measured in ``benchmarks/compile.py``): its own random-number
kernels (per-element Philox, several milliseconds for one probe of an image batch where ATen's takes
a fraction of one) and its own switch of convolutions to channels-last (it added layout copies
around every convolution of the few-channel branches; the spectral convolutions now choose their
layout themselves, ``iresnet.nn.conv_layout``, and the switch neither helps nor hurts them).
[`compile_options`][iresnet.ops.compiling.compile_options] turns both off; ATen's generators also
make a compiled step draw the same numbers as the eager one for the same seed. A fresh flow's first
call is best left eager
([`compile_after_first_call`][iresnet.ops.compiling.compile_after_first_call]).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["compile_after_first_call", "compile_options"]


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


class _EagerFirst:
    """``fn`` for the first call, its compiled form for the others."""

    def __init__(self, fn: Callable[..., Any], compiled: Callable[..., Any]) -> None:
        self.fn, self.compiled, self.primed = fn, compiled, False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not self.primed:
            out = self.fn(*args, **kwargs)
            self.primed = True  # after a first call that succeeded
            return out
        return self.compiled(*args, **kwargs)


def compile_after_first_call(
    fn: Callable[..., Any],
    device: torch.device | str = "cpu",
    *,
    backend: str | Callable[..., Any] = "inductor",
    eager_first: bool = True,
) -> Callable[..., Any]:
    """``fn`` itself for its first call, then ``torch.compile(fn)`` with
    [`compile_options`][iresnet.ops.compiling.compile_options]: how ``train.compile=true``
    compiles a training loss.

    A fresh flow's first call sets up what depends on the data, with host reads: ActNorm's
    data-dependent initialisation, the convolutions' power-iteration vectors for the input
    size (converged once, with a tolerance). Traced, every such read is a graph break, and the
    graphs compiled around them stay in use for every later call (their guards still hold):
    a convolutional flow's step then ran as about 40 graphs instead of one. Called eagerly
    first, the setup happens as in an eager run (same numbers, same random draws), and the
    compiler sees the steady state: one graph.

    Args:
        fn: the loss (a function or a module).
        device: where it runs (for inductor's options).
        backend: ``torch.compile``'s backend; the options go to inductor only.
        eager_first: False for a model restored from a checkpoint of a compiled run (its
            set-up is done): compiled from the first call, as the uninterrupted run's steps
            were after its first, so it resumes bit for bit.

    Returns:
        A callable with ``fn``'s signature (not a module: train or evaluate ``fn`` itself);
        with ``eager_first``, its first successful call runs ``fn`` eagerly.

    Examples:
        >>> import torch
        >>> loss = compile_after_first_call(lambda x: x.sin().sum())
        >>> float(loss(torch.zeros(3)))  # the first call runs eagerly
        0.0
    """
    options = compile_options(device) if backend == "inductor" else None
    compiled = torch.compile(fn, backend=backend, options=options)
    if not eager_first:
        return compiled  # type: ignore[no-any-return]
    return _EagerFirst(fn, compiled)
