"""Classification and hybrid (density + classification) tasks for the one training loop.

Classifier: images of integer levels ``x in {0..K-1}`` enter as ``x / (K - 1)`` in ``[0, 1]``;
the loss is the cross-entropy ``-log softmax(logits)_y``, with accuracy beside it.

Hybrid (Nalisnick et al. 2019; Residual Flows sec. 6): the levels are dequantised
``u = (x + U[0,1)) / K`` and, with ``data.logit_alpha > 0``, logit-transformed (with its log-det),
exactly as the density models do, and the loss is

    ``density_weight * bpd(x) + CE(logits(x), y)``,   ``bpd = (-log p(u) + D log K) / (D log 2)``.

``density_weight = 1`` on bits/dim equals Residual Flows' ``lambda = 1 / (D log 2)`` on nats.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import plots
from ..certificate import certify
from ..config import Config
from ..data import DataBundle
from ..errors import ConfigError, InverseNotConvergedWarning
from ..logdet import RussianRouletteLogDet
from ..preprocess import bits_per_dim, dequantize, dequantize_mid, logit_inverse, logit_transform
from .tasks import Task, exact_logdets, mean_se, swap_logdets

__all__ = ["ClassificationTask", "HybridTask", "make_classification_task"]

Batch = tuple[Tensor, Tensor]  # integer levels (B, C, H, W) and labels (B,)

VANILLA_NOTE = (
    "unconstrained (vanilla) model: no inverse is guaranteed (Lip(g) is not bounded below 1); "
    "the numbers below are what the fixed-point iteration gave"
)


def _augment(x: Tensor, flip: bool) -> Tensor:
    """Standard augmentation: random translation by up to ``H // 8`` pixels (zero fill) and, for
    colour images, a random horizontal flip. ``x``: ``(B, C, H, W)`` floats."""
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

    def __init__(self, cfg: Config, data: DataBundle, device: torch.device) -> None:
        super().__init__(cfg, data, device)
        if data.kind != "image" or data.train_y is None or data.test_y is None:
            raise ConfigError(f"model.kind={cfg.model.kind} needs a labelled image data set "
                              f"(digits, mnist, fashion-mnist, cifar10), got '{data.name}'")
        self.n_levels = int(data.n_levels or 256)
        self.dim = int(math.prod(data.event_shape))
        self.augment = bool(getattr(cfg.train, "augment", False))

    def dtype(self, model: nn.Module) -> torch.dtype:
        p = next(model.parameters(), None)
        return p.dtype if p is not None else torch.get_default_dtype()

    def batch(self, split: str, idx: Tensor) -> Batch:
        xs, ys = (self.data.train_x, self.data.train_y) if split == "train" else (
            self.data.test_x, self.data.test_y)
        assert ys is not None
        return xs[idx].to(self.device), ys[idx].to(self.device)

    def inputs(self, model: nn.Module, x: Tensor, *, train: bool = False) -> Tensor:
        """Network inputs from integer levels: ``x / (K - 1)`` in ``[0, 1]``."""
        u = x.to(self.dtype(model)) / (self.n_levels - 1)
        if train and self.augment:
            u = _augment(u, flip=u.shape[1] == 3)
        return u

    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        x, y = batch
        logits = model(self.inputs(model, x, train=True))
        ce = F.cross_entropy(logits, y)
        acc = (logits.detach().argmax(1) == y).float().mean()
        return ce, {"loss": ce.detach(), "acc": acc}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, max_batches: int | None = None) -> dict[str, float]:
        model.eval()
        wrong, ces, n = 0, [], 0
        for x, y in self._test_batches(500, max_batches):
            logits = model(self.inputs(model, x))
            ces.append(F.cross_entropy(logits, y, reduction="none"))
            wrong += int((logits.argmax(1) != y).sum())
            n += y.numel()
        return {"test_error": wrong / max(n, 1), "test_loss": float(torch.cat(ces).mean())}

    def full_evaluation(self, model: nn.Module, *, n_inverse: int = 512,
                        **options: Any) -> dict[str, Any]:
        """Test error on the whole test set, the certificate and the feature inverse check.

        ``feature_inverse_max_error = max |x - invert_features(features(x))|`` over the first
        ``n_inverse`` test images (in network-input units); for the unconstrained model a
        ``note`` says that no inverse is guaranteed. Never raises on a failed inverse.
        """
        model.eval()
        out: dict[str, Any] = {"n_test": int(self.data.test_x.shape[0])}
        out.update(self.evaluate(model, None))
        out.update(self.extra_evaluation(model, **options))
        cert = certify(model)
        out["constrained"] = bool(self.cfg.model.constrained)
        out["coeff"] = self.cfg.model.coeff if self.cfg.model.constrained else None
        out["invertible"] = cert.invertible
        out["max_lipschitz"] = cert.max_bound
        out.update(self.feature_inverse_check(model, n_inverse))
        if not self.cfg.model.constrained:
            out["note"] = VANILLA_NOTE
        out["certificate"] = cert.to_dict()
        return out

    def extra_evaluation(self, model: nn.Module, **options: Any) -> dict[str, Any]:
        return {}

    @torch.no_grad()
    def reconstruct(self, model: nn.Module, n: int) -> tuple[Tensor, Tensor, list[str]]:
        """Inputs ``x`` of the first ``n`` test images, ``invert_features(features(x))`` and the
        messages of any non-convergence warnings."""
        x = self.inputs(model, self.data.test_x[:n].to(self.device))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", InverseNotConvergedWarning)
            with torch.no_grad():
                f = model.features(x)
                try:
                    x_rec = model.invert_features(f)
                except (RuntimeError, FloatingPointError) as exc:  # e.g. overflow in a solver
                    return x, torch.full_like(x, math.nan), [f"inverse failed: {exc}"]
        msgs = [str(w.message) for w in caught
                if issubclass(w.category, InverseNotConvergedWarning)]
        return x, x_rec, msgs

    def feature_inverse_check(self, model: nn.Module, n: int) -> dict[str, Any]:
        x, x_rec, msgs = self.reconstruct(model, max(1, n))
        err = (x_rec - x).abs().flatten(1).amax(1)
        finite = bool(torch.isfinite(err).all())
        diags = model.inverse_diagnostics
        out: dict[str, Any] = {
            "n_inverse": int(x.shape[0]),
            "feature_inverse_max_error": float(err.max()) if finite else None,
            "feature_inverse_median_error": float(err.median()) if finite else None,
            "feature_inverse_finite": finite,
            "inverse_converged": bool(diags) and all(d.all_converged for d in diags) and not msgs,
            "inverse_iterations_max": max((int(d.iterations.max()) for d in diags), default=0),
            "inverse_warnings": len(msgs),
        }
        if not finite:
            out["feature_inverse_diverged_fraction"] = float((~torch.isfinite(err)).float().mean())
        if msgs:
            out["inverse_warning"] = msgs[0]
        return out

    def display(self, model: nn.Module, x: Tensor) -> Tensor:
        """Network inputs back to images in ``[0, 1]`` for plotting."""
        return x

    def sample(self, model: nn.Module, n: int, temperature: float = 1.0) -> Tensor:
        raise ConfigError("a classifier models no density, so there is nothing to sample; "
                          "train a hybrid model (model.kind=hybrid) to sample images")

    def plots(self, model: nn.Module, run_dir: Path, records: list[dict[str, Any]]) -> list[Path]:
        model.eval()
        rows = [{**r, "train_error": 1.0 - r["acc"]} if "acc" in r else r for r in records]
        out = [plots.plot_learning_curve(rows, run_dir / "learning_curve.png",
                                         keys=self.curve_keys(), ylabel="loss"),
               plots.plot_learning_curve(rows, run_dir / "error_curve.png",
                                         keys=("train_error", "test_error"), ylabel="error")]
        x, x_rec, _ = self.reconstruct(model, 16)
        shown = torch.nan_to_num(self.display(model, x_rec), nan=0.0, posinf=1.0, neginf=0.0)
        out.append(plots.plot_reconstructions(self.display(model, x).cpu(), shown.cpu(),
                                              run_dir / "reconstructions.png"))
        return out

    def curve_keys(self) -> tuple[str, ...]:
        return ("loss", "test_loss")


class HybridTask(ClassificationTask):
    """``density_weight * bits/dim + cross-entropy``; metrics ``loss``, ``ce``, ``bpd``, ``acc``;
    evaluation ``test_bpd``, ``test_error``, ``test_loss`` (cross-entropy)."""

    def inputs(self, model: nn.Module, x: Tensor, *, train: bool = False) -> Tensor:
        """Dequantised (noise in training, cell midpoints otherwise) and logit-transformed."""
        return self._prepare(model, x, noise=train)[0]

    def _prepare(self, model: nn.Module, x: Tensor, *, noise: bool) -> tuple[Tensor, Tensor]:
        dt = self.dtype(model)
        k = self.n_levels
        u = dequantize(x, k, dtype=dt) if noise else dequantize_mid(x, k, dt)
        alpha = self.cfg.data.logit_alpha
        if alpha > 0:
            return logit_transform(u, alpha)
        return u, u.new_zeros(u.shape[0])

    def _forward(self, model: nn.Module, x: Tensor, noise: bool) -> tuple[Tensor, Tensor]:
        z, ld = self._prepare(model, x, noise=noise)
        logits, logp = model(z, return_log_prob=True)
        return logits, bits_per_dim(logp + ld, self.dim, self.n_levels)

    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        x, y = batch
        logits, bpd = self._forward(model, x, noise=True)
        ce = F.cross_entropy(logits, y)
        bpd_mean = bpd.mean()
        loss = self.cfg.train.density_weight * bpd_mean + ce
        acc = (logits.detach().argmax(1) == y).float().mean()
        return loss, {"loss": loss.detach(), "ce": ce.detach(), "bpd": bpd_mean.detach(),
                      "acc": acc}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, max_batches: int | None = None) -> dict[str, float]:
        model.eval()
        wrong, ces, bpds, n = 0, [], [], 0
        for x, y in self._test_batches(500, max_batches):
            logits, bpd = self._forward(model, x, noise=True)
            ces.append(F.cross_entropy(logits, y, reduction="none"))
            bpds.append(bpd)
            wrong += int((logits.argmax(1) != y).sum())
            n += y.numel()
        bpd_mean, bpd_se = mean_se(torch.cat(bpds))
        return {"test_error": wrong / max(n, 1), "test_loss": float(torch.cat(ces).mean()),
                "test_bpd": bpd_mean, "test_bpd_se": bpd_se}

    def extra_evaluation(self, model: nn.Module, *, exact_max_dim: int = 64,
                         roulette_exact: int = 20, **options: Any) -> dict[str, Any]:
        """``test_bpd`` again with the best log-det estimator the dimension allows."""
        if self.dim <= exact_max_dim:
            name, ctx = "exact", exact_logdets(model, self.dim)
        else:
            est = RussianRouletteLogDet(n_exact=roulette_exact, neumann_gradient=False,
                                        memory_efficient=False)
            name, ctx = f"russian-roulette(n_exact={roulette_exact})", swap_logdets(model, est)
        with ctx, torch.no_grad():
            values = torch.cat([self._forward(model, x, noise=True)[1]
                                for x, _ in self._test_batches(500, None)])
        out: dict[str, Any] = {"estimator": name}
        out["test_bpd"], out["test_bpd_se"] = mean_se(values)
        return out

    def display(self, model: nn.Module, x: Tensor) -> Tensor:
        alpha = self.cfg.data.logit_alpha
        return (logit_inverse(x, alpha) if alpha > 0 else x).clamp(0, 1)

    @torch.no_grad()
    def sample(self, model: nn.Module, n: int, temperature: float = 1.0) -> Tensor:
        """Images ``x = F^{-1}(z)``, ``z ~ N(0, T^2 I)`` of the feature shape, in ``[0, 1]``."""
        model.eval()
        z = torch.randn(n, *model.feature_shape, device=self.device, dtype=self.dtype(model))
        return self.display(model, model.invert_features(z * temperature))

    def curve_keys(self) -> tuple[str, ...]:
        return ("loss", "bpd", "test_bpd", "ce", "test_loss")


def make_classification_task(cfg: Config, data: DataBundle, device: torch.device) -> Task:
    """:class:`HybridTask` for ``model.kind=hybrid``, else :class:`ClassificationTask`."""
    if cfg.model.kind == "hybrid":
        return HybridTask(cfg, data, device)
    return ClassificationTask(cfg, data, device)
