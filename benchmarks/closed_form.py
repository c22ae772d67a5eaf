"""What the closed-form branch products save: a training step with and without them.

The log-det series needs ``w -> w J_g`` several times per block and step, and the Neumann
gradient's surrogate ``n^T J v``. With ``iresnet.ops.jacobian.linearize`` (the default for
chains of spectral layers and Lipschitz activations), the products are matrix products and
transposed convolutions from the slopes cached by the forward pass, and ``J v`` is pushed
forward with its graph (a first-order backward instead of a double backward); with the
memory-efficient backward and LipSwish chains, ``linearize_adjoint`` forms the surrogate's
gradient itself (no graph of ``J v``). The baseline patches both out in this process, so every
product goes through autograd as before.

Workloads: the 2-D model of ``step_vs_normflows.py`` (16 blocks of width 128, roulette
``E[N] = 3``, Neumann gradient, memory-efficient backward, batch 256) and the first block of
the 28x28 image presets (4x14x14, 32 channels, roulette, batch 64). One thread; the two
variants are timed interleaved and reported as the median of per-round ratios.

Run: ``.venv/bin/python benchmarks/closed_form.py`` (``--quick``: fewer rounds).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

import iresnet.ops.logdet as logdet_module
from step_vs_normflows import build_ours

from bench.env import environment, script_parser, seed_all, set_threads
from bench.norms import Stepper, conv_steppers
from bench.report import markdown_table, write_results
from bench.stats import median, paired_ratios
from bench.timing import time_interleaved

NAME = "closed-form"
REAL = logdet_module.linearize
REAL_ADJOINT = logdet_module.linearize_adjoint


def autograd_only(g: Any, x: torch.Tensor, t: torch.Tensor | None = None) -> Any:
    return g(x), None, None


def no_adjoint(g: Any, x: torch.Tensor, t: torch.Tensor) -> None:
    return None


def variant(closed: bool, step: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        logdet_module.linearize = REAL if closed else autograd_only
        logdet_module.linearize_adjoint = REAL_ADJOINT if closed else no_adjoint
        try:
            step()
        finally:
            logdet_module.linearize = REAL
            logdet_module.linearize_adjoint = REAL_ADJOINT

    return run


def toy_pair() -> tuple[Stepper, Stepper]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 2, generator=gen) * 2
    a, b = Stepper(build_ours("rr2"), x, 0), Stepper(build_ours("rr2"), x, 0)
    b.model.load_state_dict(a.model.state_dict())
    for s in (a, b):
        with torch.no_grad():
            s.model.log_prob(x)
    return a, b


def conv_pair() -> tuple[Stepper, Stepper]:
    make = lambda: conv_steppers(32, 0, ["spectral"], preset="fashion-mnist", squeeze=True)  # noqa: E731
    return make()["spectral"], make()["spectral"]


def main() -> None:
    args = script_parser(__doc__).parse_args()
    set_threads(args.threads)
    seed_all(args.seed)
    env = environment()
    repeats = 5 if args.quick else 30
    rows, raw = [], {}
    for name, (a, b) in (
        ("2-D, 16 x 128, roulette", toy_pair()),
        ("conv block 4x14x14", conv_pair()),
    ):
        times = time_interleaved(
            {"closed form": variant(True, a.step), "autograd": variant(False, b.step)}, repeats
        )
        ratios = paired_ratios(times["closed form"], times["autograd"])
        raw[name] = {**times, "ratios": ratios}
        rows.append(
            [
                name,
                f"{1e3 * median(times['closed form']):.1f}",
                f"{1e3 * median(times['autograd']):.1f}",
                f"{median(ratios):.3f}",
            ]
        )
    table = markdown_table(
        ["workload", "closed form (ms/step)", "autograd (ms/step)", "ratio (median of rounds)"],
        rows,
    )
    write_results(
        NAME,
        "Closed-form branch products against autograd (training step)",
        env,
        {"repeats": repeats},
        [("Step time", table)],
        raw,
        out_dir=args.out_dir,
    )


if __name__ == "__main__":
    main()
