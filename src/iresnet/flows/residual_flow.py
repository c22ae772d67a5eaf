"""The Residual Flow on vectors, built from keyword arguments (zuko's habit).

References:
    - Behrmann et al., "Invertible Residual Networks", ICML 2019, arXiv:1811.00995.
    - Chen et al., "Residual Flows for Invertible Generative Modeling", NeurIPS 2019,
      arXiv:1906.02735.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..nn import dense_branch, design_bound_of, mlp_branch
from ..nn.branches import Activation
from ..ops import LOGDETS, FixedPointInverse, LogDetEstimator, logdet_estimator
from ..transforms import ActNorm, InvertibleResidualBlock, Standardize, Transform
from .flow import Flow

__all__ = ["BRANCHES", "ResidualFlow", "check_branch", "check_context", "check_logdet"]

BRANCHES = ("plain", "dense")
"""Branch kinds of the families: ``"plain"`` (the MLP / CNN of i-ResNet and Residual Flows) or
``"dense"`` (i-DenseNet's, [`dense_branch`][iresnet.nn.dense.dense_branch])."""


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
    """Conditional flows are not built yet: refuse ``context != 0`` with a clear message.

    Raises:
        ValueError: ``context != 0``.
    """
    if context != 0:
        raise ValueError(
            f"context={context}: conditional residual flows are not available yet; build the "
            "flow with context=0"
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

    Arguments:
        features: the data dimension ``d``.
        context: the context dimension; only 0 (unconditional) for now.
        transforms: the number of residual blocks.
        hidden_features: hidden sizes of each branch ``g``.
        coeff: the Lipschitz coefficient ``c`` of every linear layer, in ``(0, 1]``.
        activation: ``"lipswish"``, ``"elu"`` or a factory of 1-Lipschitz modules.
        logdet: ``"exact"``, ``"series"``, ``"roulette"``, ``"roulette-auto"`` (``p`` and
            ``n_exact`` chosen from the blocks' design bound ``Lip(g) <= coeff^n`` so the
            variance is finite) or a [`LogDetEstimator`][iresnet.ops.logdet.LogDetEstimator]
            (shared by all blocks); see
            [`logdet_estimator`][iresnet.ops.logdet.logdet_estimator]. A roulette whose fixed
            ``p`` has infinite variance for that bound warns
            ([`RouletteVarianceWarning`][iresnet.errors.RouletteVarianceWarning]).
        inverse: the fixed-point solver of every block (default
            [`FixedPointInverse`][iresnet.ops.fixed_point.FixedPointInverse]).
        actnorm: ActNorm before every block and at the end.
        norm: ``"spectral"``, ``"frobenius"``, ``"penalty"`` or ``"none"`` (see
            [`linear_layer`][iresnet.nn.branches.linear_layer]).
        n_power_iterations: power-iteration steps per training call of every layer.
        standardize: ``(mean, std)`` of a fixed
            [`Standardize`][iresnet.transforms.preprocess.Standardize] first, so densities are
            in the data's own units.
        validate: check ``log_prob`` inputs for NaN/Inf.
        branch: ``"plain"`` (the MLP above) or ``"dense"``: i-DenseNet's branch
            ([`dense_branch`][iresnet.nn.dense.dense_branch]) of ``dense_depth`` dense layers
            adding ``dense_growth`` features each, ``Lip(g) <= coeff * dense_coeff^dense_depth``
            (``hidden_features`` is then unused).
        dense_growth: features each dense layer adds.
        dense_depth: dense layers per branch.
        dense_coeff: ``sqrt(eta_1^2 + eta_2^2)`` of every dense layer, in ``(0, 1]``.

    Shapes:
        ``x``: ``(B, features)``; ``log_prob(x)``: ``(B,)``, in nats (in the data's own units
        with ``standardize``).

    Raises:
        ValueError: ``context != 0`` or an invalid setting (``features < 1``, ``transforms < 0``,
            an unknown ``logdet``, ``activation``, ``norm`` or ``branch``, ``coeff`` outside
            ``(0, 1]``).

    Examples:
        >>> import torch, iresnet
        >>> flow = iresnet.ResidualFlow(2, transforms=2, hidden_features=(16,))
        >>> flow().log_prob(torch.randn(5, 2)).shape
        torch.Size([5])
        >>> flow.eval().sample(3).shape
        torch.Size([3, 2])
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
        branch: str = "plain",
        dense_growth: int = 32,
        dense_depth: int = 3,
        dense_coeff: float = 0.98,
    ) -> None:
        check_context(context)
        check_branch(branch)
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
            else:
                g = mlp_branch(features, hidden_features, **options)  # type: ignore[arg-type]
            if estimator is None:  # all blocks share one bound by design, and one estimator
                estimator = logdet_estimator(logdet, features, lipschitz=design_bound_of(g))
            steps.append(InvertibleResidualBlock(g, logdet=estimator, inverse=solver))
        if actnorm:
            steps.append(ActNorm(features))
        super().__init__(steps, event_shape=(features,), validate=validate)
