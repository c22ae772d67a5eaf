"""torch.compile of a training step against eager, for the toy presets and an image block.

Workloads (one thread): (a) the ``toy-8gaussians`` preset's whole flow (exact log-dets, 8
blocks), on a batch of its size, and the deeper ``toy-checkerboard`` preset (32 blocks); (c)
the first block of the 28x28 image presets on the 4x14x14 input their squeezed flows give it
(32 channels, roulette, memory-efficient Neumann gradient), batch 64;
traced, the roulette draws its terms in the graph and its memory-efficient backward gives way
to the Neumann surrogate (``RussianRouletteLogDet``: same numbers as eager for the same seed).
The loss (forward and backward through AOTAutograd) is compiled, the optimiser step is not;
flows skip their input check (``validate=False``) and inductor takes ``iresnet.compile_options``,
as ``train.compile=true`` does. Two scopes of compilation: ``step``, the whole loss as one graph
(``train.compile_scope=step``), and ``blocks``, each residual block's training forward, one
graph shared by the blocks (``iresnet.compile_blocks``, ``train.compile_scope=blocks``; on a
copy of the model with the same weights, its flow checking its input). CPU time per step,
medians of interleaved rounds after warm-up; the compilation's CPU time (inductor's C++
compiler runs included) is reported apart. The RNG is re-seeded before every step, so every
variant draws the same roulette terms.

Run: ``.venv/bin/python benchmarks/compile.py`` (``--quick``: fewer rounds).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from iresnet import compile_blocks, compile_options
from iresnet.app.trainer import cpu_clock

from bench.env import environment, script_parser, seed_all, set_threads
from bench.norms import BlockStepper, Stepper, conv_steppers, toy_steppers
from bench.report import markdown_table, write_results
from bench.stats import median

NAME = "compile"


def loss_of(stepper: Stepper) -> Callable[[Tensor], Tensor]:
    model = stepper.model
    for m in model.modules():
        if isinstance(getattr(m, "validate", None), bool):
            m.validate = False
    if isinstance(stepper, BlockStepper):

        def block_loss(batch: Tensor) -> Tensor:
            y, logdet = model(batch)
            return -(-0.5 * y.pow(2).flatten(1).sum(1) + logdet).mean()

        return block_loss
    return lambda batch: -model.log_prob(batch).mean()


def step_with(stepper: Stepper, loss: Callable[[Tensor], Tensor]) -> Callable[[], None]:
    def step() -> None:
        torch.manual_seed(stepper.step_seed)
        stepper.optimizer.zero_grad(set_to_none=True)
        loss(stepper.batch).backward()
        stepper.optimizer.step()

    return step


def cpu_time(fn: Callable[[], None]) -> float:
    t = cpu_clock()
    fn()
    return cpu_clock() - t


VARIANTS = ("eager", "step", "blocks")


def measure(stepper: Stepper, repeats: int) -> dict[str, Any]:
    twin = copy.deepcopy(stepper)  # the same weights and batch, its own optimiser
    twin.optimizer = type(stepper.optimizer)(twin.model.parameters(), **stepper.optimizer.defaults)
    eager_loss = loss_of(stepper)
    steps = {
        "eager": step_with(stepper, eager_loss),
        "step": step_with(stepper, torch.compile(eager_loss, options=compile_options("cpu"))),
        "blocks": step_with(twin, lambda batch: twin.loss()),
    }
    for _ in range(2):
        steps["eager"]()
    steps["blocks"]()  # a fresh block's first call runs eagerly anyway: outside the timing
    compile_blocks(twin.model)
    compile_s = {}
    for name in ("step", "blocks"):
        compile_s[name] = cpu_time(steps[name]) + cpu_time(steps[name])  # the first calls compile
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for r in range(repeats):
        for k in range(len(VARIANTS)):
            name = VARIANTS[(r + k) % len(VARIANTS)]
            times[name].append(cpu_time(steps[name]))
    ratios = {
        name: [c / e for c, e in zip(times[name], times["eager"], strict=True)]
        for name in ("step", "blocks")
    }
    return {**times, "ratios": ratios, "compile_cpu_s": compile_s}


def main() -> None:
    args = script_parser(__doc__).parse_args()
    set_threads(args.threads)
    seed_all(args.seed)
    env = environment()
    repeats = 5 if args.quick else 20
    cases = {
        "(a) toy-8gaussians preset, exact": toy_steppers("8gaussians", 0, ["spectral"])["spectral"],
        "(a) toy-checkerboard preset (32 blocks), exact": toy_steppers(
            "checkerboard", 0, ["spectral"]
        )["spectral"],
        "(c) image block 4x14x14, roulette": conv_steppers(
            32, 0, ["spectral"], preset="fashion-mnist", squeeze=True
        )["spectral"],
    }
    import torch._inductor.config as inductor_config

    inductor_config.compile_threads = 1  # its C++ compiler runs as children cpu_clock() sees
    raw, rows = {}, []
    for name, stepper in cases.items():
        r = measure(stepper, repeats)
        raw[name] = r
        rows.append(
            [
                name,
                f"{1e3 * median(r['eager']):.1f}",
                *(f"{1e3 * median(r[v]):.1f}" for v in ("step", "blocks")),
                *(f"{median(r['ratios'][v]):.3f}" for v in ("step", "blocks")),
                *(f"{r['compile_cpu_s'][v]:.1f}" for v in ("step", "blocks")),
            ]
        )
    table = markdown_table(
        [
            "workload",
            "eager (CPU ms/step)",
            "compiled step",
            "compiled blocks",
            "ratio step (median of rounds)",
            "ratio blocks",
            "compile step (CPU s)",
            "compile blocks (CPU s)",
        ],
        rows,
    )
    write_results(
        NAME,
        "torch.compile of a training step against eager",
        env,
        {"repeats": repeats},
        [("Step time", table)],
        raw,
        out_dir=args.out_dir,
    )


if __name__ == "__main__":
    main()
