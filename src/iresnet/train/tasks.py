"""What is being learned: the loss, the metrics, the evaluation and the pictures of a run.

The one training loop (:mod:`iresnet.train.loop`) is task-agnostic; a task turns batch indices
into tensors, a model and a batch into a loss, and a trained model into numbers and figures.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .. import plots
from ..certificate import certify
from ..config import Config
from ..data import DataBundle
from ..flow import Flow
from ..layers import InvertibleResidualBlock
from ..logdet import ExactLogDet, RussianRouletteLogDet
from ..preprocess import bits_per_dim, dequantize, dequantize_mid, logit_inverse, logit_transform
from .batches import stage_data

__all__ = ["Task", "DensityTask", "make_task", "exact_logdets", "swap_logdets", "mean_se"]


def mean_se(values: Tensor) -> tuple[float, float]:
    """Mean and standard error of per-sample values."""
    v = values.double()
    se = float(v.std() / math.sqrt(v.numel())) if v.numel() > 1 else float("nan")
    return float(v.mean()), se


@contextlib.contextmanager
def swap_logdets(model: nn.Module, estimator: Any) -> Iterator[None]:
    """Temporarily give every residual block the same log-det estimator."""
    blocks = [m for m in model.modules() if isinstance(m, InvertibleResidualBlock)]
    saved = [b.logdet_estimator for b in blocks]
    for b in blocks:
        b.logdet_estimator = estimator
    try:
        yield
    finally:
        for b, est in zip(blocks, saved):
            b.logdet_estimator = est


def exact_logdets(model: nn.Module, dim: int) -> contextlib.AbstractContextManager[None]:
    """Exact log-dets in every block (for evaluation, where the dimension allows)."""
    return swap_logdets(model, ExactLogDet(max_dim=dim))


class Task:
    """Interface of a learning task; see :class:`DensityTask`."""

    #: name of the main metric in the progress bar and metrics.jsonl
    metric: str = "nll"

    def __init__(self, cfg: Config, data: DataBundle, device: torch.device) -> None:
        self.cfg, self.data, self.device = cfg, stage_data(data, device), device

    def n_train(self) -> int:
        return self.data.train_x.shape[0]

    def batch(self, split: str, idx: Tensor) -> Any:
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: Any) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError

    def evaluate(self, model: nn.Module, max_batches: int | None = None) -> dict[str, float]:
        raise NotImplementedError

    def full_evaluation(self, model: nn.Module, **options: Any) -> dict[str, Any]:
        raise NotImplementedError

    def plots(self, model: nn.Module, run_dir: Path, records: list[dict[str, Any]]) -> list[Path]:
        raise NotImplementedError

    def _test_batches(self, batch_size: int, max_batches: int | None,
                      limit: int | None = None) -> Iterator[Any]:
        n = self.data.test_x.shape[0] if limit is None else min(limit, self.data.test_x.shape[0])
        for i, start in enumerate(range(0, n, batch_size)):
            if max_batches is not None and i >= max_batches:
                return
            yield self.batch("test", torch.arange(start, min(start + batch_size, n)))


class DensityTask(Task):
    """Maximum likelihood of a flow on vectors (nats) or images (bits per dimension).

    Vectors: ``log p(x) = log p_flow(z) + log|det dz/dx|`` with ``z`` the standardised data where
    the data were standardised, so every NLL is in the data's own units. Images: the integer
    levels are dequantised ``u = (x + U)/K``, optionally logit-transformed with its log-det, and
    ``bpd = (-log p(u) + D log K) / (D log 2)`` (:func:`iresnet.preprocess.bits_per_dim`).
    """

    def __init__(self, cfg: Config, data: DataBundle, device: torch.device) -> None:
        super().__init__(cfg, data, device)
        self.images = data.kind == "image"
        self.metric = "bpd" if self.images else "nll"
        self.offset = data.standardizer.log_abs_det if data.standardizer is not None else 0.0
        self.dim = int(math.prod(data.event_shape))

    def batch(self, split: str, idx: Tensor) -> Tensor:
        source = self.data.train_x if split == "train" else self.data.test_x
        return source[idx].to(self.device, non_blocking=True)

    def log_prob(self, model: nn.Module, x: Tensor, *, dequantize_noise: bool = True) -> Tensor:
        """``log p`` of a batch in the data's units: nats for vectors; for images ``log p(u)``."""
        if not self.images:
            return model.log_prob(x) + self.offset
        k = self.data.n_levels
        u = dequantize(x, k) if dequantize_noise else dequantize_mid(x, k)
        u = u.to(next(model.parameters()).dtype)
        alpha = self.cfg.data.logit_alpha
        if alpha > 0:
            z, ld = logit_transform(u, alpha)
            return model.log_prob(z) + ld
        return model.log_prob(u)

    def _value(self, logp: Tensor) -> Tensor:
        if self.images:
            return bits_per_dim(logp, self.dim, self.data.n_levels)
        return -logp

    def loss(self, model: nn.Module, batch: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        logp = self.log_prob(model, batch)
        value = self._value(logp).mean()
        # The log-det values are estimates (never a gradient surrogate), so this is a likelihood.
        return value, {self.metric: value.detach()}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, max_batches: int | None = None) -> dict[str, float]:
        values = [self._value(self.log_prob(model, b)) for b in self._test_batches(1024, max_batches)]
        mean, se = mean_se(torch.cat(values))
        return {f"test_{self.metric}": mean, f"test_{self.metric}_se": se}

    def sample(self, model: Flow, n: int, temperature: float = 1.0) -> Tensor:
        """Samples in data space (de-standardised vectors, or images in ``[0, 1]``)."""
        with torch.no_grad():
            x = model.sample(n, temperature=temperature)
            if self.images:
                alpha = self.cfg.data.logit_alpha
                return (logit_inverse(x, alpha) if alpha > 0 else x).clamp(0, 1)
            if self.data.standardizer is not None:
                return self.data.standardizer.inverse_transform(x)
            return x

    def full_evaluation(self, model: nn.Module, *, n_inverse: int = 512, exact_max_dim: int = 64,
                        roulette_exact: int = 20, n_test: int | None = None) -> dict[str, Any]:
        """Test likelihood with the best estimator the dimension allows, the gap to the truth,
        the inverse's reconstruction error and the certificate.

        ``n_test``: evaluate the likelihood on the first ``n_test`` test points only (all by
        default); the standard error is over the points evaluated.
        """
        model.eval()
        if self.dim <= exact_max_dim:
            estimator_name, ctx = "exact", exact_logdets(model, self.dim)
        else:  # unbiased, with many always-computed terms: low variance, no truncation bias
            est = RussianRouletteLogDet(n_exact=roulette_exact, neumann_gradient=False, memory_efficient=False)
            estimator_name, ctx = f"russian-roulette(n_exact={roulette_exact})", swap_logdets(model, est)
        with ctx, torch.no_grad():
            logps = torch.cat([self.log_prob(model, b)
                               for b in self._test_batches(1024, None, limit=n_test)])
        out: dict[str, Any] = {"estimator": estimator_name, "n_test": int(logps.shape[0])}
        values = self._value(logps)
        out[f"test_{self.metric}"], out[f"test_{self.metric}_se"] = mean_se(values)
        if self.images:
            out["test_nll"] = out["test_bpd"] * self.dim * math.log(2)  # nats per image
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

    def _flow_input(self, x: Tensor, dtype: torch.dtype) -> Tensor:
        """Images: integer levels -> the flow's input (bin centres, logit-transformed if set)."""
        if not self.images:
            return x
        u = dequantize_mid(x, self.data.n_levels).to(dtype)
        alpha = self.cfg.data.logit_alpha
        return logit_transform(u, alpha)[0] if alpha > 0 else u

    def _from_flow(self, z: Tensor) -> Tensor:
        """Images: the flow's input space -> pixel intensities in ``[0, 1]`` (not clamped)."""
        alpha = self.cfg.data.logit_alpha
        return logit_inverse(z, alpha) if alpha > 0 else z

    @torch.no_grad()
    def inverse_check(self, model: Flow, n: int) -> dict[str, Any]:
        """Reconstruct ``n`` test points through ``inverse(forward(x))`` (in flow space)."""
        x = self._flow_input(self.data.test_x[:n].to(self.device), next(model.parameters()).dtype)
        z, _ = model(x)
        x_rec = model.inverse(z)
        diags = model.inverse_diagnostics
        return {
            "inverse_max_error": float((x_rec - x).abs().max()),
            "inverse_iterations_mean": float(torch.stack([d.iterations.float().mean() for d in diags]).mean()) if diags else 0.0,
            "inverse_iterations_max": int(max(int(d.iterations.max()) for d in diags)) if diags else 0,
            "inverse_converged": bool(all(d.all_converged for d in diags)),
        }

    def plots(self, model: Flow, run_dir: Path, records: list[dict[str, Any]]) -> list[Path]:
        model.eval()
        out = [plots.plot_learning_curve(records, run_dir / "learning_curve.png",
                                         keys=(self.metric, f"test_{self.metric}"),
                                         ylabel="bits/dim" if self.images else "NLL (nats)")]
        if self.images:
            # Samples at T = 1 (the model) and a lower temperature (the typical set's core, as
            # the Glow and Residual Flows papers show), then test images beside x -> z -> x.
            for t, name in ((1.0, "samples.png"), (0.7, "samples_t0.7.png")):
                samples = self.sample(model, 64, temperature=t)
                out.append(plots.plot_image_grid(samples, run_dir / name, title=f"samples (T={t})"))
            x = self._flow_input(self.data.test_x[:32].to(self.device),
                                 next(model.parameters()).dtype)
            with torch.no_grad():
                rec = model.inverse(model(x)[0])
            out.append(plots.plot_reconstructions(self._from_flow(x).cpu(),
                                                  self._from_flow(rec).cpu(),
                                                  run_dir / "reconstructions.png"))
            return out
        if self.dim == 2:
            test = self.data.test_x[:5000]
            samples = self.sample(model, 5000)
            truth = self.data.true_log_density

            def learned(points: Tensor) -> Tensor:  # points in data units
                z = points if self.data.standardizer is None else self.data.standardizer.transform(points)
                with exact_logdets(model, 2):
                    return model.log_prob(z.to(self.device)) + self.offset

            out.append(plots.plot_toy_figure(
                self._to_data_units(test), learned, samples.cpu(), run_dir / "figure.png",
                truth_log_density=truth,
            ))
        return out

    def _to_data_units(self, x: Tensor) -> Tensor:
        if self.data.standardizer is not None:
            return self.data.standardizer.inverse_transform(x)
        return x


def make_task(cfg: Config, data: DataBundle, device: torch.device) -> Task:
    """The task a config asks for (density now; classifier and hybrid by model kind)."""
    if cfg.model.kind in ("classifier", "hybrid"):
        from .classify import make_classification_task

        return make_classification_task(cfg, data, device)
    return DensityTask(cfg, data, device)
