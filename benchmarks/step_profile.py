"""Where a training step's time goes: torch.profiler over four workloads, before optimising.

Workloads (one thread, float32, Adam, a fixed batch, the RNG re-seeded before every step):

- ``toy``: the ``toy-8gaussians`` preset's whole flow (exact 2x2 log-dets), its batch size;
- ``toy-roulette``: the 2-D model of ``step_vs_normflows.py`` (16 blocks of width 128,
  Russian roulette with ``E[N] = 3``, Neumann gradient, memory-efficient backward), batch 256;
- ``image-block``: the first residual block of the ``mnist`` / ``fashion-mnist`` presets on
  the 4x14x14 input their squeezed flows give it (32 channels, roulette), batch 64;
- ``paper-block``: a paper-size MNIST block (512 channels on 1x28x28, roulette), batch 8.

For each: the share of self CPU time of the top operators, grouped into kinds (matrix
products, convolutions, element-wise and activations, the spectral normalisation's reductions,
autograd bookkeeping), and the number of host synchronisations per step
(``aten::_local_scalar_dense``: ``.item()``, ``bool(tensor)``), which block ``torch.compile``
and a GPU's asynchronous queue. Shares are ratios within one process, robust to a shared
machine's load; the milliseconds are not.

Run: ``.venv/bin/python benchmarks/step_profile.py`` (``--quick``: fewer steps).
"""

from __future__ import annotations

import contextlib
import re
import traceback
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from step_vs_normflows import build_ours

from bench.env import environment, script_parser, seed_all, set_threads
from bench.norms import Stepper, conv_steppers, toy_steppers
from bench.report import markdown_table, write_results

NAME = "profile"  # results/profile.md (the script cannot be profile.py: the stdlib has one)

#: Operator-name patterns of each kind, first match wins.
KINDS = [
    ("host sync (.item / bool)", r"_local_scalar_dense|aten::item|aten::is_nonzero"),
    ("matrix products", r"aten::(addmm|mm|bmm|matmul|linear|addmv|mv|dot|vdot)\b"),
    ("convolutions", r"conv|thnn_conv|mkldnn_convolution|slow_conv"),
    (
        "norms and reductions",
        r"aten::(norm|linalg_vector_norm|sum|mean|max|amax|abs|sqrt|rsqrt|clamp|clamp_min|div_)",
    ),
    (
        "element-wise and activations",
        r"aten::(mul|add|sub|div|sigmoid|silu|exp|neg|where|pow|lerp|addcmul|addcdiv|fill|"
        r"zero|copy|rand|randn|normal|uniform|bernoulli|geometric|lt|gt|ge|le|eq|log|softplus|"
        r"elu|tanh|reciprocal|square|sign|maximum|minimum|_foreach)",
    ),
    ("autograd bookkeeping", r"autograd|Backward|AccumulateGrad|torch::autograd"),
    (
        "views, shapes, allocation",
        r"aten::(view|reshape|t|transpose|expand|empty|as_strided|"
        r"unsqueeze|squeeze|flatten|permute|contiguous|select|slice|cat|stack|detach|clone|"
        r"alias|to|_to_copy|resize_|ones|zeros|unbind|narrow|split|chunk|index)",
    ),
]


def kind_of(name: str) -> str:
    for kind, pattern in KINDS:
        if re.search(pattern, name):
            return kind
    return "other"


def steppers(quick: bool) -> dict[str, tuple[Stepper, int]]:
    """The workloads with their number of profiled steps."""
    toy = toy_steppers("8gaussians", 0, ["spectral"])["spectral"]
    flow = build_ours("rr2")
    gen = torch.Generator().manual_seed(0)
    roulette = Stepper(flow, torch.randn(256, 2, generator=gen) * 2, 0)
    with torch.no_grad():
        flow.log_prob(roulette.batch)  # ActNorm's initialisation, outside the profile
    image = conv_steppers(32, 0, ["spectral"], preset="fashion-mnist", squeeze=True)["spectral"]
    paper = conv_steppers(512, 0, ["spectral"], preset="mnist-resflow-paper")["spectral"]
    paper.batch = paper.batch[:8]
    n = 3 if quick else 20
    return {
        "toy": (toy, n),
        "toy-roulette": (roulette, n),
        "image-block": (image, n),
        "paper-block": (paper, max(2, n // 5)),
    }


@contextlib.contextmanager
def sync_origins() -> Iterator[Counter[str]]:
    """Count the host synchronisations Python asks for (``.item()``, ``bool``, ``int``,
    ``float`` of a tensor) by the source line that asked, while the block runs."""
    counts: Counter[str] = Counter()
    names = ("item", "__bool__", "__int__", "__float__")
    originals = {n: getattr(torch.Tensor, n) for n in names}

    def wrap(name: str) -> Any:
        original = originals[name]

        def counted(self: torch.Tensor, *args: Any) -> Any:
            frame = traceback.extract_stack(limit=2)[0]
            package = "iresnet" if "/iresnet/" in frame.filename else "torch and others"
            counts[f"{package}: {Path(frame.filename).name}:{frame.lineno}"] += 1
            return original(self, *args)

        return counted

    for n in names:
        setattr(torch.Tensor, n, wrap(n))
    try:
        yield counts
    finally:
        for n, f in originals.items():
            setattr(torch.Tensor, n, f)


def profile_one(stepper: Stepper, steps: int) -> dict[str, Any]:
    for _ in range(2):
        stepper.step()  # warm-up: lazy shapes, allocator, first power iterations
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            stepper.step()
    with sync_origins() as origins:
        stepper.step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    by_kind: dict[str, float] = defaultdict(float)
    for e in events:
        by_kind[kind_of(e.key)] += e.self_cpu_time_total
    syncs = sum(e.count for e in events if kind_of(e.key).startswith("host sync"))
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:12]
    return {
        "steps": steps,
        "ms_per_step": total / 1e3 / steps,
        "host_syncs_per_step": syncs / steps,
        "sync_origins": dict(origins.most_common()),
        "kinds": {k: v / total for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
        "top": [
            {
                "op": e.key,
                "share": e.self_cpu_time_total / total,
                "calls_per_step": e.count / steps,
            }
            for e in top
        ],
    }


def main() -> None:
    ap = script_parser(__doc__)
    args = ap.parse_args()
    set_threads(1)
    seed_all(0)
    env = environment()
    results = {name: profile_one(s, n) for name, (s, n) in steppers(args.quick).items()}
    sections = []
    summary_rows = []
    for name, r in results.items():
        kinds = r["kinds"]
        summary_rows.append(
            [
                name,
                f"{r['ms_per_step']:.1f}",
                f"{r['host_syncs_per_step']:.1f}",
                *(f"{100 * kinds.get(k, 0.0):.0f}%" for k, _ in KINDS[1:]),
                f"{100 * kinds.get('other', 0.0):.0f}%",
            ]
        )
        rows = [
            [t["op"], f"{100 * t['share']:.1f}%", f"{t['calls_per_step']:.0f}"] for t in r["top"]
        ]
        syncs = ", ".join(f"`{k}` x{v}" for k, v in r["sync_origins"].items()) or "none"
        sections.append(
            (
                f"{name}: the top operators by self CPU time",
                markdown_table(["operator", "share", "calls per step"], rows)
                + f"\n\nHost synchronisations of one step, by the line that asks: {syncs}.",
            )
        )
    head = [
        "workload",
        "ms/step (profiled)",
        "host syncs/step",
        *(k for k, _ in KINDS[1:]),
        "other",
    ]
    sections.insert(0, ("Self CPU time by kind", markdown_table(head, summary_rows)))
    write_results(
        NAME,
        "Where a training step's time goes (torch.profiler, one thread)",
        env,
        {"quick": args.quick},
        sections,
        results,
        out_dir=args.out_dir,
    )


if __name__ == "__main__":
    main()
