"""Peak memory of one training step as the number of log-det series terms grows.

Model: a small 1x28x28 flow, ``Squeeze`` (-> 4x14x14) then 4 residual blocks with
``g = SpectralConv2d 3x3 (4->32) -> LipSwish -> SpectralConv2d 1x1 (32->32) -> LipSwish ->
SpectralConv2d 3x3 (32->4)``, batch 32, float32. One step = forward, log-det, ``-log p(x)``
averaged over the batch, backward.

Estimators, with ``n`` = 2, 5, 10, 20 series terms:

- ``plain``: ``PowerSeriesLogDet(n_terms=n)``, backprop through the series (the graph of all
  ``n`` vector-Jacobian products is kept);
- ``neumann``: ``PowerSeriesLogDet(n_terms=n, neumann_gradient=True)`` (for reference);
- ``memeff``: ``PowerSeriesLogDet(n_terms=n, neumann_gradient=True, memory_efficient=True)``.

Measurement: every (estimator, n, repetition) runs in a fresh Python process. The process builds
the model, runs one warm-up step on a batch of 2 (the convolutions learn their input size,
autograd and the allocator initialise), allocates the batch, then resets the kernel's peak-RSS
mark (``/proc/self/clear_refs``) and reports ``VmHWM`` after the step minus ``VmRSS`` right before
it (``ru_maxrss`` after - before is recorded too). glibc's mmap threshold is fixed at 64 KiB, so
freed tensors leave the resident set (see ``bench.worker.worker_env``). Median of the repetitions.

Target: the memory-efficient estimator stays flat (peak(20)/peak(2) <= 1.2) while plain backprop
grows.

Run: ``.venv/bin/python benchmarks/memory.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import time

import torch

import iresnet
from iresnet.nn import conv_branch
from iresnet.words import count

from bench.env import environment, script_parser, set_threads
from bench.report import doc_body, known, markdown_table, write_results
from bench.rss import measure_peak_rss
from bench.stats import median
from bench.worker import WorkerFailed, add_worker_flag, run_worker, serve

NAME = "memory"

MODES = {
    "plain": {"neumann_gradient": False, "memory_efficient": False},
    "neumann": {"neumann_gradient": True, "memory_efficient": False},
    "memeff": {"neumann_gradient": True, "memory_efficient": True},
}
MODE_LABEL = {
    "plain": "PowerSeriesLogDet(n) plain backprop",
    "neumann": "PowerSeriesLogDet(n, neumann_gradient=True)",
    "memeff": "PowerSeriesLogDet(n, neumann_gradient=True, memory_efficient=True)",
}


def build_flow(n_terms: int, mode: str, hidden: int = 32, n_blocks: int = 4) -> iresnet.Flow:
    blocks: list[iresnet.Transform] = [iresnet.Squeeze(2)]
    for _ in range(n_blocks):
        g = conv_branch(4, (hidden, hidden), coeff=0.97)
        est = iresnet.PowerSeriesLogDet(n_terms=n_terms, **MODES[mode])
        blocks.append(iresnet.InvertibleResidualBlock(g, logdet=est))
    return iresnet.Flow(blocks, event_shape=(1, 28, 28))


def worker(cfg: dict) -> dict:
    threads = set_threads(cfg["threads"])
    torch.manual_seed(cfg["seed"])
    flow = build_flow(cfg["n_terms"], cfg["mode"]).train()

    def step(x: torch.Tensor) -> float:
        flow.zero_grad(set_to_none=True)
        loss = -flow.log_prob(x).mean()
        loss.backward()
        return float(loss)

    step(torch.rand(2, 1, 28, 28))  # warm-up
    x = torch.rand(cfg["batch"], 1, 28, 28)
    out: dict = {}

    def measured() -> None:
        out["loss"] = step(x)

    mem = measure_peak_rss(measured)
    return {**cfg, **mem, **out, "torch_threads": threads}


def run(args) -> dict:
    terms = [2, 5] if args.quick else [2, 5, 10, 20]
    modes = ["plain", "memeff"] if args.quick else ["plain", "neumann", "memeff"]
    # The Neumann-only mode is a reference point: measured at the two ends of the range only.
    mode_terms = {"plain": terms, "memeff": terms, "neumann": [terms[0], terms[-1]]}
    reps = 1 if args.quick else 3
    raw = []
    for rep in range(reps):  # repetitions outermost: slow drifts hit every configuration alike
        for mode in modes:
            for n in mode_terms[mode]:
                cfg = {
                    "mode": mode,
                    "n_terms": n,
                    "batch": args.batch,
                    "seed": args.seed + rep,
                    "threads": args.threads,
                    "rep": rep,
                }
                t0 = time.perf_counter()
                try:
                    res = run_worker(__file__, cfg, fixed_malloc=True)
                except WorkerFailed as e:  # out of memory, killed: the others still count
                    raw.append({**cfg, "failed": e.reason})
                    print(f"rep {rep} {mode:8s} n={n:2d}: failed ({e.reason})", flush=True)
                    continue
                res["wall_seconds"] = time.perf_counter() - t0
                raw.append(res)
                print(
                    f"rep {rep} {mode:8s} n={n:2d}: +{res['peak_increase_mib']:.1f} MiB "
                    f"(step {res['step_seconds']:.2f}s)",
                    flush=True,
                )
    return {"terms": terms, "modes": modes, "reps": reps, "runs": raw}


def _cell(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"  # None: not measured, or every try failed


def _median(runs: list[dict], key: str) -> float | None:
    return median([r[key] for r in runs]) if runs else None


def _ratio(last: float | None, first: float | None) -> float | None:
    return known(last / first) if last is not None and first else None


def failure_notes(data: dict) -> list[str]:
    """A line for each configuration with a failed measurement: which, how many of its
    repetitions and why (its cells are "-" where none succeeded)."""
    notes = []
    for mode in data["modes"]:
        for n in data["terms"]:
            tried = [r for r in data["runs"] if r["mode"] == mode and r["n_terms"] == n]
            failed = [r for r in tried if "failed" in r]
            if not failed:
                continue
            reasons = "; ".join(dict.fromkeys(r["failed"] for r in failed))
            left = len(tried) - len(failed)
            if left:
                what = f"{len(failed)} of {len(tried)} measurements failed ({reasons}), so the "
                what += f"median is of the other {count(left, 'repetition')}"
            else:
                what = "the measurement" if len(tried) == 1 else f"all {len(tried)} measurements"
                what += f' failed ({reasons}), so its cells are "-"'
            notes.append(
                f"{MODE_LABEL[mode]}, n={n}: {what}; run the script again (a smaller --batch "
                "uses less memory)"
            )
    return notes


def tables(data: dict) -> tuple[str, dict]:
    terms, modes = data["terms"], data["modes"]
    med: dict = {}
    for mode in modes:
        for n in terms:
            runs = [
                r
                for r in data["runs"]
                if r["mode"] == mode and r["n_terms"] == n and "failed" not in r
            ]
            med[(mode, n)] = {
                "peak": _median(runs, "peak_increase_mib"),
                "peak_raw": [r["peak_increase_mib"] for r in runs],
                "ru": _median(runs, "ru_maxrss_increase_mib"),
                "step": _median(runs, "step_seconds"),
            }
    cols = ["estimator", *[f"n={n}" for n in terms], f"peak(n={terms[-1]}) / peak(n={terms[0]})"]
    rows = []
    summary = {}
    for mode in modes:
        ratio = _ratio(med[(mode, terms[-1])]["peak"], med[(mode, terms[0])]["peak"])
        summary[mode] = {
            "ratio_last_over_first": ratio,
            "peak_mib": {n: med[(mode, n)]["peak"] for n in terms},
            "peak_mib_raw": {n: med[(mode, n)]["peak_raw"] for n in terms},
            "step_seconds": {n: med[(mode, n)]["step"] for n in terms},
        }
        rows.append(
            [MODE_LABEL[mode], *[_cell(med[(mode, n)]["peak"]) for n in terms], _cell(ratio, 2)]
        )
    notes = failure_notes(data)
    body = (
        "Peak RSS increase during one training step, MiB (median of the repetitions; raw "
        "values in the JSON):\n\n" + markdown_table(cols, rows)
    )
    if notes:
        body += "\n\n" + "\n".join(f"- {note}" for note in notes)
    rows_t = [[MODE_LABEL[m], *[_cell(med[(m, n)]["step"], 2) for n in terms]] for m in modes]
    body += (
        "\n\nSeconds of that step (one measurement per process, median; informational):\n\n"
        + markdown_table(["estimator", *[f"n={n}" for n in terms]], rows_t)
    )
    rows_r = [[MODE_LABEL[m], *[_cell(med[(m, n)]["ru"]) for n in terms]] for m in modes]
    body += (
        "\n\nCross-check, `ru_maxrss` after - before (under-reports when the step stays "
        "below an earlier peak of the process), MiB:\n\n"
        + markdown_table(["estimator", *[f"n={n}" for n in terms]], rows_r)
    )
    if "memeff" in summary and "plain" in summary:
        me, pl = (
            summary["memeff"]["ratio_last_over_first"],
            summary["plain"]["ratio_last_over_first"],
        )
        target = (
            f"\n\n**Target** (memory-efficient flat, peak({terms[-1]})/peak({terms[0]}) <= 1.2, "
            "while plain backprop grows): "
        )
        if me is None or pl is None:
            summary["target_met"] = None
            body += target + "not known, a measurement failed (see above)."
        else:
            met = me <= 1.2 and pl > me
            summary["target_met"] = met
            body += (
                target + f"memory-efficient {me:.2f}, plain {pl:.2f} -> "
                f"{'met' if met else 'NOT met'}."
            )
    return body, summary


def main() -> None:
    ap = script_parser(__doc__)
    ap.add_argument("--batch", type=int, default=32)
    add_worker_flag(ap)
    args = ap.parse_args()
    if serve(args, worker):
        return
    set_threads(args.threads)
    env = environment()
    data = run(args)
    body, summary = tables(data)
    for mode in data["modes"]:
        print(
            f"{mode}: peak({data['terms'][-1]})/peak({data['terms'][0]}) = "
            f"{_cell(summary[mode]['ratio_last_over_first'], 2)}"
        )
    for note in failure_notes(data):
        print(note)
    settings = {
        "quick": args.quick,
        "batch": args.batch,
        "threads": args.threads,
        "seed": args.seed,
        "model": "Squeeze(2) + 4 x [SpectralConv2d 3x3(4->32), LipSwish, 1x1(32->32), "
        "LipSwish, 3x3(32->4)], coeff 0.97, float32, input 1x28x28",
    }
    sections = [
        ("What is measured", doc_body(__doc__)),
        ("Results", body),
    ]
    write_results(
        NAME,
        "Peak memory of one training step vs series terms",
        env,
        settings,
        sections,
        raw=data,
        summary=summary,
        out_dir=args.out_dir,
    )


if __name__ == "__main__":
    main()
