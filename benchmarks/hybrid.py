"""Hybrid density + classification model beside a pure classifier and a pure density model.

Trains three models on scikit-learn's 8x8 digits through the one training loop, each with the
same CPU-time budget (``--budget`` CPU seconds of the training process, one torch thread):

- ``classifier``: the ``digits-classifier`` preset (i-ResNet classifier, c = 0.9, padding);
- ``hybrid``: the ``digits-hybrid`` preset (one bijective i-ResNet, ``z`` modelled by a Gaussian
  and classified by a linear head; loss ``bits/dim + cross-entropy``);
- ``density``: the ``digits`` preset (the Residual Flow density model of the image benchmark).

Every model's step count is fitted to the budget from a short timing run
(:func:`bench.ours.fit_steps`), so its cosine schedule ends with the budget;
``train.max_cpu_seconds`` caps it as well. Each is then evaluated exactly as
``iresnet evaluate --json`` does (``task.full_evaluation``): test error over the whole test
set, and test bits/dim with its standard error, whose log-determinants are exact at ``D = 64``
(the hybrid trains with Russian roulette estimates; the evaluation replaces them with exact
ones). Writes ``benchmarks/results/hybrid-digits.{md,json}``.

    .venv/bin/python benchmarks/hybrid.py              # the full run (about 3 x budget)
    .venv/bin/python benchmarks/hybrid.py --quick      # smoke run, tiny budget
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

from iresnet.app.presets import get_preset

from bench import REPO_ROOT, RESULTS_DIR
from bench.env import environment, positive_float, script_parser, set_threads
from bench.metrics import logged_max
from bench.ours import train_under_budget
from bench.report import markdown_table, pm, write_results

#: model label -> preset (all on digits)
MODELS: dict[str, str] = {
    "classifier": "digits-classifier",
    "hybrid": "digits-hybrid",
    "density": "digits",
}


def train_and_evaluate(
    label: str, preset: str, budget: float, runs: Path, seed: int, n_inverse: int
) -> dict[str, Any]:
    """Fit the steps to ``budget`` CPU seconds, train ``preset`` into ``runs/label``, evaluate."""
    run_dir = runs / label
    if run_dir.exists():  # the fitted step count differs between calls: always train afresh
        shutil.rmtree(run_dir)
    base = get_preset(preset).override(
        [f"train.seed={seed}", "train.threads=1", "train.max_seconds=0"]
    )
    run = train_under_budget(base, budget, run_dir, runs / f"{label}-timing")
    trained = run.trained
    ev = trained.task.full_evaluation(trained.model, n_inverse=n_inverse)
    records = run.records
    return {
        "model": label,
        "preset": preset,
        "kind": run.cfg.model.kind,
        "steps_planned": run.planned_steps,
        "steps": int(logged_max(records, "step")) if records else 0,
        "timing_cpu_seconds_per_step": run.timing_cpu_seconds_per_step,
        "train_cpu_seconds": logged_max(records, "cpu_seconds"),
        "train_wall_seconds": run.wall_seconds,
        "n_test": ev.get("n_test"),
        "test_error": ev.get("test_error"),
        "test_bpd": ev.get("test_bpd"),
        "test_bpd_se": ev.get("test_bpd_se"),
        "bpd_estimator": ev.get("estimator"),
        "invertible": ev.get("invertible"),
        "max_lipschitz": ev.get("max_lipschitz"),
        "run_dir": str(run_dir),
        "evaluation": {k: v for k, v in ev.items() if k != "certificate"},
    }


def table(rows: list[dict[str, Any]]) -> str:
    """Error, bits/dim and cost of each model as Markdown."""
    out = []
    for r in rows:
        err = "-" if r["test_error"] is None else f"{100 * r['test_error']:.2f}"
        bpd = (
            "-"
            if r["test_bpd"] is None
            else f"{pm(r['test_bpd'], r['test_bpd_se'])} ({r['bpd_estimator']})"
        )
        out.append(
            [
                r["model"],
                f"`{r['preset']}`",
                err,
                bpd,
                "yes" if r["invertible"] else "no",
                r["steps"],
                f"{r['train_cpu_seconds']:.0f}",
                f"{r['train_wall_seconds']:.0f}",
            ]
        )
    return markdown_table(
        [
            "model",
            "preset",
            "test error (%)",
            "test bits/dim ± SE (log-dets)",
            "certified invertible",
            "steps",
            "train CPU s",
            "train wall s",
        ],
        out,
    )


def main() -> int:
    ap = script_parser(__doc__)
    ap.add_argument(
        "--budget",
        type=positive_float,
        default=90.0,
        help="CPU seconds of training per model (default 90; --quick: 10)",
    )
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument(
        "--runs-dir",
        type=Path,
        default=REPO_ROOT / "runs" / "bench-hybrid",
        help="where the run folders go (replaced on every call)",
    )
    ap.add_argument("--n-inverse", type=int, default=256, help="test images reconstructed")
    args = ap.parse_args()
    threads = set_threads(args.threads)
    env = environment()
    budget = 10.0 if args.quick else args.budget
    runs = args.runs_dir / ("digits-quick" if args.quick else "digits")
    rows = []
    for label in args.models:
        rows.append(
            train_and_evaluate(label, MODELS[label], budget, runs, args.seed, args.n_inverse)
        )
        print(
            rows[-1]["model"],
            {k: rows[-1][k] for k in ("test_error", "test_bpd", "steps", "train_cpu_seconds")},
            flush=True,
        )
    by = {r["model"]: r for r in rows}
    summary: dict[str, Any] = {
        r["model"]: {
            k: r[k] for k in ("test_error", "test_bpd", "test_bpd_se", "train_cpu_seconds")
        }
        for r in rows
    }
    lines = []
    if "hybrid" in by and "classifier" in by:
        gap = 100 * (by["hybrid"]["test_error"] - by["classifier"]["test_error"])
        summary["hybrid_minus_classifier_error_pp"] = gap
        lines.append(f"- hybrid minus pure classifier, test error: {gap:+.2f} percentage points")
    if "hybrid" in by and "density" in by:
        gap = by["hybrid"]["test_bpd"] - by["density"]["test_bpd"]
        se = (by["hybrid"]["test_bpd_se"] ** 2 + by["density"]["test_bpd_se"] ** 2) ** 0.5
        summary["hybrid_minus_density_bpd"] = gap
        lines.append(f"- hybrid minus pure density model, test bits/dim: {gap:+.3f} ± {se:.3f}")
    settings = {
        "budget_cpu_seconds_per_model": budget,
        "models": MODELS,
        "threads": threads,
        "seed": args.seed,
        "runs": str(runs),
    }
    notes = (
        f"Budget: every model trains for the same CPU time (`train.max_cpu_seconds`, one "
        "torch thread), its step count fitted to the budget from a short timing run so its "
        "cosine schedule completes. Test error over the whole digits test set "
        f"({rows[0]['n_test']} images); "
        "bits/dim of the dequantised, logit-transformed images (the logit log-det "
        "included, so the two density numbers are comparable), averaged over the test set "
        "with one dequantisation draw per image; SE: the standard error of that mean. "
        "Both density numbers use exact log-determinants (D = 64). The pure classifier "
        "pads its input, so it is injective but models no density."
    )
    sections = [("Results", table(rows)), ("Comparison", "\n".join(lines) or "-"), ("Notes", notes)]
    name = "hybrid-digits-quick" if args.quick else "hybrid-digits"
    write_results(
        name,
        "Hybrid model beside a pure classifier and a pure density model (digits)",
        env,
        settings,
        sections,
        {"rows": rows},
        summary,
        args.out_dir or RESULTS_DIR,
    )
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
