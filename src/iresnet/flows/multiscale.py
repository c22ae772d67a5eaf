"""The multi-scale image family: i-ResNet's density model and the Residual Flow on images.

An image ``x`` of shape ``(C, H, W)`` goes through optional preprocessing (uniform
dequantisation of ``levels`` integer levels, then the logit map, each with its log-det) and
residual blocks ``y = x + g(x)`` with ``Lip(g) < 1``, so ``flow.log_prob(x)`` is the density of
the dequantised image in level units and bits per dimension are ``-log p / (D log 2)``.

**Skeleton** (``S = scales``, ``n = blocks``):

    [Dequantize] -> [Logit] -> [Squeeze] -> ActNorm
      -> { [block -> ActNorm] x n -> Squeeze -> [factor-out] } x (S - 1)
      -> [block -> ActNorm] x n -> [Flatten -> (fc block -> ActNorm) x fc_blocks]

(ActNorm only with ``actnorm``.) This is Residual Flows' order (app. E: the logit map, then
blocks and squeezes, with ActNorm before and after every residual block); it contains the
i-ResNet code's "ActNorm before every block" plus one ActNorm closing each scale, so
factored-out latents and the final latent are normalised too.

**Residual branch** of a block on ``c`` channels:
[`conv_branch`][iresnet.nn.branches.conv_branch],
``[act ->] conv3x3(c, h_1) -> act -> conv1x1 -> ... -> act -> conv3x3(h_k, c)``, each
convolution spectrally normalised on its input shape. The leading activation is the
pre-activation both papers' code use on every block but the first of the flow.

**Factor-out** (``factor_out=True``, Real NVP sec. 3.6): after each squeeze but the last
scale's, half of the channels go straight to the latent. The state then becomes one flat tensor
``[active | factored-out latents]`` ([`OnActive`][iresnet.transforms.reshape.OnActive]);
factoring out is the identity on it, so the log-det is unchanged, and the latent is
``(C H W,)``. Without factor-out and fc blocks the latent keeps its image shape
``(C 4^k, H / 2^k, W / 2^k)``.

References:
    - Behrmann et al., "Invertible Residual Networks", ICML 2019, arXiv:1811.00995.
    - Chen et al., "Residual Flows for Invertible Generative Modeling", NeurIPS 2019,
      arXiv:1906.02735, app. E.
    - Dinh et al., "Density estimation using Real NVP", ICLR 2017, arXiv:1605.08803, sec. 3.6.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..nn import (
    conditional_conv_branch,
    conditional_mlp_branch,
    conv_branch,
    dense_branch,
    design_bound_of,
    mlp_branch,
)
from ..nn.branches import Activation
from ..ops import FixedPointInverse, LogDetEstimator, logdet_estimator
from ..transforms import (
    ActNorm,
    Dequantize,
    Flatten,
    Logit,
    OnActive,
    Squeeze,
    Transform,
    VariationalDequantize,
)
from ..words import count
from .flow import DiagonalNormal, Flow
from .residual_flow import _check_sizes, block_type, check_branch, check_context, check_logdet

__all__ = ["MultiscaleResidualFlow", "check_image_shape"]

Shape = tuple[int, ...]


def check_image_shape(shape: Sequence[int], n_squeezes: int) -> tuple[int, int, int]:
    """``shape`` as ``(C, H, W)`` with ``H`` and ``W`` divisible by ``2^n_squeezes``.

    Args:
        shape: the event shape of one image.
        n_squeezes: the number of 2x2 squeezes the model will apply.

    Returns:
        ``(C, H, W)`` as ints.

    Raises:
        ValueError: not three dimensions, or not divisible.

    Examples:
        >>> check_image_shape((1, 28, 28), 2)
        (1, 28, 28)
    """
    if len(shape) != 3:
        raise ValueError(f"image models need an event shape (C, H, W), got {tuple(shape)}")
    c, h, w = (int(s) for s in shape)
    k = 2**n_squeezes
    if h % k or w % k:
        raise ValueError(
            f"H and W must be divisible by {k} for {count(n_squeezes, 'squeeze')}, got {h}x{w}; "
            "use fewer scales (or no initial squeeze)"
        )
    return c, h, w


class _Stack:
    """Appends transforms while tracking the active shape and whether the state is flat."""

    def __init__(self, shape: Shape) -> None:
        self.shape: Shape = shape
        self.total = math.prod(shape)
        self.flat = False
        self.transforms: list[Transform] = []
        self.n_blocks = 0

    def add(self, t: Transform) -> None:
        out = t.forward_shape(self.shape)
        if self.flat and self.shape != (self.total,):
            t = OnActive(t, self.shape, out)
        self.transforms.append(t)
        self.shape = out

    def flatten(self) -> None:
        if not self.flat:
            self.transforms.append(Flatten(self.shape))
            self.flat = True

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


class MultiscaleResidualFlow(Flow):
    """A multi-scale residual flow on images (see the module docstring for the layout).

    With ``levels`` (and ``logit_alpha``) the flow dequantises (and logit-transforms) its input
    itself, so ``log_prob`` of integer images is the log-density of the dequantised image in
    level units, every preprocessing log-det included;
    [`bits_per_dim`][iresnet.transforms.preprocess.bits_per_dim] turns it into bits per
    dimension. Called, the flow returns a ``torch.distributions.Distribution``.

    Arguments:
        shape: ``(C, H, W)`` of one image.
        context: the context size ``k`` (0: unconditional). With ``k > 0`` every branch is
            conditional
            ([`conditional_conv_branch`][iresnet.nn.conditional.conditional_conv_branch],
            [`conditional_mlp_branch`][iresnet.nn.conditional.conditional_mlp_branch]:
            per-channel context shifts and gains in ``(0, 1)``, so each block's certificate
            holds for every context) and ``flow(c)`` is the distribution of images given ``c``
            (e.g. one-hot class labels).
        scales: scales ``S`` (a squeeze between consecutive ones).
        blocks: residual blocks per scale.
        hidden_channels: channels between the convolutions of each branch.
        coeff: the Lipschitz coefficient ``c`` of every convolution, in ``(0, 1]``.
        activation: ``"lipswish"``, ``"elu"``, ``"clipswish"`` or ``"cpila"`` (the last two
            concatenate, doubling the width they feed; see
            [`ACTIVATIONS`][iresnet.nn.activations.ACTIVATIONS]) or a factory of
            1-Lipschitz modules.
        logdet: ``"exact"``, ``"series"``, ``"roulette"``, ``"roulette-auto"`` (chosen per
            block from its design bound, finite variance; see
            [`RussianRouletteLogDet`][iresnet.ops.logdet.RussianRouletteLogDet]),
            ``"stratified"``, ``"stratified-auto"``, ``"none"`` (no log-det: ``log_prob`` is
            NaN) or a
            [`LogDetEstimator`][iresnet.ops.logdet.LogDetEstimator] shared by the blocks. With
            the default roulette, ``log_prob`` is an unbiased random estimate in eval mode too;
            evaluate with [`swap_logdets`][iresnet.transforms.residual.swap_logdets] (``"exact"``
            for small images, a roulette with many fixed terms otherwise).
        inverse: the fixed-point solver of every block (default
            [`FixedPointInverse`][iresnet.ops.fixed_point.FixedPointInverse]).
        actnorm: ActNorm first and after every block.
        norm: the layers' norm, as in [`ResidualFlow`][iresnet.flows.residual_flow.ResidualFlow].
        n_power_iterations: power-iteration steps per training call of every layer.
        squeeze_first: squeeze ``(C, H, W) -> (4C, H/2, W/2)`` before the first scale.
        factor_out: send half of the channels to the latent after each scale but the last.
        fc_blocks: fully connected residual blocks on the flattened final tensor (Residual
            Flows uses 4 for density estimation, app. E).
        fc_hidden_features: the hidden sizes of the fc blocks' branches.
        levels: ``K``: dequantise integer levels ``0..K-1`` first
            ([`Dequantize`][iresnet.transforms.preprocess.Dequantize]); None for continuous
            input.
        logit_alpha: apply [`Logit`][iresnet.transforms.preprocess.Logit] with this margin
            (0: none).
        validate: check ``log_prob`` inputs for NaN/Inf.
        context_features: hidden sizes of the context networks (conditional flows only).
        branch: ``"plain"`` (the CNN branch above) or ``"dense"``: i-DenseNet's
            ([`dense_branch`][iresnet.nn.dense.dense_branch] with ``conv=True``: ``dense_depth``
            3x3 dense layers adding ``dense_growth`` channels each, then a 1x1 back, no
            pre-activation; ``Lip(g) <= coeff * dense_coeff^dense_depth``). The fc blocks keep
            their MLP branches.
        dense_growth: channels each dense layer adds (the paper's CIFAR-10 model: 172).
        dense_depth: dense layers per branch (the paper's: 3).
        dense_coeff: ``sqrt(eta_1^2 + eta_2^2)`` of every dense layer (the paper's: 0.98).
        dequantization: with ``levels``: ``"uniform"`` or ``"variational"``
            ([`VariationalDequantize`][iresnet.transforms.dequantization.VariationalDequantize]:
            ``q(v | x)`` learned jointly, ``log_prob`` is then the one-sample ELBO).
        dequant_hidden: the variational ``q``'s width.
        dequant_steps: the variational ``q``'s coupling steps.
        block: ``"residual"`` or ``"monotone"`` (every block, the fc ones included, is a
            [`MonotoneBlock`][iresnet.transforms.monotone.MonotoneBlock] on the same branch);
            see [`ResidualFlow`][iresnet.flows.residual_flow.ResidualFlow].
        base: the latent distribution: ``"standard"`` ``N(0, I)`` (the papers') or
            ``"diagonal"``, Glow's learned per-dimension Gaussian
            ([`DiagonalNormal`][iresnet.flows.flow.DiagonalNormal]; unconditional).

    Shapes:
        ``x``: ``(B, C, H, W)`` (integer levels with ``levels``); ``log_prob(x)``: ``(B,)``, in
        nats; the latent: ``latent_shape``.

    Raises:
        ValueError: ``context < 0``, a shape the squeezes cannot halve, or a bad setting.
        TypeError: ``hidden_channels`` not a sequence of integers.

    References:
        - Behrmann et al., "Invertible Residual Networks", arXiv:1811.00995.
        - Chen et al., "Residual Flows for Invertible Generative Modeling", arXiv:1906.02735,
          app. E.
        - Perugachi-Diaz et al., "Invertible DenseNets with Concatenated LipSwish",
          arXiv:2102.02694 (``branch="dense"``).
        - Ahn et al., "Invertible Monotone Operators for Normalizing Flows", arXiv:2210.08176
          (``block="monotone"``).
        - Dinh et al., "Density estimation using Real NVP", arXiv:1605.08803, sec. 3.6 (the
          multi-scale layout).
        - Ho et al., "Flow++", arXiv:1902.00275, sec. 3.1 (``dequantization="variational"``).
        - Kingma & Dhariwal, "Glow", arXiv:1807.03039 (``base="diagonal"``, its learned prior).

    Examples:
        >>> import torch, iresnet
        >>> flow = iresnet.MultiscaleResidualFlow((1, 4, 4), scales=2, blocks=1,
        ...                                       hidden_channels=(4,), levels=4, logit_alpha=0.05)
        >>> x = torch.randint(0, 4, (2, 1, 4, 4))
        >>> flow.log_prob(x).shape, flow.latent_shape
        (torch.Size([2]), torch.Size([4, 2, 2]))
    """

    def __init__(
        self,
        shape: Sequence[int],
        context: int = 0,
        scales: int = 2,
        blocks: int = 4,
        hidden_channels: Sequence[int] = (32, 32),
        *,
        coeff: float = 0.98,
        activation: Activation = "lipswish",
        logdet: str | LogDetEstimator = "roulette",
        inverse: FixedPointInverse | None = None,
        actnorm: bool = True,
        norm: str = "spectral",
        n_power_iterations: int = 1,
        squeeze_first: bool = False,
        factor_out: bool = False,
        fc_blocks: int = 0,
        fc_hidden_features: Sequence[int] = (64, 64),
        levels: int | None = None,
        logit_alpha: float = 0.0,
        validate: bool = True,
        context_features: Sequence[int] = (64,),
        branch: str = "plain",
        dense_growth: int = 32,
        dense_depth: int = 3,
        dense_coeff: float = 0.98,
        dequantization: str = "uniform",
        dequant_hidden: int = 32,
        dequant_steps: int = 4,
        block: str = "residual",
        base: str = "standard",
    ) -> None:
        check_context(context)
        check_branch(branch)
        kind = block_type(block, coeff)
        check_logdet(logdet)
        _check_sizes("hidden_channels", hidden_channels)
        if scales < 1 or blocks < 0 or fc_blocks < 0:
            raise ValueError(
                f"need scales >= 1, blocks >= 0, fc_blocks >= 0; got {scales}, {blocks}, "
                f"{fc_blocks}"
            )
        if not 0.0 <= logit_alpha < 0.5:
            raise ValueError(f"logit_alpha must lie in [0, 0.5), got {logit_alpha}")
        if levels is not None and (isinstance(levels, bool) or not isinstance(levels, int)):
            raise ValueError(f"levels must be an integer >= 2 or None, got {levels!r}")
        if base not in ("standard", "diagonal"):
            raise ValueError(f"base must be 'standard' or 'diagonal', got {base!r}")
        if dequantization not in ("uniform", "variational"):
            raise ValueError(
                f"dequantization must be 'uniform' or 'variational', got {dequantization!r}"
            )
        image = check_image_shape(shape, scales - 1 + int(squeeze_first))
        solver = inverse if inverse is not None else FixedPointInverse()
        options = {
            "activation": activation,
            "norm": norm,
            "coeff": coeff,
            "n_power_iterations": n_power_iterations,
        }
        stack = _Stack(image)
        if levels is not None:
            if dequantization == "variational":
                stack.add(
                    VariationalDequantize(levels, image, hidden=dequant_hidden, steps=dequant_steps)
                )
            else:
                stack.add(Dequantize(levels))
        if logit_alpha > 0:
            stack.add(Logit(logit_alpha))
        if squeeze_first:
            stack.add(Squeeze(2))

        def actnorm_layer() -> None:
            if actnorm:
                stack.add(ActNorm(stack.shape[0]))

        def add_block(g: object) -> None:
            est = logdet_estimator(
                logdet,
                math.prod(stack.shape),
                lipschitz=design_bound_of(g),  # type: ignore[arg-type]
            )
            stack.add(kind(g, logdet=est, inverse=solver))  # type: ignore[arg-type]
            stack.n_blocks += 1

        actnorm_layer()
        for scale in range(scales):
            for _ in range(blocks):
                preact = stack.n_blocks > 0
                if branch == "dense":
                    if context:
                        raise ValueError(
                            "branch='dense' has no conditional form yet; use branch='plain' "
                            "with context"
                        )
                    g: object = dense_branch(
                        stack.shape[0],
                        dense_growth,
                        dense_depth,
                        conv=True,
                        dense_coeff=dense_coeff,
                        **options,  # type: ignore[arg-type]
                    )
                elif context:
                    g = conditional_conv_branch(
                        stack.shape[0],
                        context,
                        hidden_channels,
                        context_features=context_features,
                        preact=preact,
                        **options,  # type: ignore[arg-type]
                    )
                else:
                    g = conv_branch(stack.shape[0], hidden_channels, preact=preact, **options)  # type: ignore[arg-type]
                add_block(g)
                actnorm_layer()
            if scale < scales - 1:
                stack.add(Squeeze(2))
                if factor_out:
                    stack.factor_out()
        if fc_blocks > 0:
            dim = stack.flatten_active()
            for _ in range(fc_blocks):
                if context:
                    add_block(
                        conditional_mlp_branch(
                            dim,
                            context,
                            fc_hidden_features,
                            context_features=context_features,
                            **options,  # type: ignore[arg-type]
                        )
                    )
                else:
                    add_block(mlp_branch(dim, fc_hidden_features, **options))  # type: ignore[arg-type]
                actnorm_layer()
        if context and stack.n_blocks == 0:
            raise ValueError("a conditional image flow needs blocks >= 1 or fc_blocks >= 1")
        super().__init__(stack.transforms, event_shape=image, validate=validate, context=context)
        if base == "diagonal":
            self.base = DiagonalNormal(self.latent_shape)
