"""The Residual Flow on vectors, built from keyword arguments (zuko's habit).

References:
    - Behrmann et al., "Invertible Residual Networks", ICML 2019, arXiv:1811.00995.
    - Chen et al., "Residual Flows for Invertible Generative Modeling", NeurIPS 2019,
      arXiv:1906.02735.
    - Ahn et al., "Invertible Monotone Operators for Normalizing Flows", NeurIPS 2022,
      arXiv:2210.08176 (``block="monotone"``).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..nn import conditional_mlp_branch, dense_branch, design_bound_of, mlp_branch
from ..nn.branches import Activation
from ..ops import LOGDETS, FixedPointInverse, LogDetEstimator, logdet_estimator
from ..transforms import (
    ActNorm,
    ConditionalAffine,
    InvertibleResidualBlock,
    MonotoneBlock,
    Standardize,
    Transform,
)
from .flow import Flow

__all__ = [
    "BLOCKS",
    "BRANCHES",
    "ResidualFlow",
    "block_type",
    "check_branch",
    "check_context",
    "check_logdet",
]

BRANCHES = ("plain", "dense")
"""Branch kinds of the families: ``"plain"`` (the MLP / CNN of i-ResNet and Residual Flows) or
``"dense"`` (i-DenseNet's, [`dense_branch`][iresnet.nn.dense.dense_branch])."""


BLOCKS = ("residual", "monotone")
"""Block kinds of the families: ``"residual"`` (``x + g(x)``,
[`InvertibleResidualBlock`][iresnet.transforms.residual.InvertibleResidualBlock]) or
``"monotone"`` (Monotone Flows' ``2 (Id + g)^{-1} - Id``,
[`MonotoneBlock`][iresnet.transforms.monotone.MonotoneBlock]), on the same branches."""


def block_type(block: str, coeff: float | None = None) -> type[InvertibleResidualBlock]:
    """The block class named by ``block`` (for branches of Lipschitz coefficient ``coeff``).

    Raises:
        ValueError: ``block`` not in [`BLOCKS`][iresnet.flows.residual_flow.BLOCKS], or a
            monotone block with ``coeff >= 1`` (its bi-Lipschitz bound ``(1 + c)/(1 - c)`` is
            infinite there).
    """
    if block not in BLOCKS:
        raise ValueError(f"block must be one of {BLOCKS}, got {block!r}")
    if block == "monotone" and coeff is not None and coeff >= 1:
        raise ValueError(
            f"block='monotone' needs coeff < 1 (its bound (1 + c)/(1 - c) is infinite at 1), "
            f"got {coeff}"
        )
    return MonotoneBlock if block == "monotone" else InvertibleResidualBlock


def check_logdet(logdet: str | LogDetEstimator) -> None:
    """Refuse an unknown log-det name before any block is built.

    Raises:
        ValueError: a string not in ``iresnet.ops.LOGDETS``.
    """
    if isinstance(logdet, str) and logdet not in LOGDETS:
        raise ValueError(f"logdet must be one of {LOGDETS} or a LogDetEstimator, got {logdet!r}")


def check_branch(branch: str) -> None:
    """Refuse an unknown branch kind with one line.

    Raises:
        ValueError: ``branch`` not in [`BRANCHES`][iresnet.flows.residual_flow.BRANCHES].
    """
    if branch not in BRANCHES:
        raise ValueError(f"branch must be one of {BRANCHES}, got {branch!r}")


def check_context(context: int) -> None:
    """Refuse a context size that is not a non-negative integer.

    Raises:
        ValueError: ``context`` is not an integer ``>= 0``.
    """
    if isinstance(context, bool) or not isinstance(context, int) or context < 0:
        raise ValueError(
            f"context must be a non-negative integer (0: unconditional), got {context!r}"
        )


class ResidualFlow(Flow):
    """An i-ResNet / Residual Flow on ``features``-dimensional vectors.

    ``[Standardize] -> { ActNorm -> x + g(x) } x transforms -> ActNorm`` over ``N(0, I)``, where
    each ``g`` is an MLP of spectrally normalised layers with 1-Lipschitz activations
    ([`mlp_branch`][iresnet.nn.branches.mlp_branch]), so
    ``Lip(g) <= coeff^(len(hidden_features) + 1) < 1`` and every block is invertible (i-ResNet
    Theorem 1). The log-det is exact (small ``features``), the truncated power series (i-ResNet
    eq. (5)) or the unbiased Russian roulette (Residual Flows Theorem 1, eq. (6)). Called, the
    flow returns a ``torch.distributions.Distribution`` over ``(features,)`` vectors.

    With ``context=k > 0`` the flow is conditional, ``p(x | c)``:
    ``[Standardize] -> [ConditionalAffine] -> { ActNorm -> x + g(x, c) } x transforms -> ActNorm``
    with conditional branches
    ([`conditional_mlp_branch`][iresnet.nn.conditional.conditional_mlp_branch]: the context
    shifts and gates, with gains in ``(0, 1)``, the hidden pre-activations, so
    ``Lip_x(g(., c)) <= coeff^(len(hidden_features) + 1)`` for every context) and a
    [`ConditionalAffine`][iresnet.transforms.conditional.ConditionalAffine] first that moves and
    scales each context's data. ``flow(c)`` is then the distribution of ``x`` given ``c``
    (zuko's interface).

    Arguments:
        features: the data dimension ``d``.
        context: the context dimension ``k`` (0: unconditional).
        transforms: the number of residual blocks.
        hidden_features: hidden sizes of each branch ``g``.
        coeff: the Lipschitz coefficient ``c`` of every linear layer, in ``(0, 1]``.
        activation: ``"lipswish"``, ``"elu"``, ``"clipswish"`` or ``"cpila"`` (the last two
            concatenate, doubling the width they feed; see
            [`ACTIVATIONS`][iresnet.nn.activations.ACTIVATIONS]) or a factory of
            1-Lipschitz modules.
        logdet: ``"exact"``, ``"series"``, ``"roulette"``, ``"roulette-auto"`` (``p`` and
            ``n_exact`` chosen from the blocks' design bound ``Lip(g) <= coeff^n`` so the
            variance is finite), ``"stratified"`` (the roulette with more probes on its first
            terms), ``"stratified-auto"`` (its tail's law chosen as ``"roulette-auto"``
            chooses), ``"none"`` (no log-det: ``log_prob`` is NaN; for sampling or features
            only) or a [`LogDetEstimator`][iresnet.ops.logdet.LogDetEstimator]
            (shared by all blocks); see
            [`logdet_estimator`][iresnet.ops.logdet.logdet_estimator]. A roulette whose fixed
            ``p`` has infinite variance for that bound warns
            ([`RouletteVarianceWarning`][iresnet.errors.RouletteVarianceWarning]).
        inverse: the fixed-point solver of every block (default
            [`FixedPointInverse`][iresnet.ops.fixed_point.FixedPointInverse]).
        actnorm: ActNorm before every block and at the end.
        norm: ``"spectral"``, ``"certified"``, ``"frobenius"``, ``"penalty"`` or ``"none"`` (see
            [`linear_layer`][iresnet.nn.branches.linear_layer]).
        n_power_iterations: power-iteration steps per training call of every layer.
        standardize: ``(mean, std)`` of a fixed
            [`Standardize`][iresnet.transforms.preprocess.Standardize] first, so densities are
            in the data's own units.
        validate: check ``log_prob`` inputs for NaN/Inf.
        context_features: hidden sizes of the context networks (conditional flows only).
        context_affine: a ``ConditionalAffine`` first (conditional flows only).
        context_standardize: ``(mean, std)`` of the contexts (see
            [`Flow`][iresnet.flows.flow.Flow]).
        branch: ``"plain"`` (the MLP above) or ``"dense"``: i-DenseNet's branch
            ([`dense_branch`][iresnet.nn.dense.dense_branch]) of ``dense_depth`` dense layers
            adding ``dense_growth`` features each, ``Lip(g) <= coeff * dense_coeff^dense_depth``
            (``hidden_features`` is then unused).
        dense_growth: features each dense layer adds.
        dense_depth: dense layers per branch.
        dense_coeff: ``sqrt(eta_1^2 + eta_2^2)`` of every dense layer, in ``(0, 1]``.
        block: ``"residual"`` (``x + g(x)``) or ``"monotone"``: Monotone Flows' block
            ([`MonotoneBlock`][iresnet.transforms.monotone.MonotoneBlock],
            ``2 (Id + g)^{-1} - Id`` on the same branch: forward and inverse each
            ``(1 + L)/(1 - L)``-Lipschitz; its forward runs a fixed-point solve).

    Shapes:
        ``x``: ``(B, features)``; ``c``: ``(B, context)``; ``log_prob(x)``: ``(B,)``, in nats (in
        the data's own units with ``standardize``).

    Raises:
        ValueError: an invalid setting (``context < 0``, ``features < 1``, ``transforms < 0``,
            a hidden size below 1, an unknown ``logdet``, ``activation``, ``norm``, ``branch``
            or ``block``, ``coeff`` outside ``(0, 1]``, a monotone block with ``coeff >= 1``, a
            dense branch with a context, ``standardize`` without ``features`` values each, a
            conditional flow with no transform at all).
        TypeError: ``features`` or ``transforms`` not integers, or ``hidden_features`` not a
            sequence of integers.

    References:
        - Behrmann et al., "Invertible Residual Networks", arXiv:1811.00995.
        - Chen et al., "Residual Flows for Invertible Generative Modeling", arXiv:1906.02735.
        - Perugachi-Diaz et al., "Invertible DenseNets with Concatenated LipSwish",
          arXiv:2102.02694 (``branch="dense"``).
        - Ahn et al., "Invertible Monotone Operators for Normalizing Flows", arXiv:2210.08176
          (``block="monotone"``).

    Examples:
        >>> import torch, iresnet
        >>> flow = iresnet.ResidualFlow(2, transforms=2, hidden_features=(16,))
        >>> flow().log_prob(torch.randn(5, 2)).shape
        torch.Size([5])
        >>> flow.eval().sample(3).shape
        torch.Size([3, 2])
        >>> cflow = iresnet.ResidualFlow(2, context=1, transforms=2, hidden_features=(16,))
        >>> c = torch.randn(5, 1)
        >>> cflow(c).log_prob(torch.randn(5, 2)).shape, cflow(c).rsample((3,)).shape
        (torch.Size([5]), torch.Size([3, 5, 2]))
    """

    def __init__(
        self,
        features: int,
        context: int = 0,
        transforms: int = 8,
        hidden_features: Sequence[int] = (64, 64),
        *,
        coeff: float = 0.98,
        activation: Activation = "lipswish",
        logdet: str | LogDetEstimator = "exact",
        inverse: FixedPointInverse | None = None,
        actnorm: bool = True,
        norm: str = "spectral",
        n_power_iterations: int = 1,
        standardize: tuple[Sequence[float], Sequence[float]] | None = None,
        validate: bool = True,
        context_features: Sequence[int] = (64,),
        context_affine: bool = True,
        context_standardize: tuple[Sequence[float], Sequence[float]] | None = None,
        branch: str = "plain",
        dense_growth: int = 32,
        dense_depth: int = 3,
        dense_coeff: float = 0.98,
        block: str = "residual",
    ) -> None:
        check_context(context)
        check_branch(branch)
        kind = block_type(block, coeff)
        if not all(isinstance(n, int) for n in (features, transforms)):
            raise TypeError(
                f"features and transforms must be integers, got {features!r}, {transforms!r}"
            )
        _check_sizes("hidden_features", hidden_features)
        if branch == "dense" and context:
            raise ValueError("branch='dense' has no conditional form yet; use branch='plain'")
        if features < 1 or transforms < 0:
            raise ValueError(
                f"need features >= 1 and transforms >= 0, got {features}, {transforms}"
            )
        if standardize is not None and not (
            len(standardize) == 2 and len(standardize[0]) == len(standardize[1]) == features
        ):
            raise ValueError(f"standardize needs (mean, std) with {features} values each")
        check_logdet(logdet)
        estimator: LogDetEstimator | None = None
        solver = inverse if inverse is not None else FixedPointInverse()
        steps: list[Transform] = []
        if standardize is not None:
            steps.append(Standardize(*standardize))
        if context and context_affine:
            steps.append(ConditionalAffine(features, context, context_features))
        for _ in range(transforms):
            if actnorm:
                steps.append(ActNorm(features))
            options = {
                "activation": activation,
                "norm": norm,
                "coeff": coeff,
                "n_power_iterations": n_power_iterations,
            }
            if branch == "dense":
                g = dense_branch(
                    features,
                    dense_growth,
                    dense_depth,
                    dense_coeff=dense_coeff,
                    **options,  # type: ignore[arg-type]
                )
            elif context:
                g = conditional_mlp_branch(
                    features, context, hidden_features, context_features=context_features, **options
                )
            else:
                g = mlp_branch(features, hidden_features, **options)  # type: ignore[arg-type]
            if estimator is None:  # all blocks share one bound by design, and one estimator
                estimator = logdet_estimator(logdet, features, lipschitz=design_bound_of(g))
            steps.append(kind(g, logdet=estimator, inverse=solver))
        if actnorm:
            steps.append(ActNorm(features))
        if context and not steps:
            raise ValueError("a conditional flow needs transforms >= 1 or context_affine=True")
        super().__init__(
            steps,
            event_shape=(features,),
            validate=validate,
            context=context,
            context_standardize=context_standardize,
        )


def _check_sizes(name: str, sizes: object) -> None:
    """Hidden sizes are a sequence of positive integers, one per hidden layer (``TypeError``
    for another kind of value, ``ValueError`` for a size below 1)."""
    ok = isinstance(sizes, (list, tuple)) and all(
        isinstance(n, int) and not isinstance(n, bool) for n in sizes
    )
    if ok and any(n < 1 for n in sizes):  # type: ignore[union-attr]
        raise ValueError(f"{name} must be positive, got {sizes!r}")
    if not ok:
        example = f"({sizes},)" if isinstance(sizes, int) else "(64, 64)"
        raise TypeError(
            f"{name} must be a sequence of positive integers, one per hidden layer (e.g. "
            f"{example}), got {sizes!r}"
        )
