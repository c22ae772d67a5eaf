"""Input checks that name the mistake in one line, with the fix, before torch fails deep inside.

They read only tensor metadata (type, shape, dtype, device) and never synchronise with the
device; the NaN/Inf check, which must read values, is separate
([`check_finite`][iresnet.checks.check_finite]).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from .errors import DataError

__all__ = ["check_tensor", "check_input", "check_size", "check_finite", "module_dtype_device"]


def module_dtype_device(module: nn.Module) -> tuple[torch.dtype, torch.device] | None:
    """The dtype and device of ``module``'s first floating parameter or buffer (None if it has
    none)."""
    # The order of ``parameters()`` then ``buffers()`` (modules in pre-order), without building
    # their names: every layer's forward asks, so this is on the hot path.
    for kind in ("_parameters", "_buffers"):
        for m in _preorder(module):
            for t in getattr(m, kind).values():
                if t is not None and t.is_floating_point():
                    return t.dtype, t.device
    return None


def _preorder(module: nn.Module) -> Iterator[nn.Module]:
    yield module
    for child in module._modules.values():
        if child is not None:
            yield from _preorder(child)


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def check_tensor(x: object, where: str) -> None:
    """Raise one ``TypeError`` naming ``torch.as_tensor`` if ``x`` is not a tensor (a list or
    an array would otherwise fail deep inside, on ``.shape`` or ``.dtype``)."""
    if not isinstance(x, Tensor):
        raise TypeError(
            f"{where}: expected a torch.Tensor, got {type(x).__name__}; convert it with "
            "torch.as_tensor(x, dtype=torch.float32)"
        )


def check_input(
    x: object,
    where: str,
    *,
    like: nn.Module | None = None,
    event_shape: Sequence[int] | None = None,
    integers: bool = False,
    any_float: bool = False,
) -> None:
    """Raise one clear error if ``x`` cannot go into a module.

    Args:
        x: the input.
        where: the entry point, for the message (e.g. ``"Flow.log_prob"``).
        like: the module ``x`` goes into: its dtype and device must match ``x``'s.
        event_shape: the expected shape after the batch dimensions (``x`` is
            ``(*batch, *event_shape)``).
        integers: integer (and boolean-free) inputs are accepted (a transform that turns
            levels into floats comes first).
        any_float: floating inputs of any precision are accepted (they are converted first).

    Raises:
        TypeError: ``x`` is not a tensor.
        DataError: a wrong shape, dtype or device; the message says how to fix it.

    Examples:
        >>> check_input(torch.zeros(3, 2), "f", like=torch.nn.Linear(2, 2), event_shape=(2,))
        >>> check_input(torch.zeros(3, 2).double(), "f", like=torch.nn.Linear(2, 2))
        ... # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        iresnet.errors.DataError: f: got float64, the module is float32: call x.float() or ...
    """
    check_tensor(x, where)
    if event_shape is not None:
        event = tuple(int(s) for s in event_shape)
        n = len(event)
        if x.dim() == n and tuple(x.shape) == event:
            raise DataError(
                f"{where}: got one sample of shape {tuple(x.shape)} without a batch dimension; "
                f"pass x.unsqueeze(0) (shape {(1, *event)})"
            )
        if x.dim() < n + 1 or tuple(x.shape[x.dim() - n :]) != event:
            want = ", ".join(map(str, event))
            raise DataError(
                f"{where}: expected a tensor of shape (*batch, {want}), got {tuple(x.shape)}"
            )
    if x.dim() == 0 or x.numel() == 0:
        raise DataError(
            f"{where}: got an empty batch (shape {tuple(x.shape)}); pass at least one sample"
        )
    if x.dtype == torch.bool or x.is_complex():
        raise DataError(f"{where}: got a {_name(x.dtype)} tensor; pass real numbers")
    ref = module_dtype_device(like) if like is not None else None
    if ref is None:
        return
    dtype, device = ref
    if x.device != device:
        raise DataError(
            f"{where}: the input is on {x.device}, the module on {device}: call "
            f"x.to('{device}') or module.to('{x.device}')"
        )
    if not x.is_floating_point():
        if not integers:
            raise DataError(
                f"{where}: got an integer tensor ({_name(x.dtype)}) where real values are "
                f"expected: call x.to({_name(dtype)!r}) (images of integer levels: a "
                "MultiscaleResidualFlow or HybridClassifier built with levels=K dequantises them)"
            )
        return
    # Under autocast, half-precision activations meet float32 weights by design.
    if x.dtype != dtype and not any_float and not torch.is_autocast_enabled(x.device.type):
        method = {torch.float32: "float()", torch.float64: "double()", torch.float16: "half()"}
        to_x = method.get(dtype, f"to(torch.{_name(dtype)})")
        to_m = method.get(x.dtype, f"to(torch.{_name(x.dtype)})")
        raise DataError(
            f"{where}: got {_name(x.dtype)}, the module is {_name(dtype)}: call x.{to_x} or "
            f"module.{to_m}"
        )


def check_size(x: Tensor, where: str, dim: int, size: int, what: str) -> None:
    """Raise one clear ``DataError`` unless ``x`` has ``size`` entries along ``dim`` (e.g. a
    layer's input features or channels)."""
    if x.dim() <= max(dim, -dim - 1) or x.shape[dim] != size:
        raise DataError(
            f"{where}: expected {size} {what} (dimension {dim}), got a tensor of shape "
            f"{tuple(x.shape)}"
        )


def check_finite(x: Tensor, where: str) -> None:
    """Raise ``DataError`` naming ``where`` and the first offending sample if ``x`` holds NaN or
    Inf (one host synchronisation; integer tensors pass).

    Examples:
        >>> check_finite(torch.tensor([[1.0], [float("nan")]]), "f")
        Traceback (most recent call last):
        ...
        iresnet.errors.DataError: f: input contains NaN (first non-finite sample: index 1)
    """
    if not x.is_floating_point() or torch.compiler.is_compiling():
        return  # inside torch.compile the host read would break the graph: checked eagerly
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = (~finite).reshape(x.shape[0], -1).any(1) if x.dim() > 0 else ~finite
        idx = int(bad.nonzero()[0, 0]) if x.dim() > 0 else 0
        kind = "NaN" if bool(torch.isnan(x).any()) else "Inf"
        raise DataError(f"{where}: input contains {kind} (first non-finite sample: index {idx})")
