"""Is ``sample_quality.py``'s KID honest? Its bias and standard error over repeated samples.

KID (``sample_quality.kid``) should be 0 on average for two samples of one law, and its
reported standard error should match the spread of KID over independent repeats. This script
measures both on the judge's real features: the test images of the data set are split at
random, ``--replicates`` times, into two disjoint samples of ``n`` images (``--sizes``), the
first the reference; a fraction ``a`` (``--mixes``) of the second, at random rows, is replaced
by samples of the independent per-pixel categorical model (0: one law; 1: the floor of issue 13,
far from it). The mixture's KID is ``a^2`` times the floor's (MMD is linear in the law).
Each split is scored two ways:

- **all pairs + jackknife** (``sample_quality.kid``, the estimator in use): the unbiased MMD^2
  over every pair, with the delete-a-group jackknife SE over ``--subsets`` groups;
- **subset mean** (what ``sample_quality.py`` reported before 2026-12-02): the mean of the
  unbiased MMD^2 over ``--subsets`` disjoint slices, with the SE of that mean.

Reported per estimator: the mean of KID over the replicates ± its SE (0 for one law if
unbiased), the spread (standard deviation over the replicates: the true SE of one KID), the
median reported SE, their ratio (1 for an honest SE, above 1 conservative) and the fraction of
replicates whose KID lies over 2 reported SE from the mean (~0.05-0.08 for an honest one).
Figures are x 1000, as ``sample_quality.py`` prints them.

Run: ``.venv/bin/python benchmarks/kid_calibration.py`` (Fashion-MNIST, about 3 CPU-minutes;
``--quick``: the 8x8 digits, a few CPU seconds).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from iresnet.datasets import load_dataset
from sample_quality import EPOCHS, Judge, categorical_samples, kid, mmd2_unbiased

from bench.env import environment, run_script, script_parser, set_threads
from bench.report import markdown_table, pm, write_results

NAME = "kid-calibration"


def kid_subset_mean(features: Tensor, reference: Tensor, subsets: int) -> tuple[float, float]:
    """The earlier KID: mean and SE of :func:`mmd2_unbiased` over ``subsets`` disjoint,
    equal slices of both samples."""
    n = min(features.shape[0], reference.shape[0]) // subsets
    values = np.array(
        [
            mmd2_unbiased(features[i * n : (i + 1) * n], reference[i * n : (i + 1) * n])
            for i in range(subsets)
        ]
    )
    return float(values.mean()), float(values.std(ddof=1) / math.sqrt(subsets))


ESTIMATORS = {"all pairs + jackknife": kid, "subset mean": kid_subset_mean}


def calibrate(values: np.ndarray, ses: np.ndarray) -> dict[str, float]:
    """What the replicates say of one estimator: mean, its SE, spread, median SE, coverage."""
    spread = float(values.std(ddof=1))
    return {
        "mean": float(values.mean()),
        "mean_se": spread / math.sqrt(len(values)),
        "spread": spread,
        "median_se": float(np.median(ses)),
        "se_over_spread": float(np.median(ses) / spread),
        "beyond_2se": float(np.mean(np.abs(values - values.mean()) > 2 * ses)),
    }


def main() -> None:
    ap = script_parser(__doc__)
    ap.add_argument("--dataset", choices=["digits", "fashion-mnist"], default=None)
    ap.add_argument("--replicates", type=int, default=None, help="random splits (default 200)")
    ap.add_argument("--sizes", type=int, nargs="+", default=None, help="n per sample")
    ap.add_argument("--mixes", type=float, nargs="+", default=[0.0, 0.1, 1.0])
    ap.add_argument("--subsets", type=int, default=10, help="groups / slices (default 10)")
    ap.add_argument("--name", default=NAME, help="results name")
    args = ap.parse_args()
    dataset = args.dataset or ("digits" if args.quick else "fashion-mnist")
    replicates = (20 if args.quick else 200) if args.replicates is None else args.replicates
    sizes = ([60] if args.quick else [1000, 200]) if args.sizes is None else args.sizes
    if replicates < 2 or args.subsets < 2 or min(sizes) < 2 * args.subsets:
        ap.error("--replicates and --subsets must be >= 2, each of --sizes >= 2 x --subsets")
    if any(not 0 <= m <= 1 for m in args.mixes):
        ap.error(f"--mixes are fractions in [0, 1], got {args.mixes}")
    set_threads(args.threads)
    env = environment()
    data = load_dataset(dataset)
    levels = int(data.n_levels or 0)
    if 2 * max(sizes) > data.test_x.shape[0]:
        ap.error(f"--sizes: two samples of {max(sizes)} exceed {data.test_x.shape[0]} images")
    print(f"fitting the judge on {data.train_x.shape[0]} {dataset} images", flush=True)
    judge = Judge(data.train_x, data.train_y, levels, args.seed, 1 if args.quick else EPOCHS)
    test = judge.features(data.test_x)
    torch.manual_seed(args.seed)
    floor = judge.features(categorical_samples(data.train_x, levels, data.test_x.shape[0]))
    rows: list[list[Any]] = []
    raw: dict[str, Any] = {}
    for mix in args.mixes:
        for n in sizes:
            g = torch.Generator().manual_seed(args.seed)
            found: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in ESTIMATORS}
            for _ in range(replicates):
                split = torch.randperm(test.shape[0], generator=g)
                pick = torch.randperm(floor.shape[0], generator=g)
                sample = test[split[n : 2 * n]].clone()
                k = round(mix * n)
                sample[:k] = floor[pick[:k]]
                # in random places, as a model's draws come: the groups and slices are
                # consecutive rows, and a first slice of all floor samples would weigh it alone
                sample = sample[torch.randperm(n, generator=g)]
                for name, estimator in ESTIMATORS.items():
                    value, se = estimator(sample, test[split[:n]], args.subsets)
                    found[name][0].append(value)
                    found[name][1].append(se)
            for name, (values, ses) in found.items():
                c = calibrate(np.array(values), np.array(ses))
                raw[f"mix={mix:g} n={n} {name}"] = c
                rows.append(
                    [
                        f"{mix:g}",
                        n,
                        name,
                        pm(1000 * c["mean"], 1000 * c["mean_se"], 2),
                        f"{1000 * c['spread']:.1f}",
                        f"{1000 * c['median_se']:.1f}",
                        f"{c['se_over_spread']:.2f}",
                        f"{c['beyond_2se']:.3f}",
                    ]
                )
                print("  " + " | ".join(str(x) for x in rows[-1]), flush=True)
    table = markdown_table(
        [
            "categorical fraction",
            "n",
            "estimator",
            "mean KID x 1000 ± SE",
            "spread x 1000",
            "median reported SE x 1000",
            "SE / spread",
            "beyond 2 SE",
        ],
        rows,
    )
    write_results(
        args.name,
        f"KID on {dataset}: bias and standard error over {replicates} random splits",
        env,
        {
            "dataset": dataset,
            "replicates": replicates,
            "sizes": sizes,
            "mixes": args.mixes,
            "subsets": args.subsets,
            "judge_epochs": 1 if args.quick else EPOCHS,
        },
        [("KID over repeated samples", table)]
        + (
            [
                (
                    "Quick run",
                    "A smoke test: the judge trained for 1 epoch tells little apart, so these "
                    "figures say nothing of KID; run without --quick for them.",
                )
            ]
            if args.quick
            else []
        ),
        raw,
        out_dir=args.out_dir,
    )


if __name__ == "__main__":
    run_script(main)
