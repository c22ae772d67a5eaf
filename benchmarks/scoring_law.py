"""How trained image runs score under each log-det law, and two runs paired on the same images.

For each run folder given (``--runs``; trained image density runs, e.g. the 60-minute
Fashion-MNIST ones of ``images.py``): the certified bound ``L`` of its blocks; the test bits/dim
of the first ``--n-test`` test images under the scoring roulette ``iresnet evaluate`` uses (its
law chosen from ``L``: finite variance) over ``--draws`` independent draws, against the old
fixed Geometric(1/2) with 20 sure terms (infinite worst-case variance once ``L > 0.707``); and
the per-batch estimates of ``--batches`` training batches of 64 under the training law the run
used and the scoring law: mean, median and 10-90% range (a heavy-tailed law's typical draw sits
away from its mean, and the optimiser follows typical draws). With two runs, their difference
paired on the same test images and the same dequantisation noise, with its standard error over
images (one training seed each: the seeds' spread is not in it).

Run: ``.venv/bin/python benchmarks/scoring_law.py --runs RUN [RUN2]`` (CPU minutes per run).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
from torch import Tensor

from iresnet.app.runs import load_run
from iresnet.app.tasks.base import evaluating, mean_se, scoring_estimator, scoring_lipschitz
from iresnet.transforms import swap_logdets
from iresnet.words import count

from bench.env import environment, positive_int, script_parser, set_threads
from bench.report import markdown_table, pm, write_results

NAME = "scoring-law"
BATCH = 64


def _test_values(task, model, estimator, n_test: int, seed: int) -> Tensor:
    torch.manual_seed(seed)  # the dequantisation noise and the estimator's draws
    with evaluating(model), swap_logdets(model, estimator):
        return task.value(task.log_probs(model, limit=n_test)).double()


def _batch_estimates(task, model, estimator, x: Tensor, seed: int) -> list[float]:
    torch.manual_seed(seed)
    with evaluating(model), swap_logdets(model, estimator):
        return [
            float(task.value(task.log_prob(model, x[i : i + BATCH])).mean())
            for i in range(0, x.shape[0], BATCH)
        ]


def _spread(values: list[float]) -> dict[str, float]:
    q = statistics.quantiles(values, n=10)
    return {
        "mean": statistics.fmean(values),
        "median": statistics.median(values),
        "q10": q[0],
        "q90": q[-1],
    }


def main() -> None:
    ap = script_parser(__doc__)
    ap.add_argument("--runs", nargs="+", type=Path, required=True, help="one or two run folders")
    ap.add_argument("--n-test", type=positive_int, default=1000, help="test images scored")
    ap.add_argument(
        "--draws", type=positive_int, default=3, help="independent draws of each test score"
    )
    ap.add_argument("--batches", type=positive_int, default=40, help="training batches of 64")
    ap.add_argument("--name", default=NAME, help="results name")
    args = ap.parse_args()
    if len(args.runs) > 2:
        ap.error("--runs takes one or two run folders")
    if args.n_test < 2:
        ap.error(f"--n-test must be >= 2 (a standard error needs two images), got {args.n_test}")
    if args.batches < 2:
        ap.error(f"--batches must be >= 2 (a spread needs two estimates), got {args.batches}")
    set_threads(args.threads)
    env = environment()
    rows, batch_rows, raw, firsts = [], [], {}, []
    for run_dir in args.runs:
        trained = load_run(run_dir)
        task, model = trained.task, trained.model
        bound = scoring_lipschitz(model, certified=True)
        training = next(
            m.logdet_estimator for m in model.modules() if hasattr(m, "logdet_estimator")
        )
        laws = {
            "scoring (finite variance)": scoring_estimator(task.dim, lipschitz=bound),
            "Geometric(1/2), 20 sure": scoring_estimator(task.dim),
        }
        entry: dict = {"bound": bound, "test": {}, "batches": {}}
        for label, (name, est) in laws.items():
            draws = []
            for d in range(args.draws):
                t = time.process_time()
                values = _test_values(task, model, est, args.n_test, seed=d)
                draws.append((*mean_se(values), time.process_time() - t))
                if d == 0 and label.startswith("scoring"):
                    firsts.append(values)
            entry["test"][label] = {"estimator": name, "draws": draws}
            means = [m for m, _, _ in draws]
            rows.append(
                [
                    str(run_dir),
                    name,
                    f"{min(means):.4f} - {max(means):.4f}",
                    f"{draws[0][1]:.4f}",
                    f"{statistics.fmean(c for _, _, c in draws):.1f}",
                ]
            )
        x = task.data.train_x[: BATCH * args.batches]
        for label, est in (
            ("training", training),
            ("scoring", laws["scoring (finite variance)"][1]),
        ):
            s = _spread(_batch_estimates(task, model, est, x, seed=100))
            entry["batches"][label] = {"estimator": repr(est), **s}
            batch_rows.append(
                [
                    str(run_dir),
                    label,
                    f"{s['mean']:.3f}",
                    f"{s['median']:.3f}",
                    f"{s['q10']:.3f} - {s['q90']:.3f}",
                ]
            )
        raw[str(run_dir)] = entry
    sections = [
        (
            f"Test bits/dim, first {args.n_test} test images, {count(args.draws, 'draw')} each",
            markdown_table(
                ["run", "estimator", "mean over draws (min - max)", "SE over images", "CPU s"],
                rows,
            ),
        ),
        (
            f"Per-batch estimates on {args.batches} training batches of {BATCH}",
            markdown_table(["run", "law", "mean", "median", "10-90%"], batch_rows),
        ),
    ]
    if len(firsts) == 2:
        diff = mean_se(firsts[1] - firsts[0])
        raw["paired"] = {"second_minus_first": diff}
        sections.append(
            (
                "Paired on the same test images and dequantisation noise",
                f"{args.runs[1]} - {args.runs[0]} = {pm(*diff, 4)} bits/dim (SE over images; "
                "one training seed each)",
            )
        )
    write_results(
        args.name,
        "Scoring trained image runs under each log-det law",
        env,
        vars(args) | {"runs": [str(r) for r in args.runs]},
        sections,
        raw,
        out_dir=args.out_dir,
    )


if __name__ == "__main__":
    main()
