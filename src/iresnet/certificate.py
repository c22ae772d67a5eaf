"""Lipschitz certificates: is every residual block provably invertible?

A block ``x + g(x)`` is invertible when ``Lip(g) < 1`` (i-ResNet Theorem 1), and then its
fixed-point inverse converges with the a-priori error bound of i-ResNet eq. (1). Each block's
bound is the product of its layers' operator norms in force now (i-ResNet sec. 2.1): exact
SVDs for linear layers up to 1024 wide, converged power iteration for convolutions (an estimate
from below of each convolution's norm, which can fall short when the top two singular values
nearly tie), the Frobenius bound for ``norm="frobenius"`` layers.

References:
    - Behrmann et al., "Invertible Residual Networks", ICML 2019, arXiv:1811.00995.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from torch import nn

from .transforms import InvertibleResidualBlock

__all__ = ["BlockCertificate", "Certificate", "certify"]


@dataclass(frozen=True)
class BlockCertificate:
    """One block: its name in the model and an upper bound of ``Lip(g)``.

    Attributes:
        name: the block's name in ``model.named_modules()``.
        bound: the bound of ``Lip(g)`` (``inf`` where none is known).
    """

    name: str
    bound: float

    @property
    def invertible(self) -> bool:
        """Whether the bound is below 1."""
        return self.bound < 1.0


@dataclass(frozen=True)
class Certificate:
    """The certificate of a model: one block certificate per residual block.

    The entries are [`BlockCertificate`][iresnet.certificate.BlockCertificate]s.
    ``invertible`` is true only when every block's bound is below 1 (i-ResNet Theorem 1), so the
    whole network is a bijection with a convergent fixed-point inverse. ``str(certificate)``
    prints a table.

    Attributes:
        blocks: one entry per residual block, in ``named_modules`` order.
    """

    blocks: list[BlockCertificate] = field(default_factory=list)

    @property
    def invertible(self) -> bool:
        """Whether there is at least one block and every block's bound is below 1."""
        return bool(self.blocks) and all(b.invertible for b in self.blocks)

    @property
    def max_bound(self) -> float:
        """The largest block bound (NaN without blocks)."""
        return max((b.bound for b in self.blocks), default=math.nan)

    def to_dict(self) -> dict:
        """JSON-ready ``{"invertible", "max_lipschitz", "blocks": [{"name", "lipschitz"}]}``."""
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
    """Certify every residual block inside ``model``.

    The blocks are the
    [`InvertibleResidualBlock`][iresnet.transforms.residual.InvertibleResidualBlock]s found by
    ``model.named_modules()``.
    Each bound is the product of the block's layers' operator norms (activations contribute
    their slopes, 1 for the 1-Lipschitz ones; see
    [`lipschitz_bound_of`][iresnet.nn.lipschitz.lipschitz_bound_of]), computed from the weights
    in force now, so it is never stale. A convolution that has not yet seen an input has no
    known norm (its norm depends on the input size) and is reported as ``inf``.

    Args:
        model: any module.

    Returns:
        The [`Certificate`][iresnet.certificate.Certificate], with no blocks if ``model`` has
            no residual block.

    Examples:
        >>> import iresnet
        >>> flow = iresnet.ResidualFlow(2, transforms=2, hidden_features=(8,), coeff=0.9)
        >>> cert = certify(flow.eval())
        >>> cert.invertible, len(cert.blocks), cert.max_bound <= 0.9**2 + 1e-6
        (True, 2, True)
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
