"""Density estimation: maximum likelihood of a flow on vectors (nats) or images (bits/dim).

The model carries its preprocessing (standardisation of user arrays, dequantisation and the
logit map of images, each with its log-det), so ``model.log_prob(x)`` is already the
log-density of the data in their own units: nats for vectors, and for images the density of
the dequantised levels, ``bpd = -log p / (D log 2)``
([`bits_per_dim`][iresnet.transforms.bits_per_dim]).

Conditional data (contexts from a file, a conditional toy, or class labels of images) trains
``log p(x | c)``: a batch is ``(x, c)`` and every evaluation scores each point at its own
context; conditional toys also report the gap to the truth at each of a few fixed contexts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
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
    categorical_bits_per_dim,
    continuous_part,
    evaluating,
    inverse_count,
    inverse_summary,
    mean_se,
    scoring_estimator,
    scoring_lipschitz,
)

__all__ = ["DensityTask"]


class DensityTask(Task):
    """Maximum likelihood of a [`Flow`][iresnet.Flow]; metric ``nll`` (nats) or ``bpd``."""

    def __init__(self, cfg: Config, data: DataBundle, device: torch.device) -> None:
        super().__init__(cfg, data, device)
        self.images = data.kind == "image"
        self.metric = "bpd" if self.images else "nll"
        self.context_dim = data.context_dim
        width = data.dequantize_width
        self.cell = None if width is None else torch.tensor(width, dtype=torch.float64).to(device)

    def contexts(self, split: str, idx: Tensor) -> Tensor | None:
        """The contexts of the points ``idx`` of ``split`` as the flow takes them (in their own
        units; class labels one-hot), or None for unconditional data."""
        if not self.context_dim:
            return None
        if self.data.class_context:
            labels = self.data.train_y if split == "train" else self.data.test_y
            assert labels is not None
            return self.one_hot(labels[idx])
        source = self.data.train_c if split == "train" else self.data.test_c
        assert source is not None
        return source[idx].to(self.device, non_blocking=True)

    def one_hot(self, labels: Tensor) -> Tensor:
        """Class labels ``(n,)`` as one-hot contexts ``(n, n_classes)`` on the task's device."""
        return F.one_hot(labels.long().to(self.device), self.context_dim).float()

    def batch(self, split: str, idx: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        source = self.data.train_x if split == "train" else self.data.test_x
        x = source[idx].to(self.device, non_blocking=True)
        if split == "train" and self.cell is not None:
            # Fresh uniform dequantisation each step (the test split holds one fixed draw).
            x = x + self.cell.to(x.dtype) * (torch.rand_like(x) - 0.5)
        c = self.contexts(split, idx)
        return x if c is None else (x, c)

    def log_prob(self, model: nn.Module, batch: Tensor | tuple[Tensor, Tensor]) -> Tensor:
        """``log p(x)``, or ``log p(x | c)`` for a batch ``(x, c)``, in nats."""
        if isinstance(batch, tuple):
            x, c = batch
            return model.log_prob(x, c.to(self.model_dtype(model)))
        return model.log_prob(batch)

    def value(self, log_prob: Tensor) -> Tensor:
        """Per-sample loss values: bits/dim for images, the NLL in nats for vectors."""
        return bits_per_dim(log_prob, self.dim) if self.images else -log_prob

    def loss(
        self, model: nn.Module, batch: Tensor | tuple[Tensor, Tensor]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        value = self.value(self.log_prob(model, batch)).mean()
        # The log-det values are estimates (never a gradient surrogate), so this is a likelihood.
        return value, {self.metric: value.detach()}

    def log_probs(
        self, model: nn.Module, max_batches: int | None = None, limit: int | None = None
    ) -> Tensor:
        """``log p`` of the test points (the one evaluation loop); call in eval mode."""
        batches: Iterable[Any] = self.test_batches(self.eval_batch, max_batches, limit)
        if self.progress is not None:
            n = self.data.test_x.shape[0] if limit is None else min(limit, len(self.data.test_x))
            total = -(-n // self.eval_batch)
            batches = self.progress(
                batches, total if max_batches is None else min(total, max_batches)
            )
        return torch.cat([self.log_prob(model, b) for b in batches])

    def evaluate(self, model: nn.Module, max_batches: int | None = None) -> dict[str, float]:
        """Test metric on ``max_batches`` test batches, scored with the estimator that
        ``iresnet evaluate`` uses ([`scoring_estimator`][iresnet.app.tasks.base.scoring_estimator]),
        not the one the model trains with: a cheap training roulette (two sure terms and
        Geometric(1/2) at ``Lip(g) = 0.94``) has infinite variance, and one draw of its number
        of terms serves a whole evaluation batch, so its periodic test bits/dim jumped by
        0.4 between evaluations of the same weights. Its roulette's law is chosen from the
        blocks' design bound (the certificate would cost seconds per evaluation; see
        [`scoring_lipschitz`][iresnet.app.tasks.base.scoring_lipschitz] for what that does not
        prove)."""
        _, estimator = scoring_estimator(
            self.dim, lipschitz=scoring_lipschitz(model, certified=False)
        )
        with evaluating(model), swap_logdets(model, estimator):
            mean, se = mean_se(self.value(self.log_probs(model, max_batches)))
        return {f"test_{self.metric}": mean, f"test_{self.metric}_se": se}

    def full_evaluation(
        self,
        model: nn.Module,
        *,
        n_inverse: int | None = None,
        exact_max_dim: int = 64,
        roulette_exact: int = 20,
        n_test: int | None = None,
    ) -> dict[str, Any]:
        """Test likelihood with the best estimator the dimension allows, the gap to the truth,
        the inverse's reconstruction error and the certificate.

        ``n_test``: evaluate the likelihood on the first ``n_test`` test points only (all by
        default); the standard error is over the points evaluated (estimator noise included).
        """
        cert = certify(model)  # its bound chooses a roulette of finite variance
        bound = scoring_lipschitz(model, certified=True, certificate=cert)
        name, estimator = scoring_estimator(
            self.dim, self.scored_exactly_up_to(exact_max_dim), roulette_exact, bound
        )
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
            if self.data.train_x.shape[0] and self.data.n_levels:
                # The yardstick: independent per-pixel categoricals on the same test images.
                out["categorical_bpd"], out["categorical_bpd_se"] = categorical_bits_per_dim(
                    self.data.train_x, self.data.test_x[: logps.shape[0]], self.data.n_levels
                )
                if self.data.class_context:  # a model of p(x | y): per-class categoricals too
                    per_class = categorical_bits_per_dim(
                        self.data.train_x,
                        self.data.test_x[: logps.shape[0]],
                        self.data.n_levels,
                        self.data.train_y,
                        self.data.test_y[: logps.shape[0]],
                    )
                    out["categorical_bpd_per_class"], out["categorical_bpd_per_class_se"] = (
                        per_class
                    )
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
        if self.data.dequantize_width is not None:
            # E_u[-log p(x + w u)] - sum log w >= -log P(x): a bound on the discrete NLL.
            cells = [w for w in self.data.dequantize_width if w > 0]
            out["dequantized_columns"] = len(cells)
            out["discrete_nll_bound"] = out["test_nll"] - math.fsum(math.log(w) for w in cells)
        out["entropy_gap"] = out["entropy_gap_se"] = out["true_entropy"] = None
        if self.data.true_conditional_log_density is not None:
            # E_c KL(p(.|c) || q(.|c)) on the test pairs, and KL at each reporting context.
            n = logps.shape[0]
            test_x, test_c = self.data.test_x[:n].double(), self.data.test_c[:n].double()  # type: ignore[index]
            truth = self.data.true_conditional_log_density(test_x, test_c).to(logps.device)
            out["entropy_gap"], out["entropy_gap_se"] = mean_se(truth - logps.double())
            # The conditional entropy E_c H(x | c), Monte Carlo over the same test pairs.
            out["true_entropy"], out["true_entropy_se"] = mean_se(-truth)
            out.update(self.kl_per_context(model, estimator))
        elif self.data.true_log_density is not None:
            # KL(p || q) = E_p[log p - log q], estimated on the test draws from p (paired, so
            # the standard error is that of the difference, not of two separate means).
            test_x = self.data.test_x[: logps.shape[0]]
            truth = self.data.true_log_density(test_x.double()).to(logps.device)
            out["entropy_gap"], out["entropy_gap_se"] = mean_se(truth - logps.double())
            # H(p), Monte Carlo over the same test draws (as for the conditional toys), so that
            # test_nll - true_entropy = entropy_gap whatever --n-test keeps.
            out["true_entropy"], out["true_entropy_se"] = mean_se(-truth)
        out.update(self.inverse_check(model, inverse_count(n_inverse, n_test)))
        out["invertible"] = cert.invertible
        out["max_lipschitz"] = cert.max_bound
        out["certificate"] = cert.to_dict()
        return out

    def kl_per_context(
        self, model: nn.Module, estimator: Any, n: int = 4096, seed: int = 0
    ) -> dict[str, Any]:
        """``KL(p(.|c) || q(.|c))`` in nats at each of the data's reporting contexts, from
        ``n`` fresh draws of the truth per context (seeded), with standard errors; and their
        mean over the contexts (its SE from the independent per-context SEs)."""
        assert self.data.sample_given is not None and self.data.report_contexts is not None
        assert self.data.true_conditional_log_density is not None
        g = torch.Generator().manual_seed(seed)
        rows = []
        dtype = self.model_dtype(model)
        with evaluating(model), swap_logdets(model, estimator):
            for c in self.data.report_contexts:
                cs = c.expand(n, -1).double()
                x = self.data.sample_given(cs, g)
                truth = self.data.true_conditional_log_density(x, cs)
                q = model.log_prob(x.to(self.device, dtype), cs.to(self.device, dtype))
                kl, se = mean_se(truth - q.double().cpu())
                rows.append({"context": c.tolist(), "kl": kl, "kl_se": se})
        mean = sum(r["kl"] for r in rows) / len(rows)
        se = math.sqrt(sum(r["kl_se"] ** 2 for r in rows)) / len(rows)
        return {
            "kl_mean_over_contexts": mean,
            "kl_mean_over_contexts_se": se,
            "kl_per_context": rows,
        }

    def reconstruct(self, model: Flow, n: int) -> tuple[Tensor, Tensor, InverseReport]:
        """The first ``n`` test points ``x`` in the flow's continuous input space (data units;
        images: cell midpoints in ``[0, 1)``), ``f^{-1}(f(x))`` and the solver diagnostics
        (at each point's context for conditional data)."""
        n = min(n, self.data.test_x.shape[0])
        with evaluating(model):
            body, x = continuous_part(model.transform, self.data.test_x[:n].to(self.device))
            c = self.contexts("test", torch.arange(n))
            if c is None:
                rec, diagnostics = body.inverse_with_diagnostics(body(x)[0])
            else:
                cs = model.check_context(c.to(self.model_dtype(model)), "reconstruct")
                rec, diagnostics = body.inverse_with_diagnostics(body(x, c=cs)[0], c=cs)
        return x, rec, diagnostics

    def inverse_check(self, model: Flow, n: int) -> dict[str, Any]:
        """``max |x - f^{-1}(f(x))|`` over ``n`` test points (see ``reconstruct``)."""
        x, rec, diagnostics = self.reconstruct(model, n)
        return {
            "n_inverse": int(x.shape[0]),
            "inverse_max_error": float((rec - x.to(rec.dtype)).abs().max()),
            **inverse_summary(diagnostics),
        }

    def default_contexts_source(self) -> str:
        """Which contexts ``default_contexts`` gives: ``classes`` (every class), ``report``
        (a conditional toy's reporting contexts), ``mean`` (the training contexts' mean),
        ``test`` (the first test context); "" for a run that is not conditional."""
        if not self.context_dim:
            return ""
        if self.data.class_context:
            return "classes"
        if self.data.report_contexts is not None:
            return "report"
        return "mean" if self.data.context_standardizer is not None else "test"

    def default_contexts(self) -> Tensor | None:
        """The contexts ``sample`` uses when none are given: every class (class-conditional
        images), the reporting contexts of a conditional toy, else the training contexts' mean
        (saved with the run, so no data is read); ``default_contexts_source`` says which."""
        source = self.default_contexts_source()
        if not source:
            return None
        if source == "classes":
            return self.one_hot(torch.arange(self.context_dim))
        if source == "report":
            assert self.data.report_contexts is not None
            return self.data.report_contexts.to(self.device)
        if self.data.context_standardizer is not None:
            mean = torch.tensor([self.data.context_standardizer.mean], dtype=torch.float64)
            return mean.to(self.device)
        assert self.data.test_c is not None
        return self.data.test_c[:1].to(self.device)

    def sample(
        self, model: Flow, n: int, temperature: float = 1.0, contexts: Tensor | None = None
    ) -> tuple[Tensor, InverseReport]:
        """Samples in data units and the diagnostics; images: the dequantised sample (before
        rounding to levels), in ``[0, 1]``. Conditional data: ``n`` samples at each row of
        ``contexts`` ``(m, k)`` (default ``default_contexts``), grouped by context:
        ``(m * n, *event)``."""
        if self.context_dim and contexts is None:
            contexts = self.default_contexts()
        with evaluating(model):
            if contexts is None:
                z = model.sample_latent(n, temperature)
                x, diagnostics = after_dequantize(model.transform).inverse_with_diagnostics(z)
            else:
                m = contexts.shape[0]
                z = model.sample_latent(n * m, temperature)
                c = contexts.to(self.device, self.model_dtype(model)).repeat_interleave(n, 0)
                cs = model.check_context(c, "sample")
                body = after_dequantize(model.transform)
                x, diagnostics = body.inverse_with_diagnostics(z, c=cs)
        return (x.clamp(0, 1) if self.images else x), diagnostics
