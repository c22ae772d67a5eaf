"""The seed report's Figure 1: paths of points through a plain ResNet and an i-ResNet.

Both networks are stacks of 1-D residual blocks ``x <- x + g(x)`` trained to map ``x`` to
``-x`` (a reflection, which needs paths to cross). The plain ResNet learns it by letting paths
cross and collapse; the i-ResNet (``Lip(g) <= c < 1``) cannot: ``1 + g'(x) > 0``, so every
block is strictly increasing and no two paths ever cross. Crossings between consecutive layers
are counted and circled.

    .venv/bin/python benchmarks/figure1.py [--out docs/figure1]  # docs/figure1-{resnet,iresnet}.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch import nn

from iresnet.app.cli import OneLineParser
from iresnet.app.plots import plot_trajectories
from iresnet.nn import mlp_branch


def build(
    constrained: bool, n_blocks: int = 10, hidden: int = 32, coeff: float = 0.9
) -> nn.ModuleList:
    """``n_blocks`` branches ``linear(1, hidden) -> ELU -> linear(hidden, 1)``, spectrally
    normalised to ``coeff`` per layer when ``constrained``."""
    norm = "spectral" if constrained else "none"
    return nn.ModuleList(
        mlp_branch(1, (hidden,), activation=nn.ELU, norm=norm, coeff=coeff) for _ in range(n_blocks)
    )


def paths(blocks: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    states = [x]
    for g in blocks:
        x = x + g(x)
        states.append(x)
    return torch.cat(states, 1)  # (n_points, n_blocks + 1)


def fit(blocks: nn.ModuleList, steps: int = 1500) -> float:
    opt = torch.optim.Adam(blocks.parameters(), lr=3e-3)
    for _ in range(steps):
        x = torch.rand(256, 1) * 4 - 2
        loss = (paths(blocks, x)[:, -1:] + x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(loss.detach())


def crossings(p: torch.Tensor) -> list[tuple[float, float]]:
    """Points (depth, value) where two neighbouring paths swap order between layers k, k+1."""
    found = []
    order = torch.argsort(p[:, 0])
    p = p[order]
    for k in range(p.shape[1] - 1):
        a, b = p[:-1], p[1:]
        swapped = ((a[:, k] - b[:, k]) * (a[:, k + 1] - b[:, k + 1]) < 0).nonzero().flatten()
        for i in swapped.tolist():
            found.append((k + 0.5, float((p[i, k] + p[i, k + 1]) / 2)))
    return found


def main() -> None:
    # OneLineParser, not script_parser: the shared flags (--quick, --threads, --seed, --out-dir)
    # would do nothing here (--out names the figures).
    ap = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("docs/figure1"))
    ap.add_argument("--steps", type=int, default=1500)
    args = ap.parse_args()
    if args.steps < 1:  # no step: no loss to report (it ended in a traceback)
        ap.error(f"--steps must be >= 1, got {args.steps}")
    torch.manual_seed(0)
    x = torch.linspace(-2, 2, 41)[:, None]
    summary = {}
    for name, constrained in (("resnet", False), ("iresnet", True)):
        blocks = build(constrained)
        loss = fit(blocks, args.steps)
        blocks.eval()
        with torch.no_grad():
            p = paths(blocks, x)
        cross = crossings(p)
        out = args.out.with_name(f"{args.out.name}-{name}.png")
        label = "plain ResNet" if name == "resnet" else "i-ResNet (c=0.9)"
        title = f"{label}: fit -x, MSE {loss:.3f}, {len(cross)} crossings"
        plot_trajectories(p.numpy(), out, crossings=cross, title=title)
        summary[name] = {"mse": loss, "crossings": len(cross), "figure": str(out)}
        print(f"{name}: MSE {loss:.4f}, crossings {len(cross)} -> {out}")
    print(json.dumps(summary), file=sys.stderr)


if __name__ == "__main__":
    main()
