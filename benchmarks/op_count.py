"""Operators one eager training step dispatches: ours against normflows' residual flow.

An eager step on these small tensors costs its operators' dispatch (Python, autograd and the
dispatcher, a few microseconds each) about as much as their arithmetic. The count is exact and
independent of the machine's load, so it explains the eager ours/normflows time ratio of
``benchmarks/step_vs_normflows.py`` where the timings are noisy: the same models, estimators
(E[N] = 3 roulette, memory-efficient Neumann gradient, one probe) and batches as there. Every
ATen operator that reaches the dispatcher is counted once (``TorchDispatchMode``), in the forward
and the backward pass, over ``--steps`` steps after a warm-up. The roulette draws its number of
terms, so the counts are means over the steps, with both sides' draws seeded (ours from torch's
generator, normflows' from numpy's): a run repeats to the operator.

The ``what-if`` row is ours inside ``iresnet.nn.frozen_normalisation`` (no power-iteration step
in the forward pass, as normflows' step has none): the share of our count that spectral
normalisation's per-step update takes.

Run: ``.venv/bin/python benchmarks/op_count.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import collections
from typing import Any

from torch.utils._python_dispatch import TorchDispatchMode

from bench.env import environment, positive_int, run_script, script_parser, seed_all, set_threads
from bench.report import doc_body, markdown_table, write_results

NAME = "op-count"
CONFIGS = [
    ("2-D 16x128, batch 256", ("ours", "rr2", ""), ("theirs", "rr1", "")),
    ("2-D, ours without the power-iteration step (what-if)", ("ours", "rr2", "frozen"), None),
    ("conv 4x14x14 w64, batch 32", ("ours", "conv-rr2", ""), ("theirs", "conv-rr1", "")),
]


class _Count(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.counts[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def count(cfg: tuple[str, str, str], steps: int, seed: int) -> dict[str, Any]:
    """Mean operators per step of one configuration, in total and by operator."""
    import step_vs_normflows as svn

    side, kind, variant = cfg
    step, _ = svn.make_step(side, kind, variant)
    x = svn.data(svn.batch_of(kind, 256), seed, kind)
    for _ in range(2):
        step(x)
    seed_all(seed)  # torch's generator (ours' draws) and numpy's (normflows')
    total: collections.Counter[str] = collections.Counter()
    for _ in range(steps):
        with _Count() as mode:
            step(x)
        total += mode.counts
    return {
        "per_step": sum(total.values()) / steps,
        "top": {k: v / steps for k, v in total.most_common(8)},
    }


def main() -> None:
    ap = script_parser(__doc__)
    ap.add_argument(
        "--steps", type=positive_int, default=None, help="counted steps per configuration"
    )
    args = ap.parse_args()
    steps = args.steps if args.steps is not None else (2 if args.quick else 20)
    set_threads(args.threads)
    env = environment()
    raw: dict[str, Any] = {}
    rows = []
    for label, ours, theirs in CONFIGS:
        mine = count(ours, steps, args.seed)
        raw[label] = {"ours": mine}
        row: list[Any] = [label, f"{mine['per_step']:.0f}"]
        if theirs is None:
            row += ["-", "-"]
        else:
            other = count(theirs, steps, args.seed)
            raw[label]["theirs"] = other
            row += [f"{other['per_step']:.0f}", f"{mine['per_step'] / other['per_step']:.2f}"]
        rows.append(row)
    top_rows = [
        [
            label,
            side,
            ", ".join(f"{k.removeprefix('aten.')} {v:.0f}" for k, v in rec["top"].items()),
        ]
        for label, sides in raw.items()
        for side, rec in sides.items()
    ]
    md, _ = write_results(
        NAME,
        "Operators per eager training step: iresnet vs normflows",
        env,
        {"quick": args.quick, "steps": steps, "seed": args.seed},
        [
            ("What is measured", doc_body(__doc__)),
            (
                "Operators per step",
                markdown_table(["workload", "ours", "theirs", "ours/theirs"], rows),
            ),
            (
                "The most frequent operators (per step)",
                markdown_table(["workload", "side", "operators"], top_rows),
            ),
        ],
        raw,
        out_dir=args.out_dir,
    )
    print(md.read_text())


if __name__ == "__main__":
    run_script(main)
