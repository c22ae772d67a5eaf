"""Invertible classifiers (i-ResNet sec. 4) and hybrid density-classification models.

**Classifier** (Behrmann et al. 2019, sec. 4 and their ``conv_iResNet``): an image
``x`` of shape ``(B, C, H, W)`` is zero-padded to ``P >= C`` channels (injective: the padding is
dropped again on inversion), then passes ``n_scales`` stages of ``n_blocks`` residual blocks
``y = x + g(x)`` each, with an invertible down-sampling :class:`~iresnet.layers.Squeeze`
(``(C, H, W) -> (4C, H/2, W/2)``) before every stage but the first. The pre-pooling features
``f = F(x)`` are therefore an injective map of ``x``; the head is ``ActNorm -> ReLU -> average
pooling to a k x k grid -> Linear`` on ``f`` (``k = model.head_pool``; ``k = 1`` is the paper's
global pooling; the paper uses BatchNorm; see :class:`ClassifierHead`).
The residual branch of stage ``s`` (width ``w_s = hidden * 2^s``) is the paper's bottleneck

    ``g(x) = W_3 * act(W_2 * act(W_1 * act(x)))``   (3x3 conv, 1x1 conv, 3x3 conv),

without the leading activation in the network's first block. With every ``W_i`` spectrally
normalised to ``||W_i||_2 <= c < 1`` (``model.constrained=true``), ``Lip(g) <= c^3 < 1`` and every
block is invertible by the Banach fixed point ``x <- y - g(x)`` (i-ResNet Thm. 1);
``model.constrained=false`` builds the same network with plain convolutions ("vanilla": no
inverse is guaranteed). ``P = max(C, hidden // 2)`` (the paper pads CIFAR's 3 channels by 13 to
16 with ``hidden = 32``). With ``model.init_squeeze=true`` the input is
squeezed once before the padding (the paper code's ``init_ds=2``), which makes the first stage
four times cheaper on 28x28 images.

**Hybrid** (Nalisnick et al. 2019, "Hybrid models with deep invertible features"; Residual
Flows sec. 6): the same feature network *without* padding is a bijection ``z = F(x)``, so

    ``log p(x) = log N(z; 0, I) + sum_blocks log det(I + J_g) + sum_actnorm logdet``

and a linear model on the flattened ``z`` classifies it (Nalisnick et al.'s generalised linear
model); the training loss weights the two (see :mod:`iresnet.train.classify`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import Config, ModelConfig, replace
from .errors import ConfigError
from .inverse import InverseDiagnostics
from .layers import ActNorm, InvertibleResidualBlock, Squeeze
from .logdet import LogDetEstimator
from .models import activation, build_inverse, build_logdet, conv

__all__ = [
    "NoLogDet",
    "InjectivePad",
    "InvertibleFeatures",
    "IResNetClassifier",
    "HybridClassifier",
    "ClassifierHead",
    "LinearHead",
    "build_classifier",
    "padded_channels",
    "classifier_presets",
    "classifier_config",
]

_LOG_2PI = math.log(2 * math.pi)


class NoLogDet(LogDetEstimator):
    """Skips the log-determinant: ``(g(x), 0)``. For pure classifiers, which never need it."""

    def __call__(self, g: Any, x: Tensor) -> tuple[Tensor, Tensor]:
        return g(x), x.new_zeros(x.shape[0])

    def __repr__(self) -> str:
        return "NoLogDet()"


class InjectivePad(nn.Module):
    """Zero-padding of channels ``(B, C, H, W) -> (B, P, H, W)``, ``y = [x, 0]``.

    Injective, not surjective: :meth:`inverse` keeps the first ``C`` channels (the exact left
    inverse on the image of the map), so it has no log-determinant and cannot carry a density.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(f"cannot pad {in_channels} channels down to {out_channels}")
        self.in_channels, self.out_channels = in_channels, out_channels

    def forward(self, x: Tensor) -> Tensor:
        extra = self.out_channels - self.in_channels
        if extra == 0:
            return x
        zeros = x.new_zeros(x.shape[0], extra, *x.shape[2:])
        return torch.cat([x, zeros], dim=1)

    def inverse(self, y: Tensor) -> Tensor:
        return y[:, : self.in_channels]


def residual_branch(cfg: ModelConfig, channels: int, width: int, input_act: bool) -> nn.Sequential:
    """``g``: ``[act] -> conv3x3 (C -> width) -> act -> conv1x1 -> act -> conv3x3 (width -> C)``.

    Shapes: ``(B, channels, H, W) -> (B, channels, H, W)``. Lipschitz bound: the product of the
    three convolutions' operator norms (activations are 1-Lipschitz).
    """
    layers: list[nn.Module] = [activation(cfg)] if input_act else []
    layers += [conv(cfg, channels, width, 3), activation(cfg), conv(cfg, width, width, 1),
               activation(cfg), conv(cfg, width, channels, 3)]
    return nn.Sequential(*layers)


class InvertibleFeatures(nn.Module):
    """The invertible part: stages of ``[ActNorm,] InvertibleResidualBlock``, squeezes between.

    Every element follows the transform contract (``forward(x) -> (y, logdet)``, ``inverse``).

    Arguments:
        cfg: the model config (``n_scales``, ``n_blocks``, ``hidden``, ``actnorm``, ...).
        shape: ``(C, H, W)`` of the input (after any padding).
        logdet: the blocks' log-det estimator (:class:`NoLogDet` for classifiers).

    Shapes: ``(B, C, H, W) -> (B, C 4^(S-1), H / 2^(S-1), W / 2^(S-1))`` with ``S = n_scales``.
    """

    def __init__(self, cfg: ModelConfig, shape: tuple[int, int, int],
                 logdet: LogDetEstimator) -> None:
        super().__init__()
        c, h, w = shape
        shrink = 2 ** (cfg.n_scales - 1)
        if h % shrink or w % shrink:
            raise ConfigError(
                f"model.n_scales={cfg.n_scales} squeezes {cfg.n_scales - 1} times, which needs "
                f"H and W divisible by {shrink}; got {h}x{w} (lower model.n_scales)"
            )
        transforms: list[nn.Module] = []
        for s in range(cfg.n_scales):
            if s > 0:
                transforms.append(Squeeze(2))
                c, h, w = c * 4, h // 2, w // 2
            width = cfg.hidden * 2**s
            for i in range(cfg.n_blocks):
                if cfg.actnorm:
                    transforms.append(ActNorm(c))
                g = residual_branch(cfg, c, width, input_act=(s, i) != (0, 0))
                transforms.append(InvertibleResidualBlock(g, logdet=logdet,
                                                          inverse=build_inverse(cfg)))
        self.transforms = nn.ModuleList(transforms)
        self.out_shape = (c, h, w)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x (B, C, H, W) -> (f (B, *out_shape), logdet (B,))``."""
        logdet = x.new_zeros(x.shape[0])
        for t in self.transforms:
            x, ld = t(x)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, f: Tensor) -> Tensor:
        """Invert every transform in reverse order (fixed-point iteration in the blocks)."""
        for t in reversed(self.transforms):
            f = t.inverse(f)
        return f

    @property
    def inverse_diagnostics(self) -> list[InverseDiagnostics]:
        """Every block's diagnostics of its last inverse solve, in forward order."""
        return [d for t in self.transforms if (d := getattr(t, "last_inverse_diagnostics", None))]


class ClassifierHead(nn.Module):
    """``ActNorm -> ReLU -> average pool -> Linear``: ``(B, C, H, W) -> (B, K)``.

    ``grid = 1`` pools globally (the paper's head); ``grid = k`` averages over a ``k x k`` grid of
    (adaptive) windows and the linear layer reads all ``C k^2`` pooled values.
    The paper normalises with BatchNorm; a data-initialised affine (:class:`ActNorm`) keeps no
    running statistics, so the loop's EMA weights are never paired with another model's batch
    statistics (which made EMA evaluations of short runs much worse than the live model).
    """

    def __init__(self, channels: int, n_classes: int, grid: int = 1) -> None:
        super().__init__()
        if grid < 1:
            raise ValueError(f"grid must be a positive integer, got {grid}")
        self.grid = grid
        self.norm = ActNorm(channels)
        self.linear = nn.Linear(channels * grid * grid, n_classes)

    def forward(self, f: Tensor) -> Tensor:
        # grid 1 is the global average; one adaptive pool covers every grid size.
        return self.linear(F.adaptive_avg_pool2d(torch.relu(self.norm(f)[0]), self.grid).flatten(1))


class LinearHead(nn.Module):
    """``Linear`` on the flattened features (a generalised linear model on ``z``, as in Nalisnick
    et al. 2019): ``(B, C, H, W) -> (B, K)``. Used by the hybrid, whose unpadded features are too
    few channels for pooling to keep the class information."""

    def __init__(self, shape: tuple[int, int, int], n_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(int(math.prod(shape)), n_classes)

    def forward(self, f: Tensor) -> Tensor:
        return self.linear(f.flatten(1))


class IResNetClassifier(nn.Module):
    """i-ResNet classifier: injective padding, invertible features, pooled linear head.

    Arguments:
        cfg: model config (``kind="classifier"``); shape: ``(C, H, W)`` of the images.

    Methods (``x``: ``(B, C, H, W)``, ``f``: ``(B, *feature_shape)``):
        ``forward(x) -> logits (B, n_classes)``; ``features(x) -> f``;
        ``invert_features(f) -> x`` (blocks inverted by fixed-point iteration in reverse order,
        squeezes undone, padding dropped); ``inverse_diagnostics`` after an inversion.
    """

    def __init__(self, cfg: ModelConfig, shape: tuple[int, int, int], *, pad: bool = True,
                 logdet: LogDetEstimator | None = None) -> None:
        super().__init__()
        c, h, w = shape
        self.in_shape = tuple(shape)
        self.constrained = cfg.constrained
        self.squeeze = Squeeze(2) if cfg.init_squeeze else None
        if self.squeeze is not None:
            if h % 2 or w % 2:
                raise ConfigError(f"model.init_squeeze needs even H and W, got {h}x{w}")
            c, h, w = 4 * c, h // 2, w // 2
        self.pad = InjectivePad(c, padded_channels(cfg, c) if pad else c)
        self.net = InvertibleFeatures(cfg, (self.pad.out_channels, h, w), logdet or NoLogDet())
        self.feature_shape = self.net.out_shape
        if cfg.head_pool > min(self.feature_shape[1:]):
            raise ConfigError(f"model.head_pool={cfg.head_pool} exceeds the feature grid "
                              f"{self.feature_shape[1]}x{self.feature_shape[2]}")
        self.head = ClassifierHead(self.feature_shape[0], cfg.n_classes, cfg.head_pool)

    def _enter(self, x: Tensor) -> Tensor:
        return self.squeeze(x)[0] if self.squeeze is not None else x

    def _leave(self, x: Tensor) -> Tensor:
        return self.squeeze.inverse(x) if self.squeeze is not None else x

    def features(self, x: Tensor) -> Tensor:
        """Pre-pooling features ``f = F(pad(x))``, shape ``(B, *feature_shape)``."""
        return self.net(self.pad(self._enter(x)))[0]

    def forward(self, x: Tensor) -> Tensor:
        """Logits, shape ``(B, n_classes)``."""
        return self.head(self.features(x))

    def invert_features(self, f: Tensor) -> Tensor:
        """``x = pad^{-1}(F^{-1}(f))``; read :attr:`inverse_diagnostics` afterwards.

        Warns :class:`~iresnet.errors.InverseNotConvergedWarning` where a block's iteration did
        not converge (always possible for the unconstrained model, whose ``Lip(g)`` is unbounded).
        """
        return self._leave(self.pad.inverse(self.net.inverse(f)))

    @property
    def inverse_diagnostics(self) -> list[InverseDiagnostics]:
        return self.net.inverse_diagnostics


class HybridClassifier(IResNetClassifier):
    """One bijective feature network ``z = F(x)`` with a density and a classifier head.

    ``log p(x) = log N(z; 0, I) + log|det dF/dx|`` (no padding: ``F`` must be a bijection), the
    blocks' log-dets estimated by ``model.logdet`` (exact, series or roulette);
    ``p(y | x) = softmax(W vec(z) + b)`` (:class:`LinearHead`).

    Methods: ``forward(x) -> logits``; ``forward(x, return_log_prob=True) -> (logits, log p(x))``
    from one pass (so a DDP-wrapped model trains both terms); ``log_prob(x) -> (B,)`` nats.
    """

    def __init__(self, cfg: ModelConfig, shape: tuple[int, int, int]) -> None:
        dim = int(math.prod(shape))
        super().__init__(cfg, shape, pad=False, logdet=build_logdet(cfg, max_dim=max(256, dim)))
        self.head = LinearHead(self.feature_shape, cfg.n_classes)

    @staticmethod
    def base_log_prob(z: Tensor) -> Tensor:
        """``log N(z; 0, I) = -(|z|^2 + D log 2 pi) / 2``, shape ``(B,)``."""
        return -0.5 * (z.pow(2).flatten(1).sum(1) + z[0].numel() * _LOG_2PI)

    def forward(self, x: Tensor, return_log_prob: bool = False) -> Any:  # type: ignore[override]
        z, logdet = self.net(self._enter(x))
        logits = self.head(z)
        if return_log_prob:
            return logits, self.base_log_prob(z) + logdet
        return logits

    def log_prob(self, x: Tensor) -> Tensor:
        """``log p(x)`` in nats, shape ``(B,)``."""
        z, logdet = self.net(self._enter(x))
        return self.base_log_prob(z) + logdet


def padded_channels(cfg: ModelConfig, channels: int) -> int:
    """Channels after the injective padding: ``max(C, hidden // 2)``."""
    return max(channels, cfg.hidden // 2)


def build_classifier(cfg: ModelConfig, shape: tuple[int, ...]) -> nn.Module:
    """The model for ``cfg.kind`` in ``("classifier", "hybrid")`` on images of ``shape``."""
    if len(shape) != 3:
        raise ConfigError(f"model.kind={cfg.kind} needs images (C, H, W), got shape {shape}")
    c, h, w = (int(s) for s in shape)
    if cfg.kind == "classifier":
        return IResNetClassifier(cfg, (c, h, w))
    if cfg.kind == "hybrid":
        return HybridClassifier(cfg, (c, h, w))
    raise ConfigError(f"build_classifier: model.kind must be classifier or hybrid, got {cfg.kind}")


# ------------------------------------------------------------------------------------- presets
_CPU_TRAIN = {"optimizer": "adam", "lr": 2e-3, "warmup_steps": 50, "lr_schedule": "cosine",
              "grad_clip": 10.0, "ema_decay": 0.99, "log_every": 10, "eval_batches": 4,
              "threads": 1}
_CPU_MODEL = {"kind": "classifier", "coeff": 0.9, "constrained": True, "activation": "elu",
              "actnorm": True, "n_power_iterations": 1}
# Behrmann et al. (2019), appendix / scripts/classify_cifar.sh of their code: 3 stages of 7
# blocks, bottleneck widths 32/64/128, strides 1/2/2, injective padding to 16 channels, ELU,
# c = 0.9, one power iteration, SGD (momentum 0.9, lr 0.1, weight decay 5e-4), batch 128,
# 200 epochs with step decay (we use cosine decay instead).
_PAPER_MODEL = {"kind": "classifier", "coeff": 0.9, "constrained": True, "n_scales": 3,
                "n_blocks": 7, "hidden": 32, "activation": "elu", "actnorm": True,
                "n_power_iterations": 1}
_PAPER_TRAIN = {"optimizer": "sgd", "lr": 0.1, "weight_decay": 5e-4, "batch_size": 128,
                "warmup_steps": 500, "lr_schedule": "cosine", "ema_decay": 0.0,
                "eval_every": 2000, "checkpoint_every": 2000, "eval_batches": 10,
                "device": "cuda"}
_EPOCH_STEPS = {"mnist": 60_000 // 128, "fashion-mnist": 60_000 // 128, "cifar10": 50_000 // 128}


def classifier_presets() -> dict[str, tuple[str, dict[str, dict[str, Any]]]]:
    """Preset name -> (description, overrides ``{"model": ..., "data": ..., "train": ...}``).

    The overrides apply on top of ``Config()``. CPU presets (``c = 0.9``) train in a few
    minutes on 2 cores; ``*-classifier-paper`` are the paper's sizes (for a GPU).
    """
    out: dict[str, tuple[str, dict[str, dict[str, Any]]]] = {}

    def cpu(name: str, data: str, desc: str, model: dict[str, Any], train: dict[str, Any]) -> None:
        out[name] = (desc, {"model": {**_CPU_MODEL, **model}, "data": {"name": data},
                            "train": {**_CPU_TRAIN, **train}})

    # Step times measured with the real loop on 2 busy shared cores, 1 torch thread: digits
    # ~0.2 s/step, 28x28 ~0.5 s/step (CIFAR-10 not measured: its files are not on this machine).
    cpu("digits-classifier", "digits", "i-ResNet classifier on 8x8 digits, c=0.9 (CPU: ~2 min)",
        {"n_scales": 2, "n_blocks": 2, "hidden": 16},
        {"steps": 600, "batch_size": 64, "eval_every": 200, "checkpoint_every": 200})
    # 28x28: one initial squeeze (-> 4x14x14), injective padding to 16 channels as in the paper
    # (hidden 32), then 2 stages (14x14x16, 7x7x64). Measured on Fashion-MNIST at 600 steps
    # (~0.13 CPU s/step): the old 3-stage hidden-8 preset (padding to only 4 channels) gave
    # c=0.9 26.0% vs vanilla 16.6% at 400 steps; this one 21.9% vs 13.8%. Neither hidden 64, 4
    # blocks per stage, lr 2e-3 / 1e-2, AdamW (decoupled decay 0.1: 22.65%) nor a branch bound of
    # c (coeff 0.9^(1/3) per conv: 21.20%) closed the c=0.9 gap at this budget. The head did:
    # global pooling of the near-identity features of a Lipschitz-bounded network discards where
    # things are, which vanilla's unbounded branches can still encode in channels. Reading the
    # pooled 7x7 grid (head_pool=7: 1x1 windows; the same head for both models) gave at 600
    # steps: vanilla 12.10% vs c=0.9 12.50% (2x2 grid: 11.60 vs 16.45; 3x3: 11.25 vs 13.65).
    for data in ("mnist", "fashion-mnist"):
        cpu(f"{data}-classifier", data, f"i-ResNet classifier on {data}, c=0.9 (CPU: ~2 min)",
            {"n_scales": 2, "n_blocks": 2, "hidden": 32, "init_squeeze": True, "head_pool": 7},
            {"steps": 600, "batch_size": 64, "lr": 5e-3, "eval_every": 250,
             "checkpoint_every": 250})
    cpu("cifar10-classifier", "cifar10", "i-ResNet classifier on CIFAR-10, c=0.9 (CPU: long)",
        {"n_scales": 3, "n_blocks": 2, "hidden": 16},
        {"steps": 1000, "batch_size": 64, "lr": 5e-3, "eval_every": 250,
         "checkpoint_every": 250})
    for data in ("mnist", "fashion-mnist", "cifar10"):
        epochs = 200
        out[f"{data}-classifier-paper"] = (
            f"the paper's i-ResNet classifier on {data} (3x7 blocks, 200 epochs; GPU)",
            {"model": dict(_PAPER_MODEL), "data": {"name": data},
             "train": {**_PAPER_TRAIN, "steps": epochs * _EPOCH_STEPS[data]}},
        )
    # Unbiased Russian-roulette log-dets with the Neumann gradient (Residual Flows): on digits
    # ~8x cheaper per step than exact ones (the evaluation still uses exact log-dets, D = 64).
    hybrid = {"kind": "hybrid", "activation": "elu", "logdet": "roulette", "n_exact": 2,
              "neumann_gradient": True, "memory_efficient": True, "n_scales": 2,
              "n_blocks": 2, "hidden": 16}
    out["digits-hybrid"] = (
        "hybrid density + classifier on 8x8 digits (roulette log-dets; CPU: ~3 min)",
        {"model": {**_CPU_MODEL, **hybrid}, "data": {"name": "digits", "logit_alpha": 0.05},
         "train": {**_CPU_TRAIN, "steps": 600, "batch_size": 64, "eval_every": 200,
                   "checkpoint_every": 200, "density_weight": 1.0}},
    )
    return out


def classifier_config(name: str) -> Config:
    """A fresh :class:`~iresnet.config.Config` of the classifier preset ``name``."""
    presets = classifier_presets()
    if name not in presets:
        raise ConfigError(f"unknown classifier preset '{name}'; known: {sorted(presets)}")
    return replace(Config(preset=name), **presets[name][1])
