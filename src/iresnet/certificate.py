"""Lipschitz certificates: is every residual block provably invertible?

A block `x + g(x)` is invertible when `Lip(g) < 1` (i-ResNet, arXiv:1811.00995, Theorem 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from torch import nn

from .transforms import InvertibleResidualBlock

__all__ = ["BlockCertificate", "Certificate", "certify"]


@dataclass(frozen=True)
class BlockCertificate:
    """One block: its name in the model and an upper bound of ``Lip(g)``."""

    name: str
    bound: float

    @property
    def invertible(self) -> bool:
        return self.bound < 1.0


@dataclass(frozen=True)
class Certificate:
    """The certificate of a model: one :class:`BlockCertificate` per residual block.

    ``invertible`` is true only when every block's bound is below 1 (i-ResNet Thm. 1), so the
    whole network is a bijection with a convergent fixed-point inverse.
    """

    blocks: list[BlockCertificate] = field(default_factory=list)

    @property
    def invertible(self) -> bool:
        return bool(self.blocks) and all(b.invertible for b in self.blocks)

    @property
    def max_bound(self) -> float:
        return max((b.bound for b in self.blocks), default=math.nan)

    def to_dict(self) -> dict:
        return {
            "invertible": self.invertible,
            "max_lipschitz": self.max_bound,
            "blocks": [{"name": b.name, "lipschitz": b.bound} for b in self.blocks],
        }

    def __str__(self) -> str:
        if not self.blocks:
            return "no residual blocks found: nothing to certify"
        width = max(len("block"), *(len(b.name) for b in self.blocks))
        lines = [f"{'block':<{width}}  Lip(g) bound  invertible", "-" * (width + 26)]
        for b in self.blocks:
            lines.append(f"{b.name:<{width}}  {b.bound:>12.6f}  {'yes' if b.invertible else 'NO'}")
        verdict = "guaranteed invertible" if self.invertible else "NOT guaranteed invertible"
        lines.append(f"model: {verdict} (largest bound {self.max_bound:.6f})")
        return "\n".join(lines)


def certify(model: nn.Module) -> Certificate:
    """Certify every :class:`InvertibleResidualBlock` inside ``model``.

    Each bound is the product of the block's layers' converged operator norms (activations are
    1-Lipschitz), computed from the weights in force now, so it is never stale. A convolution that
    has not yet seen an input has no known norm (its norm depends on the input size) and is
    reported as ``inf``.
    """
    blocks = []
    for name, module in model.named_modules():
        if isinstance(module, InvertibleResidualBlock):
            try:
                bound = module.lipschitz_bound()
            except RuntimeError:
                bound = math.inf
            blocks.append(BlockCertificate(name or type(module).__name__, bound))
    return Certificate(blocks)
