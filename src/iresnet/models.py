"""Model builders: every network is built from a :class:`~iresnet.config.ModelConfig`.

The presets (:mod:`iresnet.presets`) only choose config values; this module turns them into
modules, so a checkpoint's saved config always rebuilds the same architecture.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .activations import LipELU, LipSwish
from .config import ModelConfig
from .data import DataBundle
from .errors import ConfigError
from .flow import Flow
from .inverse import FixedPointInverse
from .layers import ActNorm, InvertibleResidualBlock
from .lipschitz import SpectralConv2d, SpectralLinear
from .logdet import ExactLogDet, LogDetEstimator, PowerSeriesLogDet, RussianRouletteLogDet

__all__ = ["build_logdet", "build_inverse", "linear", "conv", "activation", "mlp_branch", "build_toy_flow", "build_model", "spectral_penalty"]


# config name -> layer option: "penalty" keeps the power iteration but does not rescale
_NORMS = {"spectral": "spectral", "frobenius": "frobenius", "penalty": "none"}


def spectral_penalty(model: nn.Module) -> Tensor:
    """``sum ||W||_2^2`` over the layers that estimate their norm (seed eq. (11))."""
    terms = [m.spectral_penalty() for m in model.modules() if isinstance(m, (SpectralLinear, SpectralConv2d))]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def build_logdet(cfg: ModelConfig, max_dim: int = 256) -> LogDetEstimator:
    """The log-det estimator named by ``cfg.logdet`` with its settings."""
    if cfg.logdet == "exact":
        return ExactLogDet(max_dim=max_dim)
    if cfg.logdet == "series":
        return PowerSeriesLogDet(
            n_terms=cfg.n_terms, n_probes=cfg.n_probes, probe=cfg.probe,  # type: ignore[arg-type]
            neumann_gradient=cfg.neumann_gradient, memory_efficient=cfg.memory_efficient,
        )
    return RussianRouletteLogDet(
        p=cfg.roulette_p, n_exact=cfg.n_exact, n_probes=cfg.n_probes, probe=cfg.probe,  # type: ignore[arg-type]
        neumann_gradient=cfg.neumann_gradient, memory_efficient=cfg.memory_efficient,
    )


def build_inverse(cfg: ModelConfig) -> FixedPointInverse:
    return FixedPointInverse(atol=cfg.inverse_atol, rtol=cfg.inverse_rtol, max_iter=cfg.inverse_max_iter,
                             anderson=cfg.anderson)


def linear(cfg: ModelConfig, n_in: int, n_out: int) -> nn.Module:
    """A spectrally normalised linear layer, or a plain one for the unconstrained variant."""
    if not cfg.constrained:
        return nn.Linear(n_in, n_out)
    return SpectralLinear(n_in, n_out, coeff=cfg.coeff, n_power_iterations=cfg.n_power_iterations,
                          norm=_NORMS[cfg.lipschitz_norm])


def conv(cfg: ModelConfig, c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Module:
    """A 'same'-padded convolution, spectrally normalised on its input shape when constrained."""
    pad = kernel // 2
    if not cfg.constrained:
        return nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=pad)
    return SpectralConv2d(c_in, c_out, kernel, stride=stride, padding=pad, coeff=cfg.coeff,
                          n_power_iterations=cfg.n_power_iterations, norm=_NORMS[cfg.lipschitz_norm])


def activation(cfg: ModelConfig) -> nn.Module:
    return LipSwish(cfg.lipswish_beta) if cfg.activation == "lipswish" else LipELU()


def mlp_branch(cfg: ModelConfig, dim: int, hidden: int | None = None) -> nn.Sequential:
    """``g``: ``dim -> hidden -> ... -> dim`` with ``cfg.n_layers`` linear layers."""
    width = hidden or cfg.hidden
    sizes: Sequence[int] = [dim, *([width] * (cfg.n_layers - 1)), dim]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        if i > 0:
            layers.append(activation(cfg))
        layers.append(linear(cfg, a, b))
    return nn.Sequential(*layers)


def residual_block(cfg: ModelConfig, g: nn.Module, dim: int) -> InvertibleResidualBlock:
    return InvertibleResidualBlock(g, logdet=build_logdet(cfg, max_dim=max(256, dim)), inverse=build_inverse(cfg))


def build_toy_flow(cfg: ModelConfig, dim: int) -> Flow:
    """MLP i-ResNet / Residual Flow on vectors: ``[ActNorm, block] x n_blocks`` (+ final ActNorm)."""
    transforms: list[nn.Module] = []
    for _ in range(cfg.n_blocks):
        if cfg.actnorm:
            transforms.append(ActNorm(dim))
        transforms.append(residual_block(cfg, mlp_branch(cfg, dim), dim))
    if cfg.actnorm:
        transforms.append(ActNorm(dim))
    return Flow(transforms, event_shape=(dim,))


def build_model(cfg: ModelConfig, data: DataBundle) -> nn.Module:
    """The network for ``cfg.kind`` on ``data``'s shape."""
    shape = data.event_shape
    if cfg.kind == "toy":
        if len(shape) != 1:
            raise ConfigError(f"model.kind=toy needs vector data, got shape {shape}; use an image model kind")
        return build_toy_flow(cfg, shape[0])
    if cfg.kind in ("iresnet-image", "resflow-image"):
        from .image_models import build_image_flow

        return build_image_flow(cfg, shape)
    from .classifiers import build_classifier

    return build_classifier(cfg, shape)
