"""The one function that turns a config into modules: ``build_model``.

Each ``model.kind`` is a library family; this module only translates config fields into the
family's keyword arguments (and the data's shape and preprocessing), so a checkpoint's saved
config always rebuilds the same architecture.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any

from torch import nn

from ..classifiers import HybridClassifier, InvertibleClassifier
from ..datasets import DataBundle, Standardizer, load_dataset
from ..errors import ConfigError
from ..flows import MultiscaleResidualFlow, ResidualFlow
from ..nn import CLipSwish, CPila, LipELU, LipSwish
from ..ops import (
    ExactLogDet,
    FixedPointInverse,
    LogDetEstimator,
    PowerSeriesLogDet,
    RussianRouletteLogDet,
    StratifiedRouletteLogDet,
)
from .config import Config, DataConfig, ModelConfig

__all__ = [
    "EXACT_MAX_DIM",
    "FAMILY_ARGS",
    "build_inverse",
    "build_logdet",
    "build_model",
    "load_data",
    "squeezes_first",
]

#: The largest dimension trained with the exact log-det (a full Jacobian per block and step).
EXACT_MAX_DIM = 256

#: Family keyword argument -> the config key that sets it (for error messages).
FAMILY_ARGS = {
    "scales": "model.n_scales",
    "blocks": "model.n_blocks",
    "transforms": "model.n_blocks",
    "head_pool": "model.head_pool",
    "squeeze_first": "model.init_squeeze",
    "hidden_channels": "model.hidden",
    "hidden_features": "model.hidden",
    "fc_blocks": "model.fc_blocks",
    "base": "model.base",
    "coeff": "model.coeff",
    "branch": "model.branch",
    "block": "model.block",
    "growth": "model.dense_growth",
    "dense_coeff": "model.dense_coeff",
}


def load_data(
    cfg: DataConfig,
    standardizer: Standardizer | None = None,
    context_standardizer: Standardizer | None = None,
) -> DataBundle:
    """The data named by the config's data section (see ``iresnet.datasets.load_dataset``).

    ``standardizer``, ``context_standardizer``: statistics saved by the run (a resumed or
    evaluated run keeps the units it was trained in).
    """
    return load_dataset(
        cfg.name,
        path=cfg.path,
        data_dir=cfg.data_dir,
        n_train=cfg.n_train,
        n_test=cfg.n_test,
        test_fraction=cfg.test_fraction,
        seed=cfg.seed,
        standardizer=standardizer,
        dequantize=cfg.dequantize,
        index_column=cfg.index_column,
        context_path=cfg.context_path,
        context_standardizer=context_standardizer,
        class_context=cfg.class_context,
        train_subset=cfg.train_subset,
        max_dim=cfg.max_dim,
    )


def build_logdet(cfg: ModelConfig, dim: int) -> LogDetEstimator:
    """The log-det estimator named by ``cfg.logdet`` with its settings, for blocks of ``dim``.

    ``roulette-auto`` and ``stratified-auto`` leave ``p`` and ``n_exact`` to the family, which
    chooses them from each block's bound; a validated config holds no other ``roulette_p`` or
    ``n_exact`` beside them ([`ModelConfig.validate`][iresnet.app.config.ModelConfig.validate]).
    """
    if cfg.logdet == "exact":
        if dim > EXACT_MAX_DIM:
            raise ConfigError(
                f"model.logdet=exact on {dim} dimensions takes {dim} Jacobian-vector products "
                f"per block and step (minutes a step on a CPU); use model.logdet=roulette "
                f"(unbiased, Residual Flows) or model.logdet=series, which `iresnet evaluate` "
                f"scores with an unbiased estimator anyway"
            )
        return ExactLogDet(max_dim=EXACT_MAX_DIM)
    if cfg.logdet == "series":
        return PowerSeriesLogDet(
            n_terms=cfg.n_terms,
            n_probes=cfg.n_probes,
            probe=cfg.probe,  # type: ignore[arg-type]
            neumann_gradient=cfg.neumann_gradient,
            memory_efficient=cfg.memory_efficient,
        )
    if cfg.logdet in ("stratified", "stratified-auto"):
        auto = cfg.logdet == "stratified-auto"  # the tail's law: chosen by the family per block
        return StratifiedRouletteLogDet(
            head_terms=cfg.head_terms,
            head_probes=cfg.head_probes,
            p=None if auto else cfg.roulette_p,
            n_exact=None if auto else cfg.n_exact,
            auto=auto,
            n_probes=cfg.n_probes,
            probe=cfg.probe,  # type: ignore[arg-type]
            neumann_gradient=cfg.neumann_gradient,
            memory_efficient=cfg.memory_efficient,
        )
    auto = cfg.logdet == "roulette-auto"  # p and n_exact: chosen by the family per block
    return RussianRouletteLogDet(
        p=None if auto else cfg.roulette_p,
        n_exact=None if auto else cfg.n_exact,
        auto=auto,
        n_probes=cfg.n_probes,
        probe=cfg.probe,  # type: ignore[arg-type]
        neumann_gradient=cfg.neumann_gradient,
        memory_efficient=cfg.memory_efficient,
    )


def build_inverse(cfg: ModelConfig) -> FixedPointInverse:
    """The fixed-point solver with the config's tolerances."""
    return FixedPointInverse(
        atol=cfg.inverse_atol,
        rtol=cfg.inverse_rtol,
        max_iter=cfg.inverse_max_iter,
        anderson=cfg.anderson,
    )


def squeezes_first(kind: str, shape: tuple[int, ...], n_scales: int, init_squeeze: bool) -> bool:
    """Whether an image flow squeezes before its first scale.

    Always with ``model.init_squeeze``; for the i-ResNet kind also where the input has room for
    the initial squeeze and all ``S - 1`` later ones with at least 4x4 pixels left (the paper
    code's ``init_ds=2``): CIFAR-10 (32x32, 3 scales) yes, MNIST (28x28, 3 scales) no (the
    paper's code padded MNIST to 32x32, which our protocol does not), digits (8x8, 2 scales) no.
    """
    if init_squeeze:
        return True
    _, h, w = shape
    k = 2**n_scales
    return kind == "iresnet-image" and h % k == 0 and w % k == 0 and min(h, w) // k >= 4


def _common(cfg: ModelConfig) -> dict[str, Any]:
    norm = cfg.lipschitz_norm if cfg.constrained else "none"
    if cfg.activation == "lipswish":
        act: Any = functools.partial(LipSwish, cfg.lipswish_beta)
    elif cfg.activation == "clipswish":
        act = functools.partial(CLipSwish, cfg.lipswish_beta)
    elif cfg.activation == "cpila":
        act = CPila
    else:
        act = LipELU
    return {
        "coeff": cfg.coeff,
        "norm": norm,
        "activation": act,
        "n_power_iterations": cfg.n_power_iterations,
        "inverse": build_inverse(cfg),
    }


def build_model(cfg: Config, data: DataBundle) -> nn.Module:
    """The network for ``cfg.model.kind`` on ``data``'s shape.

    Args:
        cfg: the config (the model section, and ``data.logit_alpha`` for images).
        data: the data it will see (shape, levels of images, statistics of user arrays).

    Raises:
        ConfigError: the kind does not fit the data, or the family refuses a setting (the
            message names the config key).
    """
    shape = tuple(int(s) for s in data.event_shape)
    try:
        return _build(cfg.model, data, shape, cfg.data.logit_alpha)
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(_config_words(str(exc))) from None


def _config_words(message: str) -> str:
    keys = {FAMILY_ARGS[a] for a in re.findall(r"\b(\w+)=", message) if a in FAMILY_ARGS}
    hint = f" (config: {', '.join(sorted(keys))})" if keys else ""
    return f"cannot build the model: {message}{hint}"


def _branch(cfg: ModelConfig) -> dict[str, Any]:
    """The flows' branch and block keywords (the classifiers have plain residual blocks only)."""
    return {
        "branch": cfg.branch,
        "block": cfg.block,
        "dense_growth": cfg.dense_growth,
        "dense_depth": cfg.dense_depth,
        "dense_coeff": cfg.dense_coeff,
    }


def _build(cfg: ModelConfig, data: DataBundle, shape: tuple[int, ...], alpha: float) -> nn.Module:
    common = _common(cfg)
    dim = math.prod(shape)
    hidden = (cfg.hidden,) * (cfg.n_layers - 1)
    context = data.context_dim
    if context and cfg.kind in ("classifier", "hybrid"):
        raise ConfigError(
            f"model.kind={cfg.kind} takes no context; drop data.class_context / --context"
        )
    if cfg.kind == "toy":
        if len(shape) != 1:
            raise ConfigError(
                f"model.kind=toy needs vector data, got shape {shape}; use an image model kind"
            )
        std = data.standardizer
        cstd = data.context_standardizer
        conditional: dict[str, Any] = {}
        if context:
            conditional = {
                "context": context,
                "context_features": (cfg.hidden,),
                "context_standardize": (cstd.mean, cstd.std) if cstd is not None else None,
            }
        return ResidualFlow(
            shape[0],
            transforms=cfg.n_blocks,
            hidden_features=hidden,
            logdet=build_logdet(cfg, dim),
            actnorm=cfg.actnorm,
            standardize=(std.mean, std.std) if std is not None else None,
            **conditional,
            **_branch(cfg),
            **common,
        )
    if len(shape) != 3:
        raise ConfigError(f"model.kind={cfg.kind} needs images (C, H, W), got shape {shape}")
    levels = data.n_levels
    if cfg.kind in ("iresnet-image", "resflow-image"):
        return MultiscaleResidualFlow(
            shape,
            scales=cfg.n_scales,
            blocks=cfg.n_blocks,
            hidden_channels=hidden,
            logdet=build_logdet(cfg, dim),
            actnorm=cfg.actnorm,
            squeeze_first=squeezes_first(cfg.kind, shape, cfg.n_scales, cfg.init_squeeze),
            factor_out=cfg.factor_out,
            fc_blocks=cfg.fc_blocks,
            fc_hidden_features=(cfg.fc_hidden,) * (cfg.n_layers - 1),
            levels=levels,
            logit_alpha=alpha,
            context=context,
            context_features=(cfg.fc_hidden,),
            dequantization=cfg.dequantization,
            dequant_hidden=cfg.dequant_hidden,
            dequant_steps=cfg.dequant_steps,
            base=cfg.base,
            **_branch(cfg),
            **common,
        )
    stages = {
        "scales": cfg.n_scales,
        "blocks": cfg.n_blocks,
        "hidden_channels": cfg.hidden,
        "actnorm": cfg.actnorm,
        "squeeze_first": cfg.init_squeeze,
    }
    if cfg.kind == "classifier":
        return InvertibleClassifier(
            shape, cfg.n_classes, head_pool=cfg.head_pool, **stages, **common
        )
    return HybridClassifier(
        shape,
        cfg.n_classes,
        logdet=build_logdet(cfg, dim),
        levels=levels,
        logit_alpha=alpha,
        **stages,
        **common,
    )
