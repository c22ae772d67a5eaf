"""Invertible classifiers (i-ResNet sec. 5.1) and hybrid density-classification models.

**Classifier** (i-ResNet's classification experiments, sec. 5.1, and their code's
``conv_iResNet``): an image ``x`` of shape ``(B, C, H, W)`` is optionally squeezed once,
zero-padded to ``P >= C`` channels (injective: the padding is dropped again on inversion), then
passes ``scales`` stages of ``blocks`` residual blocks ``y = x + g(x)`` each, with an invertible
down-sampling [`Squeeze`][iresnet.transforms.reshape.Squeeze]
(``(C, H, W) -> (4C, H/2, W/2)``) before every stage but the first. The pre-pooling features
``f = F(x)`` are therefore an injective map of ``x``; the head is
``ActNorm -> ReLU -> average pooling to a k x k grid -> Linear`` (``k = head_pool``; ``k = 1``
is the paper's global pooling; the paper uses BatchNorm; see
[`ClassifierHead`][iresnet.classifiers.ClassifierHead]). The residual branch of stage ``s``
(width ``w_s = hidden_channels * 2^s``) is the paper's bottleneck (sec. 2.1)

    g(x) = W_3 * act(W_2 * act(W_1 * act(x)))    (3x3 conv, 1x1 conv, 3x3 conv),

without the leading activation in the network's first block. With every ``W_i`` spectrally
normalised to ``||W_i||_2 <= c < 1``, ``Lip(g) <= c^3 < 1`` and every block is invertible by the
Banach fixed point ``x <- y - g(x)`` (i-ResNet Theorem 1); ``norm="none"`` builds the same
network with plain convolutions ("vanilla": no inverse is guaranteed).

**Hybrid** (Nalisnick et al.; Residual Flows sec. 5, hybrid modeling): the same feature network
*without* padding is a bijection ``z = F(x)``, so

    log p(x) = log N(z; 0, I) + log|det dF/dx|

(preprocessing log-dets included), and a linear model on the flattened ``z`` classifies it.

References:
    - Behrmann et al., "Invertible Residual Networks", ICML 2019, arXiv:1811.00995.
    - Chen et al., "Residual Flows for Invertible Generative Modeling", NeurIPS 2019,
      arXiv:1906.02735.
    - Nalisnick et al., "Hybrid Models with Deep and Invertible Features", ICML 2019,
      arXiv:1902.02767.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checks import check_input
from .flows.flow import StandardNormal
from .flows.multiscale import check_image_shape
from .nn import conv_branch, design_bound_of
from .nn.branches import Activation
from .ops import FixedPointInverse, LogDetEstimator, logdet_estimator
from .transforms import (
    ActNorm,
    ComposedTransform,
    Dequantize,
    InjectivePad,
    InvertibleResidualBlock,
    Logit,
    Squeeze,
    Transform,
)
from .transforms.base import InverseReport

__all__ = ["ClassifierHead", "HybridClassifier", "InvertibleClassifier", "LinearHead"]


def _stages(
    shape: tuple[int, int, int],
    *,
    scales: int,
    blocks: int,
    hidden_channels: int,
    logdet: str | LogDetEstimator,
    inverse: FixedPointInverse,
    actnorm: bool,
    branch: dict[str, Any],
) -> list[Transform]:
    """``scales`` stages of ``[ActNorm,] block`` x ``blocks``, a squeeze before all but the
    first; stage ``s`` has branch width ``hidden_channels * 2^s``. Each block's estimator is
    bound to its branch's Lipschitz bound, as the flows' are (``"roulette-auto"`` chooses from
    it; a fixed roulette of infinite variance warns)."""
    c = shape[0]
    dim = math.prod(shape)  # squeezes keep it
    out: list[Transform] = []
    for s in range(scales):
        if s > 0:
            out.append(Squeeze(2))
            c *= 4
        width = hidden_channels * 2**s
        for i in range(blocks):
            if actnorm:
                out.append(ActNorm(c))
            g = conv_branch(c, (width, width), preact=(s, i) != (0, 0), **branch)
            est = logdet_estimator(logdet, dim, lipschitz=design_bound_of(g))
            out.append(InvertibleResidualBlock(g, logdet=est, inverse=inverse))
    return out


class ClassifierHead(nn.Module):
    """``ActNorm -> ReLU -> average pool -> Linear``: ``(B, C, H, W) -> (B, K)``.

    ``grid = 1`` pools globally (the paper's head); ``grid = k`` averages over a ``k x k`` grid of
    (adaptive) windows and the linear layer reads all ``C k^2`` pooled values.
    The paper normalises with BatchNorm; a data-initialised affine
    ([`ActNorm`][iresnet.transforms.actnorm.ActNorm]) keeps no running statistics, so the loop's
    EMA weights are never paired with another model's batch statistics (which made EMA
    evaluations of short runs much worse than the live model).

    Arguments:
        channels: feature channels ``C``.
        n_classes: classes ``K``.
        grid: the pooling grid ``k``.

    Shapes:
        Features ``(B, C, H, W)`` with ``H, W >= grid``; logits ``(B, K)``.

    Raises:
        ValueError: ``grid < 1``.
        TypeError: at call time, features that are not a tensor.
        DataError: at call time, features of the wrong dtype or device, or without ``C``
            channels.

    References:
        - Behrmann et al., "Invertible Residual Networks", arXiv:1811.00995, sec. 5.1.

    Examples:
        >>> import torch
        >>> ClassifierHead(4, 10, grid=2)(torch.randn(3, 4, 5, 5)).shape
        torch.Size([3, 10])
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
        pooled = F.adaptive_avg_pool2d(torch.relu(self.norm(f)[0]), self.grid)
        return self.linear(pooled.flatten(1))


class LinearHead(nn.Module):
    """``Linear`` on the flattened features: ``(B, C, H, W) -> (B, K)``.

    A generalised linear model on ``z``, as in Nalisnick et al. (arXiv:1902.02767). Used by the
    hybrid, whose unpadded features are too few channels for pooling to keep the class
    information.

    Arguments:
        shape: ``(C, H, W)`` of the features.
        n_classes: classes ``K``.

    Shapes:
        Features ``(B, C, H, W)``; logits ``(B, K)``.

    References:
        - Nalisnick et al., "Hybrid Models with Deep and Invertible Features",
          arXiv:1902.02767.
    """

    def __init__(self, shape: tuple[int, int, int], n_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(int(math.prod(shape)), n_classes)

    def forward(self, f: Tensor) -> Tensor:
        return self.linear(f.flatten(1))


class _InvertibleNetwork(nn.Module):
    """An invertible trunk ``f = F(x)`` and a head on ``f``; see the module docstring."""

    trunk: ComposedTransform
    head: nn.Module

    def _build_trunk(
        self,
        entry: list[Transform],
        shape: tuple[int, int, int],
        stage_options: dict[str, Any],
    ) -> None:
        c, h, w = shape
        transforms = list(entry)
        for t in transforms:
            c, h, w = t.forward_shape((c, h, w))
        transforms += _stages((c, h, w), **stage_options)
        self.trunk = ComposedTransform(*transforms)
        self.in_shape = tuple(shape)
        self.feature_shape = self.trunk.forward_shape(self.in_shape)

    def _trunk(self, x: Tensor, where: str) -> tuple[Tensor, Tensor]:
        first = self.trunk[0]
        check_input(
            x,
            f"{type(self).__name__}.{where}",
            like=self.trunk,
            event_shape=self.in_shape,
            integers=first.accepts_integers,
            any_float=first.accepts_any_float,
        )
        return self.trunk(x)

    def features(self, x: Tensor) -> Tensor:
        """Features ``f = F(x)`` of images ``x`` ``(B, C, H, W)``, shape ``(B, *feature_shape)``.

        Raises:
            TypeError: ``x`` is not a tensor.
            DataError: a wrong shape, dtype or device (the message says how to fix it).
        """
        return self._trunk(x, "features")[0]

    def forward(self, x: Tensor) -> Tensor:
        """Logits of images ``x`` ``(B, C, H, W)``, shape ``(B, classes)``."""
        return self.head(self.features(x))

    def invert_features(self, f: Tensor) -> Tensor:
        """``x = F^{-1}(f)``, shape ``(B, C, H, W)`` (a left inverse where the trunk pads).

        Blocks are inverted by fixed-point iteration in reverse order, squeezes undone, padding
        dropped. Warns ``InverseNotConvergedWarning`` where a block's iteration did not converge
        (always possible for the unconstrained network, whose ``Lip(g)`` is unbounded).

        Args:
            f: features ``(B, *feature_shape)``.

        Raises:
            TypeError: ``f`` is not a tensor.
            DataError: a wrong shape, dtype or device (the message says how to fix it).
            InverseNotConvergedError: a block's solve missed its tolerance and its solver has
                ``on_failure="raise"``.
        """
        return self.invert_features_with_diagnostics(f)[0]

    def invert_features_with_diagnostics(self, f: Tensor) -> tuple[Tensor, InverseReport]:
        """``invert_features(f)`` and the [`InverseReport`][iresnet.transforms.base.InverseReport]
        of every block's solve, data side first."""
        check_input(
            f,
            f"{type(self).__name__}.invert_features",
            like=self.trunk,
            event_shape=self.feature_shape,
        )
        return self.trunk.inverse_with_diagnostics(f)


def _check_counts(**counts: int) -> None:
    for name, n in counts.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"{name} must be a positive integer, got {n!r}")


def _branch_options(activation: Activation, norm: str, coeff: float, n_power_iterations: int):
    return {
        "activation": activation,
        "norm": norm,
        "coeff": coeff,
        "n_power_iterations": n_power_iterations,
    }


class InvertibleClassifier(_InvertibleNetwork):
    """i-ResNet classifier: [squeeze,] injective padding, invertible stages, pooled head.

    See the module docstring for the layout (i-ResNet sec. 5.1). The network has no log-det
    ([`NoLogDet`][iresnet.ops.logdet.NoLogDet]); ``features`` and ``invert_features`` give the
    invertible trunk ``F`` and its (left) inverse.

    Arguments:
        shape: ``(C, H, W)`` of the images (values as the caller scales them, e.g. ``[0, 1]``).
        classes: number of classes ``K``.
        scales: stages (a squeeze between consecutive ones).
        blocks: residual blocks per stage.
        hidden_channels: branch width of the first stage (doubled at every stage).
        coeff: the Lipschitz coefficient of every convolution.
        norm: ``"spectral"``, ``"certified"``, ``"frobenius"``, ``"penalty"`` or ``"none"``
            (the unconstrained "vanilla" network).
        activation: ``"elu"`` (the paper's), ``"lipswish"`` or a factory.
        actnorm: ActNorm before every block.
        squeeze_first: squeeze before the padding (the i-ResNet code's ``init_ds=2``).
        pad_channels: ``P``; default ``max(C', hidden_channels // 2)`` with ``C'`` the channels
            after the optional squeeze (the paper pads CIFAR's 3 channels to 16).
        head_pool: the head averages the features to a ``head_pool x head_pool`` grid.
        n_power_iterations: power-iteration steps per training call.
        inverse: the fixed-point solver of every block (default
            [`FixedPointInverse`][iresnet.ops.fixed_point.FixedPointInverse]).

    Shapes:
        ``x``: ``(B, C, H, W)``; logits: ``(B, classes)``; features: ``(B, *feature_shape)``.

    Raises:
        ValueError: an image shape the squeezes cannot halve, ``head_pool`` larger than the
            feature grid, or another bad setting.
        TypeError: at call time, an input that is not a tensor.
        DataError: at call time, an input of the wrong shape, dtype or device (the message says
            how to fix it).

    References:
        - Behrmann et al., "Invertible Residual Networks", arXiv:1811.00995, sec. 5.1.

    Examples:
        >>> import torch, iresnet
        >>> model = iresnet.InvertibleClassifier((1, 8, 8), 10, blocks=1, hidden_channels=4)
        >>> x = torch.rand(2, 1, 8, 8)
        >>> model(x).shape, model.feature_shape
        (torch.Size([2, 10]), (8, 4, 4))
        >>> f = model.features(x)
        >>> bool((model.invert_features(f) - x).abs().max() < 1e-4)
        True
    """

    def __init__(
        self,
        shape: Sequence[int],
        classes: int,
        *,
        scales: int = 2,
        blocks: int = 2,
        hidden_channels: int = 16,
        coeff: float = 0.9,
        norm: str = "spectral",
        activation: Activation = "elu",
        actnorm: bool = True,
        squeeze_first: bool = False,
        pad_channels: int | None = None,
        head_pool: int = 1,
        n_power_iterations: int = 1,
        inverse: FixedPointInverse | None = None,
    ) -> None:
        super().__init__()
        _check_counts(
            classes=classes, hidden_channels=hidden_channels, blocks=blocks, scales=scales
        )
        image = check_image_shape(shape, scales - 1 + int(squeeze_first))
        entry: list[Transform] = [Squeeze(2)] if squeeze_first else []
        c = image[0] * (4 if squeeze_first else 1)
        p = pad_channels if pad_channels is not None else max(c, hidden_channels // 2)
        entry.append(InjectivePad(c, p))
        self._build_trunk(
            entry,
            image,
            {
                "scales": scales,
                "blocks": blocks,
                "hidden_channels": hidden_channels,
                "logdet": "none",
                "actnorm": actnorm,
                "inverse": inverse if inverse is not None else FixedPointInverse(),
                "branch": _branch_options(activation, norm, coeff, n_power_iterations),
            },
        )
        grid = min(self.feature_shape[1:])
        if not 1 <= head_pool <= grid:
            raise ValueError(f"head_pool={head_pool} must lie in 1..{grid} (the feature grid)")
        self.head = ClassifierHead(self.feature_shape[0], classes, head_pool)


class HybridClassifier(_InvertibleNetwork):
    """One bijective feature network ``z = F(x)`` with a density and a linear classifier.

    ``log p(x) = log N(z; 0, I) + log|det dF/dx|`` (no padding, so ``F`` is a bijection; with
    ``levels`` the dequantisation and logit log-dets are part of it), the blocks' log-dets from
    ``logdet``; ``p(y | x) = softmax(W vec(z) + b)``
    ([`LinearHead`][iresnet.classifiers.LinearHead]). The hybrid model of Nalisnick et al.,
    as Residual Flows (sec. 5) trains it. ``model(x)`` gives the logits;
    ``model(x, return_log_prob=True)`` gives ``(logits, log p(x))`` from one pass (so a
    DDP-wrapped model trains both terms); ``log_prob(x)`` gives ``(B,)`` in nats.

    Arguments:
        shape: ``(C, H, W)`` of the images.
        classes: number of classes ``K``.
        scales: stages (a squeeze between consecutive ones).
        blocks: residual blocks per stage.
        hidden_channels: branch width of the first stage (doubled at every stage).
        coeff: the Lipschitz coefficient of every convolution.
        norm: ``"spectral"``, ``"certified"``, ``"frobenius"``, ``"penalty"`` or ``"none"``.
        activation: ``"elu"``, ``"lipswish"`` or a factory.
        actnorm: ActNorm before every block.
        squeeze_first: squeeze the input once before the first stage.
        logdet: ``"exact"``, ``"series"``, ``"roulette"``, ``"roulette-auto"`` (chosen per
            block from its design bound), ``"stratified"`` or an estimator.
        levels: ``K``: dequantise integer levels first, as in
            [`MultiscaleResidualFlow`][iresnet.flows.multiscale.MultiscaleResidualFlow].
        logit_alpha: apply the logit map with this margin (0: none).
        n_power_iterations: power-iteration steps per training call.
        inverse: the fixed-point solver of every block.

    Shapes:
        ``x``: ``(B, C, H, W)``; logits: ``(B, classes)``; ``log p(x)``: ``(B,)``.

    Raises:
        ValueError: an image shape the squeezes cannot halve, or another bad setting.
        DataError: ``logit_alpha >= 0.5``; at call time, an input of the wrong
            shape, dtype or device, or (with ``levels``) levels outside ``0..K-1``.
        TypeError: at call time, an input that is not a tensor.

    References:
        - Nalisnick et al., "Hybrid Models with Deep and Invertible Features",
          arXiv:1902.02767.
        - Chen et al., "Residual Flows for Invertible Generative Modeling", arXiv:1906.02735,
          sec. 5.

    Examples:
        >>> import torch, iresnet
        >>> model = iresnet.HybridClassifier((1, 4, 4), 3, blocks=1, hidden_channels=4, levels=17)
        >>> logits, log_p = model(torch.randint(0, 17, (2, 1, 4, 4)), return_log_prob=True)
        >>> logits.shape, log_p.shape
        (torch.Size([2, 3]), torch.Size([2]))
    """

    def __init__(
        self,
        shape: Sequence[int],
        classes: int,
        *,
        scales: int = 2,
        blocks: int = 2,
        hidden_channels: int = 16,
        coeff: float = 0.9,
        norm: str = "spectral",
        activation: Activation = "elu",
        actnorm: bool = True,
        squeeze_first: bool = False,
        logdet: str | LogDetEstimator = "exact",
        levels: int | None = None,
        logit_alpha: float = 0.0,
        n_power_iterations: int = 1,
        inverse: FixedPointInverse | None = None,
    ) -> None:
        super().__init__()
        _check_counts(
            classes=classes, hidden_channels=hidden_channels, blocks=blocks, scales=scales
        )
        image = check_image_shape(shape, scales - 1 + int(squeeze_first))
        entry: list[Transform] = []
        if levels is not None:
            entry.append(Dequantize(levels))
        if not 0.0 <= logit_alpha < 0.5:  # as MultiscaleResidualFlow
            raise ValueError(f"logit_alpha must lie in [0, 0.5), got {logit_alpha}")
        if logit_alpha > 0:
            entry.append(Logit(logit_alpha))
        if squeeze_first:
            entry.append(Squeeze(2))
        self._build_trunk(
            entry,
            image,
            {
                "scales": scales,
                "blocks": blocks,
                "hidden_channels": hidden_channels,
                "logdet": logdet,
                "actnorm": actnorm,
                "inverse": inverse if inverse is not None else FixedPointInverse(),
                "branch": _branch_options(activation, norm, coeff, n_power_iterations),
            },
        )
        self.head = LinearHead(self.feature_shape, classes)
        self.base = StandardNormal(self.feature_shape)

    def forward(self, x: Tensor, return_log_prob: bool = False) -> Any:  # type: ignore[override]
        z, logdet = self._trunk(x, "forward")
        logits = self.head(z)
        if return_log_prob:
            return logits, self.base().log_prob(z) + logdet
        return logits

    def log_prob(self, x: Tensor) -> Tensor:
        """``log p(x)`` in nats, shape ``(B,)``, for images ``x`` ``(B, C, H, W)``.

        Raises:
            TypeError: ``x`` is not a tensor.
            DataError: a wrong shape, dtype or device (the message says how to fix it).
        """
        z, logdet = self._trunk(x, "log_prob")
        return self.base().log_prob(z) + logdet
