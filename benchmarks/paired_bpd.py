"""Two trained image models' test bits/dim, paired on the same test images.

``images.py`` reports each model's test bits/dim with its standard error over test images and
compares two models unpaired, which is conservative: an image that is hard for one model is
hard for the other, so most of the spread over images cancels in their difference. This
script scores both models (``--runs A=PATH B=PATH``: an ``iresnet`` image run folder, the
``ours`` folder ``images.py --work-dir`` writes, or a peer's folder there: normflows Glow or
zuko RealNVP) on the first ``--n-test`` test images and reports ``B - A`` per image: its mean
± its standard error over images, beside the unpaired one. Ours is scored as ``iresnet
evaluate`` does (the roulette its certified bound allows: an unbiased estimate per image, whose
noise is in the SE); a peer exactly. Each model draws its own dequantisation noise, seeded as
``images.py --seed S`` seeds its evaluation (``S + 1``), so that each model's figure repeats the
one ``images.py`` reported for it (on the same ``--n-test``); the pairing is by image. One
training seed per model: the spread over seeds is not in the SE.

Run: ``.venv/bin/python benchmarks/paired_bpd.py --runs "normflows Glow=W/fashion-mnist/glow"
"Residual Flow (ours)=W/fashion-mnist/ours" --n-test 1000`` (W: the ``--work-dir`` of an
``images.py`` run; our 60-minute Fashion-MNIST model takes about 10 CPU-minutes per 1,000).
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from iresnet.words import count
from sample_quality import load_models, parse_runs, shared_test_images

from bench.env import environment, run_script, script_parser, set_threads
from bench.report import markdown_table, pm, write_results
from bench.stats import mean_se

NAME = "paired-bpd"
QUICK_N_TEST = 100  # --quick without --n-test


def _in_se(diff: float, se: float) -> str:
    """The difference in standard errors, or what a zero SE means (one model given twice)."""
    if se > 0:
        return f"{diff / se:+.1f} SE"
    return "the same value on every image" if diff == 0 else "the same shift on every image"


def main() -> None:
    ap = script_parser(__doc__)
    ap.add_argument("--runs", nargs=2, required=True, metavar="LABEL=PATH", help="A, then B")
    ap.add_argument(
        "--n-test",
        type=int,
        default=None,
        help=f"first N test images (default all; {QUICK_N_TEST} with --quick)",
    )
    ap.add_argument("--name", default=NAME, help="results name")
    args = ap.parse_args()
    if args.quick and args.n_test is None:
        args.n_test = QUICK_N_TEST
    if args.n_test is not None and args.n_test < 2:
        ap.error(f"--n-test must be >= 2 (a standard error needs two images), got {args.n_test}")
    set_threads(args.threads)
    env = environment()
    runs = parse_runs(args.runs)
    models, dataset = load_models(args.runs, "nothing to pair")
    xa = shared_test_images(
        models, runs, args.n_test, "a pairing needs the same images; give both runs one data set"
    )
    a, b = models
    values: dict[str, torch.Tensor] = {}
    rows: list[list[Any]] = []
    raw: dict[str, Any] = {}
    for label, model in models.items():
        start = time.process_time()
        # images.py scores with its --seed + 1: the same noise, so each figure repeats its own
        values[label] = model.bits_per_dim(xa, args.seed + 1)
        cpu = time.process_time() - start
        finite = torch.isfinite(values[label])
        mean, se = mean_se(values[label][finite])
        raw[label] = {"test_bpd": mean, "test_bpd_se": se, "non_finite": int((~finite).sum())}
        raw[label] |= {"cpu_seconds": cpu, "kind": model.kind, "path": str(runs[label])}
        rows.append([label, model.kind, pm(mean, se, 4), int((~finite).sum()), f"{cpu:.1f}"])
        print(f"  {label}: {pm(mean, se, 4)} bits/dim ({cpu:.0f} CPU s)", flush=True)
    va, vb = values[a], values[b]
    both = torch.isfinite(va) & torch.isfinite(vb)
    if int(both.sum()) < 2:
        raise SystemExit(
            f"only {count(int(both.sum()), 'test image')} scored finitely under both models: "
            "nothing to pair (see the non-finite counts above)"
        )
    diff, diff_se = mean_se(vb[both] - va[both])
    unpaired = math.hypot(raw[a]["test_bpd_se"], raw[b]["test_bpd_se"])
    corr = float(torch.corrcoef(torch.stack([va[both], vb[both]]))[0, 1])
    raw["paired"] = {
        "b_minus_a": diff,
        "se": diff_se,
        "unpaired_se": unpaired,
        "correlation": corr,
        "n": int(both.sum()),
    }
    print(f"  {b} - {a}: {pm(diff, diff_se, 4)} (unpaired SE {unpaired:.4f})", flush=True)
    said = (
        f"**{b} - {a} = {pm(diff, diff_se, 4)} bits/dim** over the {int(both.sum())} test images "
        f"both scored finitely ({_in_se(diff, diff_se)}); unpaired SE {unpaired:.4f}; "
        f"correlation of the two models' per-image bits/dim {corr:.3f}. One training seed each."
    )
    write_results(
        args.name,
        f"{b} against {a} on {dataset}, paired on test images",
        env,
        {"runs": {k: str(v) for k, v in runs.items()}, "n_test": args.n_test, "seed": args.seed},
        [
            (
                "Test bits/dim",
                markdown_table(
                    ["model", "kind", "bits/dim ± SE", "non-finite", "CPU s to score"], rows
                ),
            ),
            ("Paired difference", said),
        ],
        raw,
        out_dir=args.out_dir,
    )


if __name__ == "__main__":
    run_script(main)
