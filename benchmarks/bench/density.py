"""Log-densities of trained flows evaluated in chunks without a graph (exact log-dets for our
2-D flows), and their scores against the truth."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

import iresnet

from .stats import mean_se

LogDensity = Callable[[Tensor], Tensor]
EVAL_CHUNK = 4096


def chunked(fn: LogDensity, chunk: int = EVAL_CHUNK) -> LogDensity:
    """``x -> fn`` applied to float32 chunks of ``x`` without a graph, concatenated."""

    def apply(x: Tensor) -> Tensor:
        with torch.no_grad():
            return torch.cat([fn(part).detach() for part in torch.split(x.float(), chunk)])

    return apply


def exact_log_density(model: nn.Module, dim: int, chunk: int = EVAL_CHUNK) -> LogDensity:
    """``x -> log q(x)`` of a flow (in its input's units: with its preprocessing, the data's),
    with exact ``dim x dim`` log-dets in every block."""
    apply = chunked(model.log_prob, chunk)

    def log_q(x: Tensor) -> Tensor:
        with iresnet.swap_logdets(model, iresnet.ExactLogDet(max_dim=dim)):
            return apply(x)

    return log_q


def scores(logq: Tensor, test_x: Tensor, truth: LogDensity | None) -> dict[str, Any]:
    """Test NLL +- SE of ``log q`` on ``test_x`` and, where the true log-density is known, the
    paired estimate of ``KL(p || q) = E_p[log p - log q]`` +- SE (``None`` otherwise)."""
    logq = logq.double()
    nll, nll_se = mean_se(-logq)
    out: dict[str, Any] = {
        "test_nll": nll,
        "test_nll_se": nll_se,
        "nonfinite_test_points": int((~torch.isfinite(logq)).sum()),
    }
    if truth is not None:
        out["kl"], out["kl_se"] = mean_se(truth(test_x.double()) - logq)
    else:
        out["kl"] = out["kl_se"] = None
    return out
