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


def exact_layer_norms(g: nn.Module) -> list[float]:
    """Exact operator norm of every normalised layer of ``g`` (float64 SVD; a convolution as the
    dense matrix on the input shape it has seen), in module order."""
    out = []
    with torch.no_grad():
        for m in g.modules():
            if isinstance(m, iresnet.SpectralLinear):
                w = m.normalized_weight().double()
                out.append(float(torch.linalg.matrix_norm(w, ord=2)))
            elif isinstance(m, iresnet.SpectralConv2d):
                w = m.normalized_weight().double()
                cin, h, wd = m.v.shape[1:]
                d = cin * h * wd
                basis = torch.eye(d, dtype=torch.float64).reshape(d, cin, h, wd)
                cols = torch.nn.functional.conv2d(basis, w, None, m.stride, m.padding)
                out.append(float(torch.linalg.matrix_norm(cols.reshape(d, -1), ord=2)))
    return out
