"""i-ResNet's Table 1 on 2 CPU cores: test error against the Lipschitz coefficient.

Trains the coefficient sweep ``vanilla, 0.9, 0.8, 0.7, 0.6, 0.5`` of the CPU classifier presets
on scikit-learn's digits and on Fashion-MNIST (the real IDX files, read from
``/usr/share/datasets/fashion-mnist`` unless ``--fashion-dir`` says otherwise) through the one
training loop (:func:`iresnet.app.sweep.run_sweep`), every model with the same budget: a fixed
number of optimiser steps (the same compute for every coefficient, so a busy machine slows the
run but does not change the result) and one torch thread. Writes
``benchmarks/results/sweep-digits.{md,json,png}`` and ``sweep-fashion-mnist.{md,json,png}``.

The issue's checks, reported as measured: the error of ``c = 0.9`` within 1.5 percentage points
of vanilla, and a feature reconstruction error ``<= 1e-4`` for every constrained model.

    .venv/bin/python benchmarks/sweep.py            # the full run (about 25 min on 2 idle cores)
    .venv/bin/python benchmarks/sweep.py --quick    # smoke run, tiny budget
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Any

from iresnet.app.sweep import DEFAULT_COEFFS, run_sweep, sweep_table

from bench import REPO_ROOT, RESULTS_DIR
from bench.env import environment, script_parser, set_threads
from bench.report import fmt, write_results

#: steps per model (the budget) and the preset of each data set
BUDGETS: dict[str, tuple[str, int]] = {
    "digits": ("digits-classifier", 600),
    "fashion-mnist": ("fashion-mnist-classifier", 600),
}


def checks(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's two checks on one sweep."""
    by = {r["coeff"]: r for r in rows}
    out: dict[str, Any] = {}
    if "vanilla" in by and 0.9 in by:
        gap = by[0.9]["test_error_pct"] - by["vanilla"]["test_error_pct"]
        out["c0.9_minus_vanilla_pp"] = gap
        out["c0.9_within_1.5pp_of_vanilla"] = abs(gap) <= 1.5 or gap < 0
    constrained = [r for r in rows if r["coeff"] != "vanilla"]
    errs = [r["feature_inverse_max_error"] for r in constrained]
    out["max_reconstruction_error_constrained"] = (
        None if any(e is None for e in errs) else max(errs, default=None)
    )
    ok = all(e is not None and e <= 1e-4 for e in errs)
    out["reconstruction_le_1e-4_for_all_constrained"] = ok
    out["all_constrained_certified"] = all(r["invertible"] for r in constrained)
    return out


def main() -> int:
    ap = script_parser(__doc__)
    ap.add_argument("--datasets", nargs="+", default=list(BUDGETS), choices=list(BUDGETS))
    ap.add_argument("--coeffs", nargs="+", default=[str(c) for c in DEFAULT_COEFFS])
    ap.add_argument("--steps", type=int, default=None, help="override every data set's budget")
    ap.add_argument("--fashion-dir", type=Path, default=None, help="Fashion-MNIST IDX folder")
    ap.add_argument(
        "--runs-dir",
        type=Path,
        default=REPO_ROOT / "runs" / "bench-sweep",
        help="where the run folders go (reused when their config matches)",
    )
    ap.add_argument("--fresh", action="store_true", help="delete earlier run folders first")
    ap.add_argument("--n-inverse", type=int, default=256, help="test images reconstructed")
    args = ap.parse_args()
    threads = set_threads(args.threads)
    env = environment()
    out_dir = args.out_dir or RESULTS_DIR
    for name in args.datasets:
        preset, steps = BUDGETS[name]
        steps = args.steps or (20 if args.quick else steps)
        runs = args.runs_dir / (f"{name}-quick" if args.quick else name)
        if args.fresh and runs.exists():
            shutil.rmtree(runs)
        data_dir = args.fashion_dir if name == "fashion-mnist" else None
        t0 = time.perf_counter()
        rows = run_sweep(
            preset,
            args.coeffs,
            runs,
            steps=steps,
            data_dir=data_dir,
            overrides=[f"train.seed={args.seed}"],
            n_inverse=args.n_inverse,
            command=env["command"],
        )
        wall = time.perf_counter() - t0
        summary = checks(rows)
        summary["wall_seconds_total"] = wall
        settings = {
            "preset": preset,
            "steps_per_model": steps,
            "coeffs": args.coeffs,
            "threads": threads,
            "seed": args.seed,
            "n_inverse": args.n_inverse,
            "runs": str(runs),
        }
        gap = summary.get("c0.9_minus_vanilla_pp", float("nan"))
        lines = [
            f"- c = 0.9 minus vanilla: {gap:+.2f}"
            f" percentage points (within 1.5: "
            f"{fmt(summary.get('c0.9_within_1.5pp_of_vanilla'))})",
            f"- largest reconstruction error over the constrained models: "
            f"{fmt(summary['max_reconstruction_error_constrained'])} (<= 1e-4: "
            f"{fmt(summary['reconstruction_le_1e-4_for_all_constrained'])})",
            f"- every constrained model certified invertible: "
            f"{fmt(summary['all_constrained_certified'])}",
            f"- wall time of this sweep (training + evaluation): {wall / 60:.1f} min",
        ]
        sections = [
            ("Table 1", sweep_table(rows)),
            ("Checks", "\n".join(lines)),
            (
                "Notes",
                "Budget: the same number of optimiser steps for every model "
                "(`train.steps`), batch and schedule of the preset; test error over the "
                "whole test set; reconstruction error `max |x - F^-1(F(x))|` over "
                "`n_inverse` test images in [0, 1] pixel units after removing the "
                "injective padding; "
                "`train s` is wall-clock training time, inflated when the machine is busy "
                "(see the load average). Plot: the PNG of the same name.",
            ),
        ]
        raw = {"rows": rows}
        result = f"sweep-{name}{'-quick' if args.quick else ''}"
        write_results(
            result,
            f"Coefficient sweep (i-ResNet Table 1) on {name}",
            env,
            settings,
            sections,
            raw,
            summary,
            out_dir,
        )
        shutil.copyfile(runs / "sweep.png", out_dir / f"{result}.png")
        print(sweep_table(rows))
        print({k: v for k, v in summary.items()}, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
