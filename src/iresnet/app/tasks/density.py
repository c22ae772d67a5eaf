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
from ...transforms import (
    InverseReport,
    InvertibleResidualBlock,
    VariationalDequantize,
    bits_per_dim,
    swap_logdets,
    uniform_dequantization,
)
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

    def batch(self, split: str, idx: Tensor) -> Tensor:
        source = self.data.train_x if split == "train" else self.data.test_x
        return source[idx].to(self.device, non_blocking=True)

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
        return torch.cat([model.log_prob(b) for b in self.test_batches(1024, max_batches, limit)])

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
        # The estimators the model trains with (a roulette says what it chose, and for which
        # Lipschitz bound), before the scoring estimator replaces them.
        training = sorted(
            {
                repr(m.logdet_estimator)
                for m in model.modules()
                if isinstance(m, InvertibleResidualBlock)
            }
        )
        with evaluating(model), swap_logdets(model, estimator):
            logps = self.log_probs(model, limit=n_test)
        out: dict[str, Any] = {"estimator": name, "n_test": int(logps.shape[0])}
        out["training_logdets"] = "; ".join(training)
        out[f"test_{self.metric}"], out[f"test_{self.metric}_se"] = mean_se(self.value(logps))
        if self.images:
            nats = self.dim * math.log(2)  # bits/dim -> nats per image
            out["test_nll"], out["test_nll_se"] = out["test_bpd"] * nats, out["test_bpd_se"] * nats
            variational = any(isinstance(m, VariationalDequantize) for m in model.modules())
            out["dequantization"] = "variational" if variational else "uniform"
            if variational:
                # test_bpd is -ELBO (an upper bound of the code length); the same model's
                # uniform-dequantisation bound beside it, on the same points.
                with (
                    evaluating(model),
                    swap_logdets(model, estimator),
                    uniform_dequantization(model),
                ):
                    uniform = self.value(self.log_probs(model, limit=n_test))
                out["test_bpd_uniform"], out["test_bpd_uniform_se"] = mean_se(uniform)
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
