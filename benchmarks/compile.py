"""torch.compile of a training step against eager, for the toy preset and an image block.

Workloads (one thread): (a) the ``toy-8gaussians`` preset's whole flow (exact log-dets), on a
batch of its size; (c) the first block of the 28x28 image presets on the 4x14x14 input their
squeezed flows give it (32 channels, roulette, memory-efficient Neumann gradient), batch 64;
traced, the roulette draws its terms in the graph and its memory-efficient backward gives way
to the Neumann surrogate (``RussianRouletteLogDet``: same numbers as eager for the same seed).
The loss (forward and backward through AOTAutograd) is compiled, the optimiser step is not;
flows skip their input check (``validate=False``) and inductor takes ``iresnet.compile_options``,
as ``train.compile=true`` does. CPU time per
step, medians of interleaved rounds after warm-up; the compilation's CPU time is reported
apart. The RNG is re-seeded before every step, so both draw the same roulette terms.

Run: ``.venv/bin/python benchmarks/compile.py`` (``--quick``: fewer rounds).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from iresnet import compile_options

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
    t = time.process_time()
    fn()
    return time.process_time() - t


def measure(stepper: Stepper, repeats: int) -> dict[str, Any]:
    eager_loss = loss_of(stepper)
    eager = step_with(stepper, eager_loss)
    compiled = step_with(stepper, torch.compile(eager_loss, options=compile_options("cpu")))
    for _ in range(2):
        eager()
    compile_s = cpu_time(compiled) + cpu_time(compiled)  # the first calls compile
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for r in range(repeats):
        order = ("eager", "compiled") if r % 2 == 0 else ("compiled", "eager")
        for name in order:
            times[name].append(cpu_time(eager if name == "eager" else compiled))
    ratios = [c / e for c, e in zip(times["compiled"], times["eager"], strict=True)]
    return {**times, "ratios": ratios, "compile_cpu_s": compile_s}


def main() -> None:
    args = script_parser(__doc__).parse_args()
    set_threads(args.threads)
    seed_all(args.seed)
    env = environment()
    repeats = 5 if args.quick else 20
    cases = {
        "(a) toy-8gaussians preset, exact": toy_steppers("8gaussians", 0, ["spectral"])["spectral"],
        "(c) image block 4x14x14, roulette": conv_steppers(
            32, 0, ["spectral"], preset="fashion-mnist", squeeze=True
        )["spectral"],
    }
    raw, rows = {}, []
    for name, stepper in cases.items():
        r = measure(stepper, repeats)
        raw[name] = r
        rows.append(
            [
                name,
                f"{1e3 * median(r['eager']):.1f}",
                f"{1e3 * median(r['compiled']):.1f}",
                f"{median(r['ratios']):.3f}",
                f"{r['compile_cpu_s']:.1f}",
            ]
        )
    table = markdown_table(
        [
            "workload",
            "eager (CPU ms/step)",
            "compiled",
            "ratio (median of rounds)",
            "compile (CPU s)",
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
    )


if __name__ == "__main__":
    main()
