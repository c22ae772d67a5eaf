"""Multi-scale image flows: the i-ResNet density model and the Residual Flow.

Both map an image ``x`` of shape ``(C, H, W)`` -- already dequantised and logit-transformed by
the task -- to a latent ``z`` through residual blocks ``y = x + g(x)`` with ``Lip(g) < 1``, so
``log p(x) = log N(z; 0, I) + sum_blocks log det(I + J_g) + sum_actnorms H W sum(s)``.

**Skeleton** (both kinds; ``S = n_scales``, ``n = n_blocks``)::

    [Squeeze]? -> ActNorm -> { [g-block -> ActNorm] x n -> Squeeze -> [factor-out]? } x (S-1)
               -> [g-block -> ActNorm] x n -> [Flatten -> (fc-block -> ActNorm) x fc_blocks]?

(ActNorm only with ``actnorm``.) This is Residual Flows' order (Chen et al. 2019, app. E:
ActNorm first, then after every block); it equals i-ResNet's "ActNorm before every block"
(Behrmann et al. 2019, sec. 5) plus one ActNorm closing each scale, so factored-out latents and
the final latent are normalised too.

**Residual branch** of a convolutional block on ``c`` channels, ``h = hidden``::

    g = [act ->] conv3x3(c, h) -> act -> conv1x1(h, h) -> act -> conv3x3(h, c)

(``n_layers`` convolutions: 3x3 at both ends, 1x1 between.) The leading activation is the
pre-activation both papers' code use on every block but the first of the flow. Each convolution
is spectrally normalised on its input shape (``Lip <= coeff``) unless ``constrained=False``.

**The two kinds.** ``kind`` itself decides only the default of the initial squeeze
(``model.init_squeeze=true`` forces it for either kind); every other choice is a config field,
and the presets set each paper's values:

- ``iresnet-image`` (i-ResNet sec. 5): ELU, truncated power series (``logdet=series``,
  ``n_terms=5``, one probe), ``c = 0.9``, factor-out. The paper's code squeezes once before the
  first scale (``init_ds=2``); we do so only when the input has room for all ``S - 1`` later
  squeezes with at least 4x4 pixels left: CIFAR-10 (32x32, 3 scales) yes, 12x16x16 -> 48x8x8
  -> 192x4x4; MNIST (28x28, 3 scales) no, 28 -> 14 -> 7 (the paper's code padded MNIST to
  3x32x32, which our pinned protocol forbids); digits (8x8, 2 scales) no, 8 -> 4.
- ``resflow-image`` (Residual Flows): LipSwish, Russian roulette with 2 exact terms, Neumann
  gradient, memory-efficient backward, ``c = 0.98``; no initial squeeze (as the paper's MNIST and
  CIFAR-10 runs); ``fc_blocks`` fully connected residual blocks on the flattened final tensor
  (``mlp_branch(cfg, D', fc_hidden)``; the paper uses 4 of width 128).

**Factor-out** (``factor_out=True``, Real NVP sec. 3.6): after each squeeze but the last scale's,
half of the channels go straight to the latent. The state then becomes one flat tensor
``[active | factored-out latents]`` (see :class:`~iresnet.layers.OnActive`); factoring out is the
identity on it, so the log-det is unchanged, and the latent is ``(B, C H W)``. Without factor-out
and fc blocks the latent keeps its image shape ``(C 4^k, H / 2^k, W / 2^k)``.
"""

from __future__ import annotations

import math

from torch import nn

from .config import ModelConfig
from .errors import ConfigError
from .flow import Flow
from .layers import ActNorm, Flatten, InvertibleResidualBlock, OnActive, Squeeze
from .models import activation, build_inverse, build_logdet, conv, mlp_branch

__all__ = ["build_image_flow", "conv_branch", "image_presets", "squeezes_first"]

Shape = tuple[int, ...]


def conv_branch(cfg: ModelConfig, channels: int, *, preact: bool) -> nn.Sequential:
    """The residual branch ``g: (B, c, H, W) -> (B, c, H, W)`` (3x3 -> [1x1 ->] ... -> 3x3).

    ``cfg.n_layers`` convolutions with ``cfg.hidden`` channels between them, activations between
    layers, and one before the first layer when ``preact``.
    """
    kernels = [3, *([1] * (cfg.n_layers - 2)), 3]
    sizes = [channels, *([cfg.hidden] * (cfg.n_layers - 1)), channels]
    layers: list[nn.Module] = [activation(cfg)] if preact else []
    for i, (k, c_in, c_out) in enumerate(zip(kernels, sizes[:-1], sizes[1:], strict=True)):
        if i > 0:
            layers.append(activation(cfg))
        layers.append(conv(cfg, c_in, c_out, k))
    return nn.Sequential(*layers)


def squeezes_first(kind: str, shape: Shape, n_scales: int, init_squeeze: bool = False) -> bool:
    """Whether the flow squeezes before its first scale: always with ``model.init_squeeze``,
    else for the i-ResNet kind where there is room (see the module docstring)."""
    if init_squeeze:
        return True
    _, h, w = shape
    k = 2**n_scales  # the initial squeeze plus S - 1 between scales
    return kind == "iresnet-image" and h % k == 0 and w % k == 0 and min(h, w) // k >= 4


class _Builder:
    """Appends transforms while tracking the active shape and whether the state is flat."""

    def __init__(self, cfg: ModelConfig, shape: Shape) -> None:
        self.cfg = cfg
        self.shape: Shape = shape
        self.total = math.prod(shape)
        self.flat = False
        self.transforms: list[nn.Module] = []
        self.n_blocks = 0

    def add(self, t: nn.Module, out_shape: Shape | None = None) -> None:
        out = self.shape if out_shape is None else out_shape
        if self.flat and self.shape != (self.total,):
            t = OnActive(t, self.shape, out)
        self.transforms.append(t)
        self.shape = out

    def flatten(self) -> None:
        if not self.flat:
            self.transforms.append(Flatten(self.shape))
            self.flat = True

    def actnorm(self) -> None:
        if self.cfg.actnorm:
            self.add(ActNorm(self.shape[0]))

    def block(self, g: nn.Module) -> None:
        dim = math.prod(self.shape)
        self.add(InvertibleResidualBlock(g, logdet=build_logdet(self.cfg, max_dim=dim),
                                         inverse=build_inverse(self.cfg)))
        self.n_blocks += 1

    def squeeze(self) -> None:
        c, h, w = self.shape
        self.add(Squeeze(2), (4 * c, h // 2, w // 2))

    def factor_out(self) -> None:
        """Keep the first ``c/2`` channels active; the last ``c/2`` stay in place in the flat
        state, which makes them part of the latent (a relabelling: no transform, no log-det)."""
        self.flatten()
        c, h, w = self.shape
        self.shape = (c // 2, h, w)

    def flatten_active(self) -> int:
        """View the active tensor as a vector (its entries lead the flat state, channel-major)."""
        self.flatten()
        self.shape = (math.prod(self.shape),)
        return self.shape[0]


def _check(cfg: ModelConfig, shape: Shape) -> None:
    if len(shape) != 3:
        raise ConfigError(f"model.kind={cfg.kind} needs images (C, H, W), got shape {shape}")
    _, h, w = shape
    n_squeezes = cfg.n_scales - 1 + int(cfg.init_squeeze)
    k = 2**n_squeezes
    if h % k or w % k:
        extra = " (one of them model.init_squeeze)" if cfg.init_squeeze else ""
        raise ConfigError(
            f"model.n_scales={cfg.n_scales} squeezes {n_squeezes} time(s){extra}, so H and W "
            f"must be divisible by {k}; got {h}x{w}. Lower model.n_scales."
        )


def build_image_flow(cfg: ModelConfig, shape: tuple[int, int, int]) -> Flow:
    """The multi-scale image flow for ``cfg.kind`` (see the module docstring).

    Args:
        cfg: the model config (``kind`` ``iresnet-image`` or ``resflow-image``).
        shape: ``(C, H, W)`` of one (preprocessed) image.

    Returns:
        A :class:`~iresnet.Flow` with ``event_shape = shape``; latent ``(B, C', H', W')``, or
        ``(B, C H W)`` with factor-out or fc blocks.
    """
    if cfg.kind not in ("iresnet-image", "resflow-image"):
        raise ConfigError(f"image flows are iresnet-image or resflow-image, not {cfg.kind!r}")
    shape = tuple(int(s) for s in shape)  # type: ignore[assignment]
    _check(cfg, shape)
    b = _Builder(cfg, shape)
    if squeezes_first(cfg.kind, shape, cfg.n_scales, cfg.init_squeeze):
        b.squeeze()
    b.actnorm()
    for scale in range(cfg.n_scales):
        for _ in range(cfg.n_blocks):
            b.block(conv_branch(cfg, b.shape[0], preact=b.n_blocks > 0))
            b.actnorm()
        if scale < cfg.n_scales - 1:
            b.squeeze()
            if cfg.factor_out:
                b.factor_out()
    if cfg.fc_blocks > 0:
        dim = b.flatten_active()
        for _ in range(cfg.fc_blocks):
            b.block(mlp_branch(cfg, dim, cfg.fc_hidden))
            b.actnorm()
    return Flow(b.transforms, event_shape=shape)


# ------------------------------------------------------------------------------------ presets
_IRESNET = {"kind": "iresnet-image", "activation": "elu", "coeff": 0.9, "logdet": "series",
            "n_terms": 5, "n_probes": 1, "actnorm": True}
_RESFLOW = {"kind": "resflow-image", "activation": "lipswish", "coeff": 0.98, "logdet": "roulette",
            "n_exact": 2, "roulette_p": 0.5, "n_probes": 1, "neumann_gradient": True,
            "memory_efficient": True, "actnorm": True}
#: CPU presets: ``max_seconds`` caps training at 19 minutes; ``steps`` is what the measured speed
#: fits in it (so the cosine schedule normally completes before the cap).
_CPU_TRAIN = {"batch_size": 64, "lr": 1e-3, "lr_schedule": "cosine", "warmup_steps": 100,
              "max_seconds": 1140.0, "eval_every": 500, "eval_batches": 1,
              "checkpoint_every": 500, "log_every": 10}
#: GPU presets: the papers' optimisation, with Adam (i-ResNet used Adamax, not offered here).
_GPU_TRAIN = {"lr": 1e-3, "lr_schedule": "constant", "ema_decay": 0.999, "eval_every": 2000,
              "checkpoint_every": 2000, "eval_batches": 10}


def _preset(description: str, model: dict, data: dict, train: dict) -> tuple[str, dict]:
    return description, {"model": model, "data": data, "train": train}


def image_presets() -> dict[str, tuple[str, dict]]:
    """Preset name -> (one-line description, overrides of ``Config()``: model, data, train).

    ``digits``, ``mnist``, ``fashion-mnist``, ``cifar10``: Residual Flows sized for 2 CPU cores
    and at most 20 minutes of training (the kind that measured better on digits; the i-ResNet
    kind is an override away). ``*-paper``: the papers' architectures for a GPU.
    """
    small8 = {**_RESFLOW, "n_scales": 2, "n_blocks": 4, "hidden": 32, "fc_blocks": 0}
    small = {**_RESFLOW, "n_scales": 3, "n_blocks": 2, "hidden": 32, "fc_blocks": 0}
    # 28x28: squeeze first (4x14x14, then 16x7x7), 3 blocks per scale, Adam lr 3e-3. Measured
    # on Fashion-MNIST at 600 CPU s each (one thread, quiet machine), test bits/dim: the
    # unsqueezed 3 scales x 2 blocks at lr 1e-3 ~0.85 CPU s/step; squeezed at lr 1e-3 4.93
    # (1 508 steps, ~0.33 CPU s/step); squeezed at lr 3e-3 4.20 (1 451 steps); lr 1e-2 was no
    # better than 3e-3 by step 600 and noisier.
    small28 = {**_RESFLOW, "n_scales": 2, "n_blocks": 3, "hidden": 32, "fc_blocks": 0,
               "init_squeeze": True}
    train28 = {**_CPU_TRAIN, "steps": 3000, "lr": 3e-3}
    # i-ResNet: 16-16-16 blocks x 512, multi-scale with splits (its code's `-multiScale`), 5 power
    # iterations per step. Residual Flows: 16-16-16 x 512, 4 fc blocks x 128, no factor-out in
    # its MNIST / CIFAR-10 runs (its README commands; factor-out was for ImageNet-64 / CelebA).
    ires = {**_IRESNET, "n_scales": 3, "n_blocks": 16, "hidden": 512, "factor_out": True,
            "n_power_iterations": 5}
    resf = {**_RESFLOW, "n_scales": 3, "n_blocks": 16, "hidden": 512, "factor_out": False,
            "fc_blocks": 4, "fc_hidden": 128, "n_power_iterations": 5}
    cpu = "2 CPU cores, <= 20 min: Residual Flow"
    return {
        "digits": _preset(f"8x8 digits, {cpu}, 2 scales x 4 blocks x 32 channels", small8,
                          {"name": "digits"}, {**_CPU_TRAIN, "steps": 5000}),
        "mnist": _preset(f"MNIST 28x28, {cpu}, squeezed, 2 scales x 3 blocks x 32 channels",
                         small28, {"name": "mnist"}, train28),
        "fashion-mnist": _preset(
            f"Fashion-MNIST 28x28, {cpu}, squeezed, 2 scales x 3 blocks x 32 channels", small28,
            {"name": "fashion-mnist"}, train28),
        "cifar10": _preset(f"CIFAR-10 32x32, {cpu}, 3 scales x 2 blocks x 32 channels", small,
                           {"name": "cifar10"}, {**_CPU_TRAIN, "steps": 800}),
        "mnist-paper": _preset(
            "i-ResNet (Behrmann et al. 2019) on MNIST, GPU: 3 scales x 16 blocks x 512 channels",
            ires, {"name": "mnist", "logit_alpha": 0.0},
            {**_GPU_TRAIN, "batch_size": 128, "warmup_steps": 469, "steps": 93_800}),
        "cifar10-paper": _preset(
            "i-ResNet (Behrmann et al. 2019) on CIFAR-10, GPU: 3 scales x 16 blocks x 512 channels",
            ires, {"name": "cifar10", "logit_alpha": 0.0},
            {**_GPU_TRAIN, "batch_size": 128, "warmup_steps": 391, "steps": 78_200}),
        "mnist-resflow-paper": _preset(
            "Residual Flow (Chen et al. 2019) on MNIST, GPU: 16-16-16 blocks x 512, 4 fc x 128",
            resf, {"name": "mnist", "logit_alpha": 1e-6},
            {**_GPU_TRAIN, "batch_size": 64, "warmup_steps": 1000, "steps": 94_000}),
        "cifar10-resflow-paper": _preset(
            "Residual Flow (Chen et al. 2019) on CIFAR-10, GPU: 16-16-16 blocks x 512, 4 fc x 128",
            resf, {"name": "cifar10", "logit_alpha": 0.05},
            {**_GPU_TRAIN, "batch_size": 64, "warmup_steps": 1000, "steps": 200_000}),
    }
