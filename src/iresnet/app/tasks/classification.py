"""Classification and hybrid (density + classification) tasks.

Classifier: images of integer levels ``x in {0..K-1}`` enter as ``x / (K - 1)`` in ``[0, 1]``
(with ``train.augment``, randomly translated and, for colour images, flipped); the loss is the
cross-entropy, with accuracy beside it.

Hybrid (Nalisnick et al., arXiv:1902.02767; Residual Flows, arXiv:1906.02735, sec. 6): the model
dequantises and logit-transforms the levels itself, like the image flows, and the loss is

    ``density_weight * bpd(x) + CE(logits(x), y)``,   ``bpd = -log p(x + v) / (D log 2)``.

``density_weight = 1`` on bits/dim equals Residual Flows' ``lambda = 1 / (D log 2)`` on nats.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...certificate import certify
from ...datasets import DataBundle
from ...errors import ConfigError, InverseNotConvergedWarning
from ...ops import LogDetEstimator
from ...transforms import InverseReport, bits_per_dim, swap_logdets
from ..config import Config
from .base import (
    Task,
    after_dequantize,
    categorical_bits_per_dim,
    continuous_part,
    evaluating,
    inverse_count,
    inverse_summary,
    mean_se,
    scoring_estimator,
    scoring_lipschitz,
)

__all__ = ["ClassificationTask", "HybridTask", "augment"]

Batch = tuple[Tensor, Tensor]  # integer levels (B, C, H, W) and labels (B,)

VANILLA_NOTE = (
    "unconstrained (vanilla) model: no inverse is guaranteed (Lip(g) is not bounded below 1); "
    "its inverse figures are what the fixed-point iteration gave"
)
#: A vanilla hybrid's bits/dim: the change of variables on a map not known to be a bijection
#: (try-out 10, F15).
VANILLA_DENSITY_NOTE = (
    "; and its test_bpd applies the change of variables to a map not known to be invertible: "
    "not the bits/dim of a density"
)


def augment(x: Tensor, flip: bool) -> Tensor:
    """Random translation by up to ``H // 8`` pixels (zero fill) and, with ``flip``, a random
    horizontal flip, independently per image. ``x``: ``(B, C, H, W)`` floats."""
    b, _, h, w = x.shape
    pad = max(1, h // 8)
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (b,), device=x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    idx_b = torch.arange(b, device=x.device)[:, None, None, None]
    idx_c = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    out = padded[idx_b, idx_c, rows, cols]
    if flip:
        mask = torch.rand(b, device=x.device) < 0.5
        out = torch.where(mask[:, None, None, None], out.flip(-1), out)
    return out


class ClassificationTask(Task):
    """Cross-entropy classification of images; metrics ``loss``, ``acc``; evaluation
    ``test_error`` (a fraction) and ``test_loss``."""

    metric = "loss"
    eval_batch = 500
    #: whether the model also has a density (reported in bits/dim)
    has_density = False

    def __init__(self, cfg: Config, data: DataBundle, device: torch.device) -> None:
        super().__init__(cfg, data, device)
        if data.kind != "image" or data.train_y is None or data.test_y is None:
            raise ConfigError(
                f"model.kind={cfg.model.kind} needs a labelled image data set "
                f"(digits, mnist, fashion-mnist, cifar10), got '{data.name}'"
            )
        self.n_levels = int(data.n_levels or 256)

    def batch(self, split: str, idx: Tensor) -> Batch:
        xs, ys = (
            (self.data.train_x, self.data.train_y)
            if split == "train"
            else (self.data.test_x, self.data.test_y)
        )
        assert ys is not None
        return xs[idx].to(self.device), ys[idx].to(self.device)

    def inputs(self, model: nn.Module, x: Tensor, *, train: bool = False) -> Tensor:
        """Network inputs from integer levels: ``x / (K - 1)`` in ``[0, 1]`` (augmented in
        training when ``train.augment``)."""
        u = x.to(self.model_dtype(model)) / (self.n_levels - 1)
        if train and self.cfg.train.augment:
            u = augment(u, flip=u.shape[1] == 3)
        return u

    def predict(
        self, model: nn.Module, x: Tensor, *, train: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """Logits ``(B, classes)`` and, for hybrids, bits/dim ``(B,)`` (else None)."""
        return model(self.inputs(model, x, train=train)), None

    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        x, y = batch
        logits, bpd = self.predict(model, x, train=True)
        ce = F.cross_entropy(logits, y)
        acc = (logits.detach().argmax(1) == y).float().mean()
        metrics = {"loss": ce.detach(), "acc": acc}
        if bpd is None:
            return ce, metrics
        bpd_mean = bpd.mean()
        loss = self.cfg.train.density_weight * bpd_mean + ce
        return loss, {**metrics, "loss": loss.detach(), "ce": ce.detach(), "bpd": bpd_mean.detach()}

    def evaluate(
        self,
        model: nn.Module,
        max_batches: int | None = None,
        limit: int | None = None,
        *,
        estimator: LogDetEstimator | None = None,
    ) -> dict[str, float]:
        """Test error (a fraction) and cross-entropy (nats), and for hybrids bits/dim, each
        with its standard error over the test images (``*_se``), over the first ``limit`` test
        images (all by default), in eval mode: the one evaluation
        loop of classifiers. Hybrids' bits/dim use ``estimator``, by default the
        [`scoring_estimator`][iresnet.app.tasks.base.scoring_estimator] (as ``iresnet evaluate``),
        never the training one."""
        wrongs, ces, bpds = [], [], []
        # Hybrids' bits/dim with the scoring estimator (or the one given), as the density
        # task's evaluations: never the cheap roulette the model trains with.
        if estimator is None and self.has_density:
            bound = scoring_lipschitz(model, certified=False)
            estimator = scoring_estimator(self.dim, lipschitz=bound)[1]
        with evaluating(model), swap_logdets(model, estimator):
            for x, y in self.test_batches(self.eval_batch, max_batches, limit):
                logits, bpd = self.predict(model, x)
                ces.append(F.cross_entropy(logits, y, reduction="none"))
                wrongs.append(logits.argmax(1) != y)
                if bpd is not None:
                    bpds.append(bpd)
        # Standard errors over the test images: the error is a mean of 0/1 indicators
        # (binomial), and a hybrid's is itself stochastic (dequantisation noise).
        out = dict(
            zip(("test_error", "test_error_se"), mean_se(torch.cat(wrongs).double()), strict=True)
        )
        out["test_loss"], out["test_loss_se"] = mean_se(torch.cat(ces))
        if bpds:
            out["test_bpd"], out["test_bpd_se"] = mean_se(torch.cat(bpds))
        return out

    def full_evaluation(
        self,
        model: nn.Module,
        *,
        n_inverse: int | None = None,
        exact_max_dim: int = 64,
        roulette_exact: int = 20,
        n_test: int | None = None,
    ) -> dict[str, Any]:
        """Test error on the test set (the first ``n_test`` images; all by default; hybrids:
        bits/dim with the best log-det estimator the dimension allows, and ``categorical_bpd``,
        independent per-pixel categoricals on the same images), the certificate and the
        feature inverse check.

        ``feature_inverse_max_error = max |x - F^{-1}(F(x))|`` over the first ``n_inverse`` test
        images (by default 512, at most ``n_test``: see ``inverse_count``), in network-input
        units (``[0, 1]``); for the unconstrained model a ``note`` says that no inverse is
        guaranteed. Never raises on a failed inverse.
        """
        n = int(self.data.test_x.shape[0])
        out: dict[str, Any] = {"n_test": n if n_test is None else min(n, n_test)}
        estimator = None
        cert = certify(model)
        if self.has_density:
            bound = scoring_lipschitz(model, certified=True, certificate=cert)
            out["estimator"], estimator = scoring_estimator(
                self.dim, self.scored_exactly_up_to(exact_max_dim), roulette_exact, bound
            )
        out.update(self.evaluate(model, limit=n_test, estimator=estimator))
        if "test_bpd" in out:  # a hybrid: the yardstick of its density, as image flows report it
            out["categorical_bpd"], out["categorical_bpd_se"] = categorical_bits_per_dim(
                self.data.train_x, self.data.test_x[: out["n_test"]], self.n_levels
            )
        out["constrained"] = bool(self.cfg.model.constrained)
        out["coeff"] = self.cfg.model.coeff if self.cfg.model.constrained else None
        out["invertible"] = cert.invertible
        out["max_lipschitz"] = cert.max_bound
        out.update(self.feature_inverse_check(model, inverse_count(n_inverse, n_test)))
        if not self.cfg.model.constrained:
            out["note"] = VANILLA_NOTE + (VANILLA_DENSITY_NOTE if self.has_density else "")
        out["certificate"] = cert.to_dict()
        return out

    def network_input(self, model: nn.Module, x: Tensor) -> tuple[Any, Tensor]:
        """The invertible part of the model and its (deterministic) input for levels ``x``."""
        return model.trunk, self.inputs(model, x)

    def reconstruct(
        self, model: nn.Module, n: int
    ) -> tuple[Tensor, Tensor, InverseReport, list[str]]:
        """The first ``n`` test images as network inputs ``x``, ``F^{-1}(F(x))``, the solver
        diagnostics and the messages of any non-convergence warnings."""
        with evaluating(model), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", InverseNotConvergedWarning)
            trunk, x = self.network_input(model, self.data.test_x[:n].to(self.device))
            try:
                rec, diagnostics = trunk.inverse_with_diagnostics(trunk(x)[0])
            except (RuntimeError, FloatingPointError) as exc:  # e.g. overflow in a solver
                failed = InverseReport([], None)
                return x, torch.full_like(x, math.nan), failed, [f"inverse failed: {exc}"]
        msgs = [
            str(w.message) for w in caught if issubclass(w.category, InverseNotConvergedWarning)
        ]
        return x, rec, diagnostics, msgs

    def feature_inverse_check(self, model: nn.Module, n: int) -> dict[str, Any]:
        x, rec, diagnostics, msgs = self.reconstruct(model, max(1, n))
        err = (rec - x).abs().flatten(1).amax(1)
        finite = bool(torch.isfinite(err).all())
        summary = inverse_summary(diagnostics)
        out: dict[str, Any] = {
            "n_inverse": int(x.shape[0]),
            "feature_inverse_max_error": float(err.max()) if finite else None,
            "feature_inverse_median_error": float(err.median()) if finite else None,
            "feature_inverse_finite": finite,
            "inverse_converged": bool(diagnostics) and summary["inverse_converged"] and not msgs,
            "inverse_iterations_max": summary["inverse_iterations_max"],
            "inverse_warnings": len(msgs),
            # Certified bound of ||x - F^-1(F(x))||_2 per image (constrained models only).
            "feature_inverse_error_bound": summary["inverse_error_bound"],
        }
        if not finite:
            out["feature_inverse_diverged_fraction"] = float((~torch.isfinite(err)).float().mean())
        if msgs:
            out["inverse_warning"] = msgs[0]
        return out

    def sample(
        self, model: nn.Module, n: int, temperature: float = 1.0
    ) -> tuple[Tensor, InverseReport]:
        raise ConfigError(
            "a classifier models no density, so there is nothing to sample; "
            "train a hybrid model (model.kind=hybrid) to sample images"
        )

    def curve_keys(self) -> tuple[str, ...]:
        """Metrics of the learning-curve picture."""
        return ("loss", "test_loss")


class HybridTask(ClassificationTask):
    """``density_weight * bits/dim + cross-entropy``; metrics ``loss``, ``ce``, ``bpd``, ``acc``;
    evaluation ``test_bpd``, ``test_error``, ``test_loss`` (cross-entropy)."""

    has_density = True
    #: what ``iresnet score`` reads (as of an unconditional image flow): levels, no contexts
    images = True
    context_dim = 0

    def log_prob(self, model: nn.Module, batch: Tensor) -> Tensor:
        """``log p(x)`` in nats of integer levels ``x``, the density ``evaluate`` reports."""
        return model.log_prob(batch)

    def value(self, log_prob: Tensor) -> Tensor:
        """Per-image bits/dim."""
        return bits_per_dim(log_prob, self.dim)

    def predict(
        self, model: nn.Module, x: Tensor, *, train: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        if train and self.cfg.train.augment:  # moves whole levels: they stay integers
            x = augment(x.to(self.model_dtype(model)), flip=x.shape[1] == 3)
        logits, log_prob = model(x, return_log_prob=True)
        return logits, bits_per_dim(log_prob, self.dim)

    def network_input(self, model: nn.Module, x: Tensor) -> tuple[Any, Tensor]:
        return continuous_part(model.trunk, x)

    def sample(
        self, model: nn.Module, n: int, temperature: float = 1.0
    ) -> tuple[Tensor, InverseReport]:
        """Images ``x = F^{-1}(z)``, ``z ~ N(0, T^2 I)`` of the feature shape, in ``[0, 1]``."""
        with evaluating(model):
            z = torch.randn(
                n, *model.feature_shape, device=self.device, dtype=self.model_dtype(model)
            )
            x, diagnostics = after_dequantize(model.trunk).inverse_with_diagnostics(z * temperature)
        return x.clamp(0, 1), diagnostics

    def curve_keys(self) -> tuple[str, ...]:
        return ("loss", "bpd", "test_bpd", "ce", "test_loss")
