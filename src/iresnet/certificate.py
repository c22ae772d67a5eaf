"""Lipschitz certificates: is every residual block provably invertible?

A block ``x + g(x)`` is invertible when ``Lip(g) < 1`` (i-ResNet Theorem 1), and then its
fixed-point inverse converges with the a-priori error bound of i-ResNet eq. (1). Each block's
bound is the product of its layers' provable bounds in force now (i-ResNet sec. 2.1), each
computed in float64 and never an estimate: exact SVDs for linear layers (the Gram-iteration
bound above 1024 wide), for convolutions the exact norm of the explicit matrix where it is small
and otherwise the exact norm of the circular embedding (an upper bound of the zero-padded map,
see [`conv2d_operator_bound`][iresnet.nn.bounds.conv2d_operator_bound]), the Frobenius bound for
``norm="frobenius"`` layers. The certificate names the method of every layer.

A conditional block ``x + g(x, c)`` is certified for every context at once: the context enters
its branch only through modulations ``h -> gain(c) h + shift(c)`` with ``0 < gain(c) < 1``
(method ``"context"``, bound 1), never through the normalised weights on ``x``, so the product
of the x-path's bounds bounds ``Lip_x(g(., c))`` whatever ``c`` is.

References:
    - Behrmann et al., "Invertible Residual Networks", ICML 2019, arXiv:1811.00995.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from torch import nn

from .nn.dense import DenseLayer
from .nn.lipschitz import LayerBound, layer_bounds
from .transforms import InvertibleResidualBlock

__all__ = ["BlockCertificate", "Certificate", "certify"]


@dataclass(frozen=True)
class BlockCertificate:
    """One block: its name in the model and an upper bound of ``Lip(g)``.

    Attributes:
        name: the block's name in ``model.named_modules()``.
        bound: the bound of ``Lip(g)`` (``inf`` where none is known): the product of ``layers``.
        layers: each layer's bound and the method that produced it
            ([`LayerBound`][iresnet.nn.lipschitz.LayerBound]).
        conditional: whether the block takes a context; its bound then holds for every context.
        kind: what the block's branch is, read from its layers: ``"conv"`` (convolutions),
            ``"fc"`` (fully connected, e.g. an image model's ``fc_blocks`` at its end), with
            ``"dense "`` before it for an i-DenseNet branch; ``""`` where unknown (a
            certificate saved before the field existed).

    References:
        - Behrmann et al., "Invertible Residual Networks", arXiv:1811.00995, sec. 2.1,
          Theorem 1.
    """

    name: str
    bound: float
    layers: tuple[LayerBound, ...] = ()
    conditional: bool = False
    kind: str = ""

    @property
    def methods(self) -> str:
        """The methods of the layers that are not activations, e.g. ``"svd x2, fft-svd"``."""
        counts: dict[str, int] = {}
        for layer in self.layers:
            if layer.method != "slope":
                counts[layer.method] = counts.get(layer.method, 0) + 1
        return ", ".join(m if n == 1 else f"{m} x{n}" for m, n in counts.items()) or "-"

    @property
    def lipschitz(self) -> float:
        """``bound`` under the name the JSON form (``Certificate.to_dict``, ``iresnet evaluate
        --json``) gives it."""
        return self.bound

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

    References:
        - Behrmann et al., "Invertible Residual Networks", arXiv:1811.00995, sec. 2.1,
          Theorem 1.
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

    @property
    def max_lipschitz(self) -> float:
        """[`max_bound`][iresnet.certificate.Certificate.max_bound] under the name that
        [`to_dict`][iresnet.certificate.Certificate.to_dict], `iresnet evaluate --json` and
        `iresnet sweep` give it, so code written against either reads both."""
        return self.max_bound

    def to_dict(self) -> dict:
        """JSON-ready ``{"invertible", "max_lipschitz", "blocks": [{"name", "kind", "lipschitz",
        "conditional", "layers": [{"name", "bound", "method"}]}]}``."""
        return {
            "invertible": self.invertible,
            "max_lipschitz": self.max_bound,
            "blocks": [
                {
                    "name": b.name,
                    "kind": b.kind,
                    "lipschitz": b.bound,
                    "conditional": b.conditional,
                    "layers": [
                        {"name": x.name, "bound": x.bound, "method": x.method} for x in b.layers
                    ],
                }
                for b in self.blocks
            ],
        }

    @classmethod
    def from_dict(cls, data: dict) -> Certificate:
        """The certificate that [`to_dict`][iresnet.certificate.Certificate.to_dict] wrote.

        ``None`` bounds (strict JSON's spelling of ``inf``) read back as ``inf``.

        Raises:
            KeyError: ``data`` lacks a block's ``name``, ``lipschitz`` or ``layers``.
        """

        def bound(value: float | None) -> float:
            return math.inf if value is None else float(value)

        return cls(
            [
                BlockCertificate(
                    b["name"],
                    bound(b["lipschitz"]),
                    tuple(
                        LayerBound(x["name"], bound(x["bound"]), x["method"]) for x in b["layers"]
                    ),
                    bool(b.get("conditional", False)),
                    str(b.get("kind", "")),
                )
                for b in data["blocks"]
            ]
        )

    def __str__(self) -> str:
        if not self.blocks:
            return "no residual blocks found: nothing to certify"
        width = max(len("block"), *(len(b.name) for b in self.blocks))
        kinds = max(len("kind"), *(len(b.kind) for b in self.blocks))
        lines = [
            f"{'block':<{width}}  {'kind':<{kinds}}  Lip(g) bound  invertible  layers bounded by",
            "-" * (width + kinds + 47),
        ]
        for b in self.blocks:
            verdict = "yes" if b.invertible else "NO"
            lines.append(
                f"{b.name:<{width}}  {b.kind or '-':<{kinds}}  {b.bound:>12.6f}  {verdict:<10}  "
                f"{b.methods}"
            )
        verdict = "guaranteed invertible" if self.invertible else "NOT guaranteed invertible"
        lines.append(f"model: {verdict} (largest bound {self.max_bound:.6f})")
        if any(b.bound >= 1 and "(penalty)" in b.methods for b in self.blocks):
            lines.append(
                "a bound of 1 or more on layers trained with a spectral penalty "
                "(lipschitz_norm=penalty): a soft regulariser that rescales no weight, so "
                "nothing holds their norms below 1; the bound says whether training did"
            )
        elif any(b.bound >= 1 and "unknown input size" not in b.methods for b in self.blocks):
            lines.append(
                "a bound of 1 or more: a spectral layer in training mode divides by its power "
                "iteration's norm estimate, too low until forward passes have refined it (a "
                "fresh model: run a few, or certify after model.eval(), which normalises by the "
                "converged norm); unconstrained layers have no bound below 1"
            )
        if any("unknown input size" in b.methods for b in self.blocks):
            lines.append(
                "unknown input size: a convolution's norm depends on the size of its input, "
                "which it learns from its first forward pass; run one (e.g. model(x) on a "
                "batch) and certify again"
            )
        if any(b.conditional for b in self.blocks):
            lines.append(
                "conditional blocks: bounds hold for every context (the context only shifts and "
                "gates hidden pre-activations, gains in (0, 1): method 'context')"
            )
        return "\n".join(lines)


def certify(model: nn.Module) -> Certificate:
    """Certify every residual block inside ``model``.

    The blocks are the
    [`InvertibleResidualBlock`][iresnet.transforms.residual.InvertibleResidualBlock]s found by
    ``model.named_modules()``, conditional ones included: their bound is of ``Lip_x(g(., c))``
    and holds for every context ``c`` (see the module docstring).
    Each bound is the product of the block's layers' provable bounds (activations contribute
    their slopes, 1 for the 1-Lipschitz ones; see
    [`layer_bounds`][iresnet.nn.lipschitz.layer_bounds]), computed from the weights in force
    now, so it is never stale. A convolution that has not yet seen an input has no
    known norm (its norm depends on the input size) and is reported as ``inf``.

    Args:
        model: any module.

    Returns:
        The [`Certificate`][iresnet.certificate.Certificate], with no blocks if ``model`` has
            no residual block.

    Raises:
        TypeError: ``model`` is not a module.
        ValueError: a spectral layer whose weight has NaN or infinite entries (its provable
            bound refuses them).

    References:
        - Behrmann et al., "Invertible Residual Networks", arXiv:1811.00995, sec. 2.1,
          Theorem 1.

    Examples:
        >>> import iresnet
        >>> flow = iresnet.ResidualFlow(2, transforms=2, hidden_features=(8,), coeff=0.9)
        >>> cert = certify(flow.eval())
        >>> cert.invertible, len(cert.blocks), cert.max_bound <= 0.9**2 + 1e-6
        (True, 2, True)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"certify expects a torch.nn.Module, got {type(model).__name__}")
    blocks = []
    for name, module in model.named_modules():
        if isinstance(module, InvertibleResidualBlock):
            try:
                layers = tuple(layer_bounds(module.g))
                bound = math.prod(x.bound for x in layers)
            except RuntimeError:  # a convolution that has not seen an input
                layers, bound = (), math.inf
            blocks.append(
                BlockCertificate(
                    name or type(module).__name__,
                    bound,
                    layers,
                    module.conditional,
                    _branch_kind(module.g),
                )
            )
    return Certificate(blocks)


def _branch_kind(g: nn.Module) -> str:
    """``"conv"`` or ``"fc"`` by the branch's weight layers (``"dense "`` before it for an
    i-DenseNet branch), so a certificate tells an image model's fully connected blocks from
    its convolutional ones; ``""`` for a branch with neither."""
    modules = list(g.modules())
    if any(isinstance(m, nn.Conv2d) for m in modules):
        kind = "conv"
    elif any(isinstance(m, nn.Linear) for m in modules):
        kind = "fc"
    else:
        return ""
    return f"dense {kind}" if any(isinstance(m, DenseLayer) for m in modules) else kind
