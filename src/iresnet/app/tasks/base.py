"""What every task shares: the interface, evaluation mode that restores itself, estimator
swaps, the estimator used to score a model, and batches of the test split."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from ...certificate import Certificate, certify
from ...datasets import DataBundle
from ...nn import design_bound_of
from ...ops import ExactLogDet, LogDetEstimator, RussianRouletteLogDet
from ...ops.roulette import roulette_for_lipschitz
from ...transforms import ComposedTransform, Dequantize, InverseReport, InvertibleResidualBlock
from ..batches import stage_data
from ..config import Config

__all__ = [
    "Task",
    "evaluating",
    "scoring_estimator",
    "scoring_lipschitz",
    "MAX_SURE_TERMS",
    "after_dequantize",
    "continuous_part",
    "inverse_count",
    "inverse_summary",
    "mean_se",
]

#: Test points an evaluation reconstructs through the inverse unless told.
N_INVERSE = 512


def inverse_count(n_inverse: int | None, n_test: int | None) -> int:
    """The test points an evaluation reconstructs: ``n_inverse`` when given, else
    ``N_INVERSE`` (512), at most the ``n_test`` points it evaluates (a quick ``--n-test 10``
    reconstructed hundreds)."""
    if n_inverse is not None:
        return n_inverse
    return N_INVERSE if n_test is None else min(N_INVERSE, n_test)


def mean_se(values: Tensor) -> tuple[float, float]:
    """Mean and standard error of per-sample values (SE ``nan`` for fewer than two)."""
    v = values.double()
    se = float(v.std() / math.sqrt(v.numel())) if v.numel() > 1 else math.nan
    return float(v.mean()), se


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode and without gradients inside the block; its mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def categorical_bits_per_dim(
    train: Tensor,
    test: Tensor,
    levels: int,
    train_labels: Tensor | None = None,
    test_labels: Tensor | None = None,
) -> tuple[float, float]:
    """Test bits/dim of independent per-pixel categorical distributions fitted to the training
    images (add-one smoothing): the floor any image density model must clear. Given labels,
    one such model per class, each test image scored under its own class's: the floor of a
    class-conditional model ``p(x | y)``.

    Args:
        train: ``(N, *event)`` integer levels in ``0..levels-1``.
        test: ``(M, *event)`` integer levels.
        levels: ``K``.
        train_labels: ``(N,)`` class labels, or None for one model of all images.
        test_labels: ``(M,)`` class labels (with ``train_labels``).

    Returns:
        The mean over test images of ``-sum_i log2 p_i(x_i) / D`` and its standard error.

    Examples:
        >>> train = torch.tensor([[0, 1], [0, 1], [0, 0]])
        >>> round(categorical_bits_per_dim(train, train, 2)[0], 4)
        0.6269
    """
    flat_train = train.reshape(train.shape[0], -1).long().cpu()
    flat_test = test.reshape(test.shape[0], -1).long().cpu()
    if train_labels is None or test_labels is None:
        return mean_se(_categorical_bits(flat_train, flat_test, levels))
    train_y, test_y = train_labels.long().cpu(), test_labels.long().cpu()
    bits = torch.empty(flat_test.shape[0], dtype=torch.float64)
    for y in test_y.unique().tolist():
        fit, scored = train_y == y, test_y == y
        bits[scored] = _categorical_bits(flat_train[fit], flat_test[scored], levels)
    return mean_se(bits)


def _categorical_bits(flat_train: Tensor, flat_test: Tensor, levels: int) -> Tensor:
    """``(M,)`` bits per dimension of each test row under per-position categoricals fitted to
    ``flat_train`` ``(N, D)`` with add-one smoothing (N may be 0: the uniform law)."""
    d = flat_test.shape[1]
    counts = torch.ones(d, levels, dtype=torch.float64)  # add-one (Laplace) smoothing
    counts.scatter_add_(1, flat_train.T, torch.ones(d, flat_train.shape[0], dtype=torch.float64))
    log_p = (counts / counts.sum(1, keepdim=True)).log2()
    return -log_p.gather(1, flat_test.T).mean(0)


#: The most always-computed terms of the scoring roulette (its law's ``p`` still follows the
#: bound): ``ceil(L^2 / (1 - L^2))`` reaches it at ``L ~ 0.995`` and 50 000 at ``L = 0.99999``.
MAX_SURE_TERMS = 100


def scoring_estimator(
    dim: int, exact_max_dim: int = 64, roulette_exact: int = 20, lipschitz: float | None = None
) -> tuple[str, LogDetEstimator]:
    """The log-det estimator a test likelihood is reported with, and its name.

    Exact where ``dim <= exact_max_dim``. Otherwise the unbiased Russian roulette with at least
    ``roulette_exact`` always-computed terms (no truncation bias). Given a bound ``L < 1`` of
    every block's ``Lip(g)`` (a certificate's ``max_bound``), its law is chosen from it so that
    its variance is finite: ``p = (1 - L^2) / 2`` and ``max(roulette_exact,
    ceil(L^2 / (1 - L^2)))`` sure terms
    ([`roulette_for_lipschitz`][iresnet.ops.roulette.roulette_for_lipschitz]), ``N`` capped
    where the truncation bias stays below ``1e-6`` nats per dimension; the sure terms stop at
    [`MAX_SURE_TERMS`][iresnet.app.tasks.base.MAX_SURE_TERMS] (``p`` alone keeps the variance
    finite). Without a bound below 1 it is Geometric(1/2), and its name says that finite
    variance is not guaranteed: its worst case is infinite once ``L > 0.707``, and for
    ``L >= 1`` the series itself need not converge.

    Raises:
        ValueError: ``lipschitz`` negative.
    """
    if dim <= exact_max_dim:
        return "exact", ExactLogDet(max_dim=dim)
    if lipschitz is None or not lipschitz < 1.0:
        est = RussianRouletteLogDet(
            n_exact=roulette_exact, neumann_gradient=False, memory_efficient=False
        )
        why = "no bound" if lipschitz is None else f"bound {lipschitz:.6g} >= 1"
        return (
            f"russian-roulette(n_exact={roulette_exact}, p=0.5; {why} on Lip(g): finite "
            "variance not guaranteed)",
            est,
        )
    p, n_exact = roulette_for_lipschitz(lipschitz)
    # p alone makes the variance finite; the sure terms only shrink it, so past
    # MAX_SURE_TERMS (L > 0.995) they stop growing instead of costing ~1 / (2 (1 - L)) terms.
    n_exact = max(min(n_exact, MAX_SURE_TERMS), roulette_exact)
    est = RussianRouletteLogDet(
        p=p,
        n_exact=n_exact,
        neumann_gradient=False,
        memory_efficient=False,
        lipschitz=lipschitz,
    )
    return f"russian-roulette(n_exact={n_exact}, p={p:.3g}, Lip(g)<={lipschitz:.6g})", est


def scoring_lipschitz(
    model: nn.Module, *, certified: bool, certificate: Certificate | None = None
) -> float | None:
    """The bound of the blocks' ``Lip(g)`` that
    [`scoring_estimator`][iresnet.app.tasks.base.scoring_estimator] chooses its roulette for:
    the certificate's largest block bound (``certified=True``: proven for the weights in force,
    seconds for a convolutional model), or the largest design bound
    ([`design_bound_of`][iresnet.nn.design_bound_of]: the constraints' product, free, what the
    blocks' own roulettes are checked against; the periodic evaluations use it). The design
    bound is not a proof: the certificate of the same weights can be a little higher (0.972
    against 0.941 seen after a few Fashion-MNIST steps), so only ``evaluate`` and ``score``
    have a proven finite variance. ``certificate``: the model's, where the caller has it
    already (it is not computed again). None without residual blocks or where a block has no
    bound."""
    blocks = [m for m in model.modules() if isinstance(m, InvertibleResidualBlock)]
    if not blocks:
        return None
    if certified:
        bound = (certificate or certify(model)).max_bound
        return bound if math.isfinite(bound) else None
    bounds = [design_bound_of(b.g) for b in blocks]
    return None if any(b is None for b in bounds) else max(bounds)  # type: ignore[type-var]


def after_dequantize(transform: ComposedTransform) -> ComposedTransform:
    """``transform`` without a leading [`Dequantize`][iresnet.transforms.Dequantize]: the
    deterministic bijection whose input is the continuous (dequantised) image in ``[0, 1)``."""
    if len(transform) > 0 and isinstance(transform[0], Dequantize):
        return transform[1:]
    return transform


def continuous_part(transform: ComposedTransform, x: Tensor) -> tuple[ComposedTransform, Tensor]:
    """The deterministic bijective part of ``transform`` and its input for data ``x``.

    A transform that starts with [`Dequantize`][iresnet.transforms.Dequantize] is reconstructed from
    the cell midpoints (its own inverse rounds, which would hide every error below a level).
    """
    if len(transform) > 0 and isinstance(transform[0], Dequantize):
        return transform[1:], transform[0].midpoints(x)
    return transform, x


def _finite_max(t: Tensor | None) -> float | None:
    if t is None or not t.numel():
        return None
    worst = float(t.max())
    return worst if math.isfinite(worst) else None


def inverse_summary(report: InverseReport) -> dict[str, Any]:
    """Iterations, convergence and the certified errors of an inverse (JSON-ready; a bound that
    is not finite or not known is ``None``).

    ``inverse_error_bound``: the largest certified reconstruction error of a sample, each
    solve's error carried through the later inverses by their Lipschitz bounds (a worst case
    that grows like ``prod_k 1/(1 - L_k)`` with depth); ``inverse_solve_error_bound``: the
    largest certified error of a single block's solve (``L/(1-L) ||G(x) - x||``).
    """
    bound = _finite_max(report.error_bound)
    per_solve = [_finite_max(d.a_posteriori_bound) for d in report]
    solve_bound = max(per_solve) if per_solve and None not in per_solve else None
    if not len(report):
        return {
            "inverse_iterations_mean": 0.0,
            "inverse_iterations_max": 0,
            "inverse_converged": True,
            "inverse_error_bound": bound,
            "inverse_solve_error_bound": solve_bound,
        }
    means = torch.stack([d.iterations.double().mean() for d in report])
    return {
        "inverse_iterations_mean": float(means.mean()),
        "inverse_iterations_max": max(int(d.iterations.max()) for d in report),
        "inverse_converged": report.all_converged,
        "inverse_error_bound": bound,
        "inverse_solve_error_bound": solve_bound,
    }


class Task:
    """What is being learned: batches, the loss, the evaluations and the samples of a run.

    Subclasses implement ``batch``, ``loss``, ``evaluate``,
    ``full_evaluation`` and ``sample``; the trainer is task-agnostic.
    """

    #: name of the main metric in the progress bar and metrics.jsonl
    metric: str = "nll"
    #: test samples per evaluation batch
    eval_batch: int = 1024

    #: Wraps the test batches of an evaluation, ``progress(batches, total)`` (a progress bar:
    #: ``iresnet evaluate`` sets one); None: the batches as they are.
    progress: Callable[[Iterable[Any], int], Iterable[Any]] | None = None

    def __init__(self, cfg: Config, data: DataBundle, device: torch.device) -> None:
        self.cfg, self.data, self.device = cfg, stage_data(data, device), device
        self.dim = math.prod(data.event_shape)

    def scored_exactly_up_to(self, exact_max_dim: int = 64) -> int:
        """The largest dimension whose likelihood ``evaluate`` and ``score`` compute with the
        exact log-det: ``exact_max_dim``, or the run's own dimension where it trained with the
        exact log-det (its Jacobian fitted every training step; a 65-D run was scored by the
        roulette, with its noise, while its own estimator was exact)."""
        if self.cfg.model.logdet == "exact":
            return max(exact_max_dim, self.dim)
        return exact_max_dim

    def n_train(self) -> int:
        return self.data.train_x.shape[0]

    def n_evaluated(self, max_batches: int | None) -> int:
        """Test samples a periodic evaluation of ``max_batches`` batches scores."""
        n = self.data.test_x.shape[0]
        return n if max_batches is None else min(n, max_batches * self.eval_batch)

    def batch(self, split: str, idx: Tensor) -> Any:
        """The batch of ``split`` (``"train"`` or ``"test"``) at indices ``idx``."""
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: Any) -> tuple[Tensor, dict[str, Tensor]]:
        """The training loss and its metrics (detached)."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, max_batches: int | None = None) -> dict[str, float]:
        """Test metrics during training (at most ``max_batches`` test batches)."""
        raise NotImplementedError

    def full_evaluation(
        self,
        model: nn.Module,
        *,
        n_inverse: int | None = None,
        exact_max_dim: int = 64,
        roulette_exact: int = 20,
        n_test: int | None = None,
    ) -> dict[str, Any]:
        """Everything ``iresnet evaluate`` reports, on the first ``n_test`` test points (all by
        default) and ``n_inverse`` reconstructions (see ``inverse_count``: by default 512, at
        most ``n_test``); log-likelihoods with the exact log-det up to
        ``exact_max_dim`` dimensions, else the roulette with ``roulette_exact`` fixed terms."""
        raise NotImplementedError

    def sample(
        self, model: nn.Module, n: int, temperature: float = 1.0
    ) -> tuple[Tensor, InverseReport]:
        """``n`` samples in data units and the inverse's report."""
        raise NotImplementedError

    def test_batches(
        self, batch_size: int, max_batches: int | None = None, limit: int | None = None
    ) -> Iterator[Any]:
        """Consecutive test batches of the first ``limit`` points (all by default)."""
        n = self.data.test_x.shape[0] if limit is None else min(limit, self.data.test_x.shape[0])
        for i, start in enumerate(range(0, n, batch_size)):
            if max_batches is not None and i >= max_batches:
                return
            yield self.batch("test", torch.arange(start, min(start + batch_size, n)))

    def model_dtype(self, model: nn.Module) -> torch.dtype:
        p = next(model.parameters(), None)
        return p.dtype if p is not None else torch.get_default_dtype()
