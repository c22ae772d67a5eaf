"""Density estimation: maximum likelihood of a flow on vectors (nats) or images (bits/dim).

The model carries its preprocessing (standardisation of user arrays, dequantisation and the
logit map of images, each with its log-det), so ``model.log_prob(x)`` is already the
log-density of the data in their own units: nats for vectors, and for images the density of
the dequantised levels, ``bpd = -log p / (D log 2)``
([`bits_per_dim`][iresnet.transforms.bits_per_dim]).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from ...certificate import certify
from ...datasets import DataBundle
from ...flows import Flow
from ...transforms import InverseReport, bits_per_dim, swap_logdets
from ..config import Config
from .base import (
    Task,
    after_dequantize,
    continuous_part,
    evaluating,
    inverse_summary,
    mean_se,
    scoring_estimator,
)

__all__ = ["DensityTask"]


class DensityTask(Task):
    """Maximum likelihood of a [`Flow`][iresnet.Flow]; metric ``nll`` (nats) or ``bpd``."""

    def __init__(self, cfg: Config, data: DataBundle, device: torch.device) -> None:
        super().__init__(cfg, data, device)
        self.images = data.kind == "image"
        self.metric = "bpd" if self.images else "nll"
        width = data.dequantize_width
        self.cell = None if width is None else torch.tensor(width, dtype=torch.float64).to(device)

    def batch(self, split: str, idx: Tensor) -> Tensor:
        source = self.data.train_x if split == "train" else self.data.test_x
        x = source[idx].to(self.device, non_blocking=True)
        if split == "train" and self.cell is not None:
            # Fresh uniform dequantisation each step (the test split holds one fixed draw).
            x = x + self.cell.to(x.dtype) * (torch.rand_like(x) - 0.5)
        return x

    def value(self, log_prob: Tensor) -> Tensor:
        """Per-sample loss values: bits/dim for images, the NLL in nats for vectors."""
        return bits_per_dim(log_prob, self.dim) if self.images else -log_prob

    def loss(self, model: nn.Module, batch: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        value = self.value(model.log_prob(batch)).mean()
        # The log-det values are estimates (never a gradient surrogate), so this is a likelihood.
        return value, {self.metric: value.detach()}

    def log_probs(
        self, model: nn.Module, max_batches: int | None = None, limit: int | None = None
    ) -> Tensor:
        """``log p`` of the test points (the one evaluation loop); call in eval mode."""
        return torch.cat(
            [model.log_prob(b) for b in self.test_batches(self.eval_batch, max_batches, limit)]
        )

    def evaluate(self, model: nn.Module, max_batches: int | None = None) -> dict[str, float]:
        with evaluating(model):
            mean, se = mean_se(self.value(self.log_probs(model, max_batches)))
        return {f"test_{self.metric}": mean, f"test_{self.metric}_se": se}

    def full_evaluation(
        self,
        model: nn.Module,
        *,
        n_inverse: int = 512,
        exact_max_dim: int = 64,
        roulette_exact: int = 20,
        n_test: int | None = None,
    ) -> dict[str, Any]:
        """Test likelihood with the best estimator the dimension allows, the gap to the truth,
        the inverse's reconstruction error and the certificate.

        ``n_test``: evaluate the likelihood on the first ``n_test`` test points only (all by
        default); the standard error is over the points evaluated (estimator noise included).
        """
        name, estimator = scoring_estimator(self.dim, exact_max_dim, roulette_exact)
        with evaluating(model), swap_logdets(model, estimator):
            logps = self.log_probs(model, limit=n_test)
        out: dict[str, Any] = {"estimator": name, "n_test": int(logps.shape[0])}
        out[f"test_{self.metric}"], out[f"test_{self.metric}_se"] = mean_se(self.value(logps))
        if self.images:
            nats = self.dim * math.log(2)  # bits/dim -> nats per image
            out["test_nll"], out["test_nll_se"] = out["test_bpd"] * nats, out["test_bpd_se"] * nats
        if self.data.dequantize_width is not None:
            # E_u[-log p(x + w u)] - sum log w >= -log P(x): a bound on the discrete NLL.
            cells = [w for w in self.data.dequantize_width if w > 0]
            out["dequantized_columns"] = len(cells)
            out["discrete_nll_bound"] = out["test_nll"] - math.fsum(math.log(w) for w in cells)
        out["entropy_gap"] = out["entropy_gap_se"] = out["true_entropy"] = None
        if self.data.true_log_density is not None:
            # KL(p || q) = E_p[log p - log q], estimated on the test draws from p (paired, so
            # the standard error is that of the difference, not of two separate means).
            test_x = self.data.test_x[: logps.shape[0]]
            truth = self.data.true_log_density(test_x.double()).to(logps.device)
            out["entropy_gap"], out["entropy_gap_se"] = mean_se(truth - logps.double())
            entropy = self.data.true_entropy()
            if entropy is not None:
                out["true_entropy"], out["true_entropy_se"] = entropy
        out.update(self.inverse_check(model, n_inverse))
        cert = certify(model)
        out["invertible"] = cert.invertible
        out["max_lipschitz"] = cert.max_bound
        out["certificate"] = cert.to_dict()
        return out

    def reconstruct(self, model: Flow, n: int) -> tuple[Tensor, Tensor, InverseReport]:
        """The first ``n`` test points ``x`` in the flow's continuous input space (data units;
        images: cell midpoints in ``[0, 1)``), ``f^{-1}(f(x))`` and the solver diagnostics."""
        with evaluating(model):
            body, x = continuous_part(model.transform, self.data.test_x[:n].to(self.device))
            rec, diagnostics = body.inverse_with_diagnostics(body(x)[0])
        return x, rec, diagnostics

    def inverse_check(self, model: Flow, n: int) -> dict[str, Any]:
        """``max |x - f^{-1}(f(x))|`` over ``n`` test points (see ``reconstruct``)."""
        x, rec, diagnostics = self.reconstruct(model, n)
        return {
            "inverse_max_error": float((rec - x.to(rec.dtype)).abs().max()),
            **inverse_summary(diagnostics),
        }

    def sample(self, model: Flow, n: int, temperature: float = 1.0) -> tuple[Tensor, InverseReport]:
        """Samples in data units and the diagnostics; images: the dequantised sample (before
        rounding to levels), in ``[0, 1]``."""
        with evaluating(model):
            z = model.sample_latent(n, temperature)
            x, diagnostics = after_dequantize(model.transform).inverse_with_diagnostics(z)
        return (x.clamp(0, 1) if self.images else x), diagnostics
