"""Residual branches for the micro-benchmarks: weights pushed onto their constraint, and the
exact operator norms of their layers (independent of the library's power iteration)."""

from __future__ import annotations

import torch
from torch import nn

import iresnet


def scale_raw_weights(g: nn.Module, factor: float) -> nn.Module:
    """Multiply every raw linear/conv weight by ``factor`` (in place): far above ``c``, the
    normalisation then divides each layer down to exactly its coefficient."""
    with torch.no_grad():
        for m in g.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                m.weight.mul_(factor)
    return g


def exact_layer_norms(g: nn.Module, grad_mode: bool = False) -> list[float]:
    """Exact operator norm of every normalised layer of ``g`` (float64 SVD; a convolution as the
    dense matrix on the input shape it has seen, a 1x1 one without stride or padding as its
    ``C_out x C_in`` matrix), in module order.

    ``grad_mode``: the normalised weight as the layer builds it with autograd on (as in training
    and inside a log-det estimator) instead of without (as in an inverse or a certificate); the
    two differ for ``norm="certified"`` convolutions, which divide by a different bound."""
    out = []
    for m in g.modules():
        if not isinstance(m, (iresnet.SpectralLinear, iresnet.SpectralConv2d)):
            continue
        with torch.set_grad_enabled(grad_mode):
            w = m.normalized_weight()
        with torch.no_grad():
            w = w.detach().double()
            if isinstance(m, iresnet.SpectralLinear):
                out.append(float(torch.linalg.matrix_norm(w, ord=2)))
            elif w.shape[-2:] == (1, 1) and m.stride == (1, 1) and m.padding == (0, 0):
                # W at every pixel: the operator's norm is the matrix's (no dense operator).
                out.append(float(torch.linalg.matrix_norm(w.flatten(1), ord=2)))
            else:
                cin, h, wd = m.v.shape[1:]
                d = cin * h * wd
                basis = torch.eye(d, dtype=torch.float64).reshape(d, cin, h, wd)
                cols = torch.nn.functional.conv2d(basis, w, None, m.stride, m.padding)
                out.append(float(torch.linalg.matrix_norm(cols.reshape(d, -1), ord=2)))
    return out
